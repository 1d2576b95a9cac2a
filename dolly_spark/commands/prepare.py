"""``dolly-spark prepare``: raw JSON lines -> bronze -> silver -> dedup -> gold (+ quarantine,
duplicates, metrics). ``--until STAGE`` stops early."""

from __future__ import annotations

import dataclasses
import logging
import uuid
from pathlib import Path

from dolly_spark.commands.common import check_tokenizer, cli_errors, parse_job, spark_session
from dolly_spark.ops.config import ConfigError
from dolly_spark.ops.paths import local_path_of
from dolly_spark.prep import prepare as preparation
from dolly_spark.prep.ingest import InputUnavailableError, UnsupportedInputError, check_input
from dolly_spark.prep.prepare import PrepareConfig, PrepareResult, root_lock

CONFIG = PrepareConfig


def preflight(cfg: PrepareConfig) -> None:
    """Everything that can be resolved before a write, checked before the session, any table or
    the MLflow store (a failure must not leave an ``mlflow.db``): every source exists, is readable
    and in a supported compression; the output root is not inside an input folder; the tokenizer
    loads and every benchmark set is found (when the run reaches gold)."""
    from dolly_spark.prep.decontam import locate
    from dolly_spark.prep.sources import SourceError, check_names

    sources = cfg.source_list()
    try:
        check_names(sources)
        for i, src in enumerate(sources):
            check_source(src, named_input=cfg.input if i == 0 else None)
            check_root_outside(cfg.output_root, src.uri)
        for bench in cfg.decontam.decontaminate if cfg.until == "gold" else ():
            locate(bench)  # the engine checks the rest (readable, a string column) before bronze
    except (OSError, UnsupportedInputError, InputUnavailableError, SourceError) as err:
        raise ConfigError(str(err)) from err
    if cfg.until == "gold":
        check_tokenizer(cfg.gold.tokenizer)


def check_source(src, named_input: str | None = None) -> None:
    """A source is found and, for dolly-15k's line ingest, readable (no engine needed)."""
    from dolly_spark.prep.sources import resolve

    if named_input and src.is_dolly():
        check_input(named_input)  # --input's own messages: missing, unreadable, compression
        return
    fmt, location, files = resolve(src)  # files, Delta logs, names
    if src.is_dolly() and fmt == "hub":
        check_input(src.uri)
    elif src.is_dolly() and fmt == "jsonl":  # as the line ingest reads it: the path, else each file
        for target in [location] if Path(location).exists() else files:
            check_input(target)


def check_root_outside(output_root: str | None, uri: str) -> None:
    """A root inside (or equal to) an input folder would be read as input: its own tables and
    MLflow store, written before the ingest lists the folder."""
    folder = _input_folder(uri)
    root = Path(output_root).resolve() if output_root else None
    if folder is not None and root is not None and (root == folder or folder in root.parents):
        raise ConfigError(
            f"--output-root {output_root} is inside the input folder {uri}: the run would read its own "
            "output as input; choose an output root outside it"
        )


def _input_folder(uri: str) -> Path | None:
    """The local folder a source reads (a glob's fixed leading folders), or None."""
    local = local_path_of(uri)
    if local is None:
        return None
    parts = local.parts
    fixed = next((i for i, part in enumerate(parts) if any(c in part for c in "*?[")), len(parts))
    folder = Path(*parts[:fixed]) if fixed else None
    return folder.resolve() if folder is not None and folder.is_dir() else None


