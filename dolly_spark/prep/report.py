"""``dolly-spark report``: data-quality plots and a Markdown summary of the prepared tables.

Writes ``category_counts.png`` (records per category in bronze, silver, candidates and gold:
before and after cleaning and dedup), ``token_lengths.png`` (gold seq_len histogram per
category) and ``summary.md``. Tables not written yet are left out, not faked. The files are
meant to be logged as MLflow artifacts.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from pyspark.sql import functions as F

from dolly_spark.ops import manifest, tables
from dolly_spark.ops.config import TrackedLocation

log = logging.getLogger(__name__)

STAGE_TABLES = ("bronze", "silver", "candidates", "gold")
MISSING_CATEGORY = "(missing)"


@dataclass
class ReportConfig(TrackedLocation):
    out_dir: str | None = field(
        default=None, metadata={"help": "where to write the report (default <output_root>/reports)"}
    )
    max_record_tokens: int = field(
        default=2048, metadata={"help": "prepare's too_long limit, drawn as a line on the length histograms"}
    )
    create_views: bool = field(default=True, metadata={"help": "also (re)create the SQL views"})

    def report_dir(self) -> Path:
        if self.out_dir:
            return Path(self.out_dir)
        if self.output_root:
            return Path(self.output_root) / "reports"
        raise ValueError("give --out-dir with --catalog/--schema (there is no local root to default to)")


def category_counts(spark, names: tables.TableNames) -> dict[str, dict[str, int]]:
    """{stage: {category: records}} for each stage table that exists.

    Bronze categories are compared lowercased and trimmed, as cleaning does, so the bars line up.
    """
    out: dict[str, dict[str, int]] = {}
    for stage in STAGE_TABLES:
        if not manifest.available(spark, names, stage):
            continue
        cat = F.coalesce(F.lower(F.trim(F.col("category"))), F.lit(MISSING_CATEGORY)).alias("category")
        rows = manifest.read_committed(spark, names, stage).groupBy(cat).count().collect()
        out[stage] = {r["category"]: int(r["count"]) for r in rows}
    return out


def plot_category_counts(counts: dict[str, dict[str, int]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    stages = list(counts)
    cats = sorted(
        {c for by_cat in counts.values() for c in by_cat}, key=lambda c: -max(counts[s].get(c, 0) for s in stages)
    )
    x = np.arange(len(cats))
    width = 0.8 / max(len(stages), 1)
    fig, ax = plt.subplots(figsize=(11, 5))
    for i, stage in enumerate(stages):
        ax.bar(
            x + i * width,
            [counts[stage].get(c, 0) for c in cats],
            width,
            label=f"{stage} ({sum(counts[stage].values())})",
        )
    ax.set_xticks(x + width * (len(stages) - 1) / 2, cats, rotation=30, ha="right")
    ax.set_ylabel("records")
    ax.set_title("Records per category: before and after cleaning and dedup")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_token_lengths(lengths_by_cat: dict[str, list[int]], max_record_tokens: int, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cats = sorted(lengths_by_cat)
    ncols = 4
    nrows = max(1, -(-len(cats) // ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(4 * ncols, 3 * nrows), squeeze=False)
    bins = list(range(0, max_record_tokens + 65, 64))
    for ax, cat in zip(axes.flat, cats):
        values = lengths_by_cat[cat]
        ax.hist(values, bins=bins, color="tab:blue")
        ax.axvline(max_record_tokens, color="tab:red", linestyle="--", linewidth=1)
        ax.set_yscale("log")
        ax.set_title(f"{cat} (n={len(values)})", fontsize=10)
        ax.set_xlabel("tokens")
    for ax in list(axes.flat)[len(cats) :]:
        ax.axis("off")
    fig.suptitle("Gold token lengths per category (dashed: max_record_tokens)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _md_table(header: list[str], rows: list[list]) -> list[str]:
    def fmt(v):
        return f"{v:.1f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(v) for v in r) + " |" for r in rows]
    return lines


def source_counts(spark, names: tables.TableNames) -> dict[str, dict[str, int]]:
    """{source: {table: records}} over bronze, quarantine, duplicates and gold (tables that have it)."""
    out: dict[str, dict[str, int]] = {}
    present = [t for t in ("bronze", "quarantine", "duplicates", "gold") if tables.table_exists(spark, names.ref(t))]
    for t in present:
        df = tables.read_table(spark, names.ref(t))
        if "source" not in df.columns:
            return {}
        for r in df.groupBy("source").count().collect():
            out.setdefault(r["source"] or "(none)", {u: 0 for u in present})[t] = int(r["count"])
    return dict(sorted(out.items()))


def _pii_section(spark, names: tables.TableNames) -> list[str]:
    """Findings of the PII and secrets scan by kind, field and action (never a value)."""
    if not manifest.available(spark, names, "pii_findings"):
        return []
    rows = (
        manifest.read_committed(spark, names, "pii_findings")
        .groupBy("kind", "field", "action")
        .agg(F.count("*").alias("findings"), F.countDistinct("record_id").alias("records"))
        .orderBy("kind", "field", "action")
        .collect()
    )
    head = ["", "## PII and secrets found in silver text", ""]
    if not rows:
        return head + ["(none)"]
    table = [[r["kind"], r["field"], r["action"], r["findings"], r["records"]] for r in rows]
    return head + _md_table(["kind", "field", "action", "findings", "records"], table)


def summary_markdown(spark, names: tables.TableNames, counts: dict[str, dict[str, int]], views: list[str]) -> str:
    lines = ["# Dolly data-quality report", ""]
    m = manifest.latest(spark, names)
    if m is not None:
        lines += [f"Tables of prepare run {m.run_id} (committed {m.at}, until {m.until}).", ""]
    note = manifest.status_line(spark, names)
    if note:
        lines += [f"**Warning:** {note}.", ""]
    lines += ["## Records per stage", ""]
    lines += _md_table(["stage", "records"], [[s, sum(c.values())] for s, c in counts.items()])
    by_source = source_counts(spark, names)
    if by_source:
        stages = [t for t in ("bronze", "quarantine", "duplicates", "gold") if t in next(iter(by_source.values()))]
        lines += ["", "## Records per source", ""]
        lines += _md_table(["source", *stages], [[src, *[c.get(t, 0) for t in stages]] for src, c in by_source.items()])
    if manifest.available(spark, names, "quarantine"):
        q = (
            manifest.read_committed(spark, names, "quarantine")
            .groupBy("stage", "reason")
            .count()
            .orderBy("stage", "reason")
            .collect()
        )
        lines += ["", "## Quarantine by stage and reason", ""]
        lines += (
            _md_table(["stage", "reason", "records"], [[r["stage"], r["reason"], r["count"]] for r in q])
            if q
            else ["(empty)"]
        )
    lines += _pii_section(spark, names)
    if manifest.available(spark, names, "gold_stats"):
        gs = manifest.read_committed(spark, names, "gold_stats")
        has_source = "source" in gs.columns
        stats = gs.orderBy("split", *(["source"] if has_source else []), "category").collect()
        lines += ["", "## Gold: split x source x category, sequence lengths (tokens)", ""]
        lines += _md_table(
            ["split", "source", "category", "records", "mean", "p50", "p95", "max", "packs", "pad (packed)"],
            [
                [
                    r["split"],
                    r["source"] if has_source else "*",
                    r["category"],
                    r["records"],
                    float(r["mean_seq_len"]),
                    float(r["p50_seq_len"]),
                    float(r["p95_seq_len"]),
                    r["max_seq_len"],
                    r["packs"],
                    "" if r["pad_fraction_packed"] is None else f"{100 * r['pad_fraction_packed']:.2f}%",
                ]
                for r in stats
            ],
        )
        versions = manifest.read_committed(spark, names, "gold").select("silver_version").distinct().collect()
        lines += ["", f"Gold built from silver version(s): {', '.join(str(r[0]) for r in versions)}."]
    if views:
        lines += ["", "## SQL views", "", *[f"- `{v}`" for v in views]]
    return "\n".join(lines) + "\n"


def run(cfg: ReportConfig, spark) -> dict[str, str]:
    names = cfg.table_names()
    out = cfg.report_dir()
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, str] = {}
    counts = category_counts(spark, names)
    if not counts:
        raise FileNotFoundError(f"no prepared tables found for {names}; run `dolly-spark prepare` first")
    written["category_counts"] = str(plot_category_counts(counts, out / "category_counts.png"))
    note = manifest.status_line(spark, names)
    if note:
        log.warning("%s", note)
    if manifest.available(spark, names, "gold"):
        pdf = manifest.read_committed(spark, names, "gold").select("category", "seq_len").toPandas()
        by_cat = {c: g["seq_len"].astype(int).tolist() for c, g in pdf.groupby("category")}
        written["token_lengths"] = str(plot_token_lengths(by_cat, cfg.max_record_tokens, out / "token_lengths.png"))
    else:
        log.warning("no gold table yet: token-length histograms skipped")
    views: list[str] = []
    if cfg.create_views:
        from dolly_spark.prep.views import create_views

        views = create_views(spark, names)
    summary = out / "summary.md"
    summary.write_text(summary_markdown(spark, names, counts, views))
    written["summary"] = str(summary)
    return written
