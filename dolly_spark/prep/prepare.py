"""``dolly-spark prepare``: raw JSON lines -> bronze -> silver -> dedup -> gold (+ quarantine,
duplicates, metrics). ``--until STAGE`` stops early. The stages are in ``prep/stages.py``, the
runner that chains and commits them in ``prep/pipeline.py``."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import shutil
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import ClassVar

from dolly_spark.ops import manifest, tables
from dolly_spark.ops.config import TrackedLocation
from dolly_spark.ops.lock import ConcurrentRunError, exclusive
from dolly_spark.prep.accounting import StageCount
from dolly_spark.prep.clean import ANY_CATEGORY, KNOWN_CATEGORIES, CleanConfig
from dolly_spark.prep.decontam import DecontamConfig, check_benchmarks
from dolly_spark.prep.dedup import DedupConfig
from dolly_spark.prep.gold import GoldConfig
from dolly_spark.prep.ingest import HF_DATASET_ID
from dolly_spark.prep.line_reader import DEFAULT_MAX_LINE_BYTES, check_max_line_bytes
from dolly_spark.prep.pii import PiiConfig
from dolly_spark.prep.pipeline import Stage, run_pipeline
from dolly_spark.prep.sources import SourceConfig, parse_source_flag, weights
from dolly_spark.prep.stages import STAGES, BronzeStage, DedupStage, GoldStage, SilverStage

log = logging.getLogger(__name__)

# Databricks has no shared file lock: a started, uncommitted run younger than this holds the root.
LEASE_HOURS = 6.0


# Exact Dolly: the published text, Dolly's 200 eval records with seed 42, and Dolly's length filter
# (it keeps records *shorter* than max_length: one reserved token makes ours strict too).
# The PII scan still runs and counts, but keeps the text: Dolly trained on it as published.
DOLLY_PRESET = {
    "_help": "Dolly's data: raw text (PII found and counted, kept), 200 eval records, seed 42, records shorter than the context",
    "clean": {"raw_text": True},
    "pii": {"actions": ["pii=keep", "secrets=keep"]},
    "gold": {"eval_size": 200, "split_seed": 42, "pack_separator_tokens": 1},
}


@dataclass
class PrepareConfig(TrackedLocation):
    PRESETS: ClassVar[dict] = {"dolly": DOLLY_PRESET}

    input: str | None = field(
        default=None,
        metadata={"help": "one dolly-15k-style source: JSONL file/dir, Volume path or HF id (default: the HF id)"},
    )
    # Own data: YAML ``sources: [{uri, format, preset, columns, category, name, weight}, ...]``
    # (prep/sources.py); ``--source NAME=URI`` adds one from the command line.
    sources: tuple[SourceConfig, ...] = field(default=(), metadata={"cli": False})
    source: tuple[str, ...] = field(default=(), metadata={"help": "add a source: NAME=URI (repeatable list)"})
    # YAML ``categories: any`` or a list; default: dolly's eight when every source is dolly-15k,
    # else any. ``--categories`` (clean.categories) sets it from the command line.
    categories: tuple[str, ...] | str | None = field(default=None, metadata={"cli": False})
    ingest_chunk_mb: int = field(
        default=128,
        metadata={"help": "JSON lines files larger than this are read by several tasks, in ranges this big"},
    )
    max_line_bytes: int = field(
        default=DEFAULT_MAX_LINE_BYTES,
        metadata={"help": "a longer input line is quarantined as line_too_long, its first 4 KiB kept (>= 1024)"},
    )
    until: str = field(default=STAGES[-1], metadata={"help": "stop after this stage", "choices": STAGES})
    # Nested parts: YAML ``clean: {...}``, ``dedup: {...}``, ``gold: {...}``, ``decontam: {...}``; flags
    # --max-instruction-chars, --dedup-threshold, --max-record-tokens, --decontaminate (dedup's flags
    # keep their prefix, the others have none: decontam's fields carry theirs in their names).
    clean: CleanConfig = field(default_factory=CleanConfig, metadata={"flag_prefix": ""})
    dedup: DedupConfig = field(default_factory=DedupConfig, metadata={"flag_prefix": "dedup_"})
    gold: GoldConfig = field(default_factory=GoldConfig, metadata={"flag_prefix": ""})
    # YAML ``pii: {scan: false}`` or ``pii: {actions: [EMAIL=keep, secrets=redact]}``; --no-pii-scan, --pii-actions.
    pii: PiiConfig = field(default_factory=PiiConfig, metadata={"flag_prefix": "pii_"})
    decontam: DecontamConfig = field(default_factory=DecontamConfig, metadata={"flag_prefix": ""})

    def __post_init__(self):
        if self.ingest_chunk_mb < 1:
            raise ValueError(f"ingest_chunk_mb: expected a positive number of MiB, got {self.ingest_chunk_mb}")
        check_max_line_bytes(self.max_line_bytes)
        if isinstance(self.categories, str) and self.categories != ANY_CATEGORY:
            raise ValueError(f"categories: expected 'any' or a list, got {self.categories!r}")
        if isinstance(self.categories, (list, tuple)) and not all(isinstance(c, str) for c in self.categories):
            raise ValueError(f"categories: expected a list of strings, got {self.categories!r}")

    def source_list(self) -> list[SourceConfig]:
        """--input (first), then the YAML sources, then --source flags; dolly-15k if none."""
        out = [SourceConfig(uri=self.input)] if self.input else []
        out += list(self.sources) + [parse_source_flag(v) for v in self.source]
        return out or [SourceConfig(uri=HF_DATASET_ID)]

    def clean_config(self) -> CleanConfig:
        """clean.categories resolved: explicit > dolly's eight if every source is dolly-15k > any."""
        if isinstance(self.categories, str):
            cats: tuple[str, ...] = (ANY_CATEGORY,)
        elif self.categories is not None:
            cats = tuple(c.strip().lower() for c in self.categories)
        elif tuple(self.clean.categories) != KNOWN_CATEGORIES:
            cats = tuple(self.clean.categories)
        elif all(s.is_dolly() for s in self.source_list()):
            cats = KNOWN_CATEGORIES
        else:
            cats = (ANY_CATEGORY,)
        return dataclasses.replace(self.clean, categories=cats)

    def work_dir(self, purpose: str) -> str | None:
        """Intermediates of one stage: ``--dedup-work-dir`` when given (dedup and gold share it),
        else ``<output root>/_work/<purpose>`` (each run in its own uuid subdir)."""
        if self.dedup.work_dir or not self.output_root:
            return self.dedup.work_dir
        return str(Path(self.output_root).resolve() / "_work" / purpose)

    def dedup_config(self) -> DedupConfig:
        """Intermediates under the output root (never a driver temp dir on a cluster); of records
        duplicated across sources, the earliest listed source's is kept."""
        dedup = self.dedup
        if len(self.source_list()) > 1 and not dedup.source_priority:
            dedup = dataclasses.replace(dedup, source_priority=tuple(s.source_name for s in self.source_list()))
        return dataclasses.replace(dedup, work_dir=self.work_dir("dedup"))


