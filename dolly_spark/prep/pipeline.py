"""The prepare runner: an explicit list of stages, each declaring the tables it reads and writes.

A stage (see ``prep/stages.py``) gets a :class:`StageContext` and returns a :class:`StageResult`;
it never sees another stage's locals. What flows between stages is in the context: the tables
this run committed so far, the previous stage's output rows, and rows an earlier stage held back
for a table a later stage writes (so that table gets one commit per run). The runner owns the
rest: which stages run (``--until``), the contract and row-accounting checks after each stage,
progress lines, the final recount, emptying later stages' tables, metrics, the manifest commit
and the SQL views.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence

from dolly_spark.ops import manifest, tables
from dolly_spark.prep.accounting import StageCount, check_invariant, metrics_frame, per_source_accounting

log = logging.getLogger(__name__)

# Run details the manifest's committed row keeps: what train records about the data it trains on.
MANIFEST_DETAILS = ("licenses", "commercial_use")


class StageContractError(RuntimeError):
    """A stage list or a stage's result breaks the runner's contract (a bug, not bad input)."""


@dataclass(frozen=True)
class StageContext:
    spark: Any
    names: tables.TableNames
    versions: dict[str, int]  # tables this run committed before this stage -> Delta version
    input_rows: int  # the previous stage's output rows (0 for the first stage)
    later_outputs: frozenset[str]  # tables a later stage of this run writes
    held: dict[str, Any]  # rows an earlier stage held back for tables this stage writes

    def written_later(self, logical: str) -> bool:
        return logical in self.later_outputs


@dataclass(frozen=True)
class StageResult:
    count: StageCount
    versions: dict[str, int]  # tables this stage committed -> Delta version
    summary: str  # the text of the progress line
    details: dict = field(default_factory=dict)  # merged into the run's details
    # Rows of a declared output that a later stage of this run writes (with its own rows).
    held: dict[str, Any] = field(default_factory=dict)


class Stage(Protocol):
    name: str
    inputs: tuple[str, ...]  # logical tables it reads (or whose version it records)
    outputs: tuple[str, ...]  # logical tables it (re)writes, or holds back for a later writer
    result_table: str  # the output holding the rows that flow on: the accounting's "out"

    def run(self, ctx: StageContext) -> StageResult: ...


@dataclass
class RunOutcome:
    counts: list[StageCount] = field(default_factory=list)
    versions: dict[str, int] = field(default_factory=dict)
    details: dict = field(default_factory=dict)
    result_table: str = ""

    def accounting(self) -> tuple[int, int, int, int]:
        """raw, out, quarantined and removed rows so far, from the stages' counts."""
        raw = self.counts[0].output_rows
        quarantined = sum(c.quarantined_rows for c in self.counts)
        return raw, self.counts[-1].output_rows, quarantined, sum(c.removed_rows for c in self.counts)


def check_stage_list(stages: Sequence[Stage]) -> None:
    """Unique names, and every declared input written by an earlier stage."""
    written: set[str] = set()
    order = ", ".join(s.name for s in stages)
    for i, stage in enumerate(stages):
        if stage.name in (s.name for s in stages[:i]):
            raise StageContractError(f"stage {stage.name} appears twice in the stage list ({order})")
        if stage.result_table not in stage.outputs:
            raise StageContractError(f"stage {stage.name}: result table {stage.result_table} is not among its outputs")
        missing = [t for t in stage.inputs if t not in written]
        if missing:
            raise StageContractError(
                f"stage {stage.name} reads {', '.join(missing)}, which no earlier stage writes (stages: {order})"
            )
        written.update(stage.outputs)


def select_stages(stages: Sequence[Stage], until: str) -> tuple[list[Stage], list[Stage]]:
    """(stages to run, stages after ``until``)."""
    names = [s.name for s in stages]
    if until not in names:
        raise ValueError(f"until: expected one of {', '.join(names)}, got {until!r}")
    stop = names.index(until) + 1
    return list(stages[:stop]), list(stages[stop:])


def check_stage_result(stage: Stage, result: StageResult, committed: dict[str, int], later: frozenset[str]) -> None:
    """What a stage wrote is what it declared, each table is committed once per run (readers never
    see it between two commits), and held-back rows have a later writer."""
    declared = set(stage.outputs)
    undeclared = (set(result.versions) | set(result.held)) - declared
    if undeclared:
        raise StageContractError(f"stage {stage.name} wrote {', '.join(sorted(undeclared))}, not among its outputs")
    unwritten = declared - set(result.versions) - set(result.held)
    if unwritten:
        raise StageContractError(f"stage {stage.name} neither wrote nor held back {', '.join(sorted(unwritten))}")
    twice = set(result.versions) & set(committed)
    if twice:
        raise StageContractError(f"stage {stage.name} committed {', '.join(sorted(twice))} a second time in one run")
    orphaned = set(result.held) - later
    if orphaned:
        raise StageContractError(
            f"stage {stage.name} held back rows for {', '.join(sorted(orphaned))}, which no later stage writes"
        )