def run(cfg: PrepareConfig, spark) -> PrepareResult:
    import mlflow

    from dolly_spark.tracking.lineage import license_tags
    from dolly_spark.tracking.metrics import log_metrics_table
    from dolly_spark.tracking.runs import job_run, reap_dead_runs

    run_id = uuid.uuid4().hex
    # The root lock first: a concurrent loser fails before it opens a run or touches a table.
    with root_lock(cfg, spark, run_id), job_run("prepare", cfg):
        reap_dead_runs()
        result = preparation.run(cfg, spark, run_id)
        log_metrics_table(spark, cfg.table_names(), run_id_filter=result.run_id)
        mlflow.set_tags({f"dolly.{k}_version": str(v) for k, v in result.versions.items()})
        # Lineage of Delta sources: the version each one was read at.
        mlflow.set_tags(
            {f"dolly.source.{k}_version": str(v) for k, v in result.details.get("source_versions", {}).items()}
        )
        mlflow.log_metrics(pii_metrics(result.details.get("pii") or {}))
        mlflow.set_tags(license_tags(result.details.get("licenses") or {}))
        mlflow.log_dict(dataclasses.asdict(result), "prepare_result.json")
    return result


def pii_metrics(pii: dict) -> dict[str, float]:
    """``pii.kind.EMAIL``, ``pii.field.response``, ``pii.action.redact``, ``pii.records``."""
    out = {
        f"pii.{what}.{k}": float(n)
        for what in ("kind", "field", "action")
        for k, n in pii.get(f"by_{what}", {}).items()
    }
    return (
        {**out, "pii.findings": float(pii.get("findings", 0)), "pii.records": float(pii.get("records", 0))}
        if pii
        else {}
    )


def format_summary(result: PrepareResult) -> str:
    lines = [f"run {result.run_id}", f"{'stage':<10}{'input':>8}{'output':>8}{'quarant.':>10}{'removed':>9}"]
    for c in result.counts:
        lines.append(f"{c.stage:<10}{c.input_rows:>8}{c.output_rows:>8}{c.quarantined_rows:>10}{c.removed_rows:>9}")
        for reason, n in sorted(c.details.get("quarantined_by_reason", {}).items()):
            lines.append(f"{'':<12}{reason:<28}{n:>6}")
    by_source = result.details.get("by_source") or {}
    if by_source:
        keys = list(next(iter(by_source.values())))
        lines.append(f"{'source':<24}" + "".join(f"{k:>12}" for k in keys))
        for src, t in by_source.items():
            lines.append(f"{src or '(none)':<24}" + "".join(f"{t[k]:>12}" for k in keys))
    pii = result.details.get("pii")
    if pii:
        kinds = ", ".join(f"{k} {n}" for k, n in sorted(pii["by_kind"].items())) or "none"
        lines.append(f"PII/secrets: {pii['findings']} findings in {pii['records']} records ({kinds})")
    decontamination = result.details.get("decontamination")
    if decontamination:
        lines.append(decontamination_line(decontamination))
    lines.append("versions: " + ", ".join(f"{k}@{v}" for k, v in result.versions.items()))
    if result.details.get("licenses"):
        found = ", ".join(f"{k}={v}" for k, v in result.details["licenses"].items())
        lines.append(f"licences: {found} -> commercial_use={result.details['commercial_use']}")
    return "\n".join(lines)


def decontamination_line(report: dict) -> str:
    """One line: per benchmark set its rows, rows overlapping train and train records removed; our
    own eval records sharing an n-gram with train."""
    n = report["ngram"]
    sets = "; ".join(
        f"{name}: rows {c['rows']}, overlapping train {c['rows_overlapping_train']}, train removed "
        f"{c['train_removed']}, eval overlapping (kept) {c['eval_records_overlapping']}"
        for name, c in report["benchmarks"].items()
    )
    own = report.get("eval_train_overlap") or {}
    split = (
        f"; eval/train: {own['eval_records_overlapping']} of {own['eval_records']} eval records "
        f"({100 * own['fraction']:.1f}%) share a {n}-gram with train"
        if own
        else ""
    )
    return f"decontamination ({n}-grams): {sets}{split}"


@cli_errors("prepare")
def main(argv: list[str] | None = None) -> int:
    cfg = parse_job(PrepareConfig, argv, "prepare", __doc__, level=logging.WARNING)  # progress goes to stdout
    preflight(cfg)
    print(format_summary(run(cfg, spark_session())))
    return 0