@dataclass
class PrepareResult:
    run_id: str
    counts: list[StageCount]
    versions: dict[str, int]
    details: dict = field(default_factory=dict)


@contextlib.contextmanager
def root_lock(cfg: PrepareConfig, spark, run_id: str):
    """Hold the output root for one prepare run; on first entry, clean what killed runs left.

    Raises :class:`ConcurrentRunError` at once when another prepare holds the root.
    """
    names = cfg.table_names()
    if names.root is None:
        _check_lease(spark, names)
        yield True
        return
    with exclusive(names.root, run_id) as first:
        if first:
            note = manifest.status_line(spark, names)
            if note:
                log.warning("%s", note)
                print(f"[prepare] warning: {note}", flush=True)
            _clean_stale_work_dirs(cfg)
        yield first


def _check_lease(spark, names: tables.TableNames) -> None:
    cutoff = datetime.now(UTC) - timedelta(hours=LEASE_HOURS)
    for r in manifest.incomplete_runs(spark, names, include_failed=False):
        if datetime.fromisoformat(r["at"]) > cutoff:
            raise ConcurrentRunError(
                f"another prepare (run {r['run_id']}, pid {r['pid']} on {r['host']}, started {r['at']}) has not "
                f"committed to {names.catalog}.{names.schema}; if it is dead, its lease ends {LEASE_HOURS:g} h after start"
            )


def _clean_stale_work_dirs(cfg: PrepareConfig) -> None:
    """Intermediates of killed runs (``_work/{dedup,gold,pii}/<uuid>``): stale, since we hold the root."""
    if cfg.dedup.work_dir or not cfg.output_root:
        return  # a user-chosen work dir may be shared with other roots: not ours to clean
    for purpose in ("dedup", "gold", "pii"):
        work = Path(cfg.work_dir(purpose))
        stale = [p for p in work.iterdir() if p.is_dir()] if work.is_dir() else []
        for p in stale:
            shutil.rmtree(p, ignore_errors=True)
        if stale:
            log.info("removed %d stale %s work dir(s) under %s", len(stale), purpose, work)


def prepare_stages(cfg: PrepareConfig) -> list[Stage]:
    """The stages of a prepare run, in order, each with its part of the config."""
    sources = cfg.source_list()
    cfg.pii.check()  # the detector libraries, before any write
    return [
        BronzeStage(tuple(sources), cfg.ingest_chunk_mb * 1024 * 1024, cfg.max_line_bytes),
        SilverStage(cfg.clean_config(), cfg.pii, cfg.work_dir("pii")),
        DedupStage(cfg.dedup_config()),
        GoldStage(cfg.gold, weights(sources), cfg.work_dir("gold"), cfg.decontam),
    ]


def run(cfg: PrepareConfig, spark, run_id: str | None = None) -> PrepareResult:
    run_id = run_id or uuid.uuid4().hex
    stages = prepare_stages(cfg)  # config only: a bad one fails before the root is touched
    if cfg.until == STAGES[-1]:
        check_benchmarks(spark, cfg.decontam)  # before any write: found, readable, with text
    with root_lock(cfg, spark, run_id):
        try:
            outcome = run_pipeline(spark, cfg.table_names(), run_id, stages, cfg.until)
        except BaseException:
            with contextlib.suppress(Exception):  # best effort: the original error matters more
                manifest.mark_failed(spark, cfg.table_names(), run_id, cfg.until)
            raise
    return PrepareResult(run_id, outcome.counts, outcome.versions, outcome.details)