def _progress(i: int, total: int, stage: str, t0: float, msg: str) -> None:
    log.info("[%d/%d] %-7s %s (%.1fs)", i, total, stage, msg, time.time() - t0)
    print(f"[prepare {i}/{total}] {stage:<7} {msg} ({time.time() - t0:.1f}s)", flush=True)


def run_stages(spark, names: tables.TableNames, stages: Sequence[Stage]) -> RunOutcome:
    """Run ``stages`` in order, checking each one's contract and the row accounting after it."""
    outcome = RunOutcome()
    held: dict[str, Any] = {}
    for i, stage in enumerate(stages):
        later = frozenset(t for s in stages[i + 1 :] for t in s.outputs)
        handed = {t: held.pop(t) for t in list(held) if t in stage.outputs}
        input_rows = outcome.counts[-1].output_rows if outcome.counts else 0
        ctx = StageContext(spark, names, dict(outcome.versions), input_rows, later, handed)
        t0 = time.time()
        result = stage.run(ctx)
        check_stage_result(stage, result, outcome.versions, later)
        held.update(result.held)
        outcome.counts.append(result.count)
        outcome.versions.update(result.versions)
        outcome.details.update(result.details)
        outcome.result_table = stage.result_table
        _progress(i + 1, len(stages), stage.name, t0, result.summary)
        check_invariant(*outcome.accounting(), what=stage.result_table)
    return outcome


def clear_downstream(
    spark, names: tables.TableNames, skipped: Sequence[Stage], outcome: RunOutcome, until: str
) -> None:
    """Empty the existing tables of the stages after ``until`` (one commit each; history stays)."""
    later = {t for s in skipped for t in s.outputs} - set(outcome.versions)
    for logical in sorted(later):
        ref = names.ref(logical)
        if tables.table_exists(spark, ref):
            empty = spark.createDataFrame([], schema=tables.read_table(spark, ref).schema)
            tables.write_table(spark, empty, ref)
            log.info("emptied %s: built from an earlier silver, and this run stopped at %s", logical, until)


def _recount(spark, names: tables.TableNames, outcome: RunOutcome) -> None:
    """The promise about what landed, not what the stages tallied: overall, then per source."""
    raw, _, _, removed = outcome.accounting()
    out_name = outcome.result_table
    q_table = tables.read_table(spark, names.quarantine).count()
    out_rows = tables.read_table(spark, getattr(names, out_name)).count()
    check_invariant(raw, out_rows, q_table, removed, what=out_name)
    # Each source's rows land in exactly one of out / quarantine / duplicates.
    by_source = per_source_accounting(spark, names, out_name)
    outcome.counts[-1].details["by_source"] = by_source
    outcome.details["by_source"] = by_source


def run_pipeline(spark, names: tables.TableNames, run_id: str, stages: Sequence[Stage], until: str) -> RunOutcome:
    """Run the stages up to ``until``, then commit: readers see this run's tables from the
    manifest commit on (``manifest.read_committed``)."""
    check_stage_list(stages)
    ran, skipped = select_stages(stages, until)
    manifest.mark_started(spark, names, run_id, until)
    outcome = run_stages(spark, names, ran)
    for c in outcome.counts:
        c.check()
    if len(ran) > 1:  # bronze alone: no row has left the raw ones yet
        _recount(spark, names, outcome)
    clear_downstream(spark, names, skipped, outcome, until)
    metrics = metrics_frame(spark, run_id, outcome.counts)
    outcome.versions["metrics"] = tables.write_table(spark, metrics, names.metrics, mode="append")
    data = {k: outcome.details[k] for k in MANIFEST_DETAILS if k in outcome.details}
    manifest.commit(spark, names, run_id, until, outcome.versions, data)  # the last write
    if not skipped:
        from dolly_spark.prep.views import create_views

        create_views(spark, names)  # after the commit: views pin the versions it names
    raw, out_rows, quarantined, removed = outcome.accounting()
    outcome.details["accounting"] = {
        "raw": raw,
        outcome.result_table: out_rows,
        "quarantine": quarantined,
        "duplicates": removed,
    }
    return outcome
