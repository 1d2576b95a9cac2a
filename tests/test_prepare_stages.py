"""The prepare runner's contract: stages declare the tables they read and write, what flows
between them goes through the runner (never one stage's locals read by another), each table gets
one commit per run, and a run to ``--until S`` writes exactly the tables of S and earlier."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Callable, ClassVar

import deltalake
import pytest

from dolly_spark.ops import manifest
from dolly_spark.prep.accounting import AccountingError, StageCount
from dolly_spark.prep.pipeline import (
    StageContext,
    StageContractError,
    StageResult,
    check_stage_list,
    run_stages,
    select_stages,
)
from dolly_spark.prep.prepare import PrepareConfig, prepare_stages, run
from dolly_spark.prep.stages import PREPARE_STAGES, STAGE_TABLES, STAGES, BronzeStage, DedupStage, SilverStage
from tests.shared_data import DOLLY_JSONL

# --- the stage list ---------------------------------------------------------------------------


def test_the_prepare_stage_list_is_well_formed_and_broken_ones_are_refused():
    check_stage_list(PREPARE_STAGES)
    assert STAGES == ("bronze", "silver", "dedup", "gold")
    assert STAGE_TABLES["gold"] == ("gold", "quarantine", "gold_stats")

    bronze, silver, dedup, gold = PREPARE_STAGES
    with pytest.raises(StageContractError, match="stage dedup reads silver, which no earlier stage writes"):
        check_stage_list([bronze, dedup, silver, gold])
    with pytest.raises(StageContractError, match="stage gold reads candidates, silver, which no earlier stage"):
        check_stage_list([bronze, gold])
    with pytest.raises(StageContractError, match="stage silver appears twice"):
        check_stage_list([bronze, silver, silver])

    class NoResult(BronzeStage):
        result_table: ClassVar[str] = "silver"

    with pytest.raises(StageContractError, match="result table silver is not among its outputs"):
        check_stage_list([NoResult])


def test_until_selects_a_prefix_and_rejects_an_unknown_stage():
    ran, skipped = select_stages(PREPARE_STAGES, "silver")
    assert ran == [BronzeStage, SilverStage] and [s.name for s in skipped] == ["dedup", "gold"]
    with pytest.raises(ValueError, match="until: expected one of bronze, silver, dedup, gold, got 'platinum'"):
        select_stages(PREPARE_STAGES, "platinum")


# --- the runner, on stand-in stages (no engine) -------------------------------------------------


@dataclass
class Fake:
    """A stand-in stage: ``body(ctx)`` returns (count, versions, held); every context is kept."""

    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    result_table: str
    body: Callable[[StageContext], tuple[StageCount, dict, dict]]
    seen: list[StageContext] = field(default_factory=list)

    def run(self, ctx: StageContext) -> StageResult:
        self.seen.append(ctx)
        count, versions, held = self.body(ctx)
        return StageResult(count, versions, f"{count.output_rows} rows", held=held)


def _source(ctx):
    return StageCount("bronze", 10, 10), {"bronze": 1}, {}


def _silver(hold: Callable[[StageContext], bool]):
    """Silver's shape: 3 of 10 rows quarantined, held back when ``hold(ctx)``."""

    def body(ctx):
        count = StageCount("silver", ctx.input_rows, 7, 3)
        if hold(ctx):
            return count, {"silver": 2}, {"quarantine": ["r1", "r2", "r3"]}
        return count, {"silver": 2, "quarantine": 5}, {}

    return body


def _gold(ctx):
    """Gold's shape: 1 more reject, written to quarantine with the rows handed to it."""
    return StageCount("gold", ctx.input_rows, 6, 1), {"gold": 3, "quarantine": 6}, {}


def _stages(silver_body):
    return [
        Fake("bronze", (), ("bronze",), "bronze", _source),
        Fake("silver", ("bronze",), ("silver", "quarantine"), "silver", silver_body),
        Fake("gold", ("silver",), ("gold", "quarantine"), "gold", _gold),
    ]


def test_held_back_rows_reach_the_later_writer_through_the_runner():
    stages = _stages(_silver(lambda ctx: ctx.written_later("quarantine")))
    outcome = run_stages(None, None, stages)
    (gold_ctx,) = stages[2].seen
    assert gold_ctx.held == {"quarantine": ["r1", "r2", "r3"]}  # handed over explicitly, not read from silver
    assert gold_ctx.input_rows == 7 and gold_ctx.versions == {"bronze": 1, "silver": 2}
    assert outcome.versions == {"bronze": 1, "silver": 2, "gold": 3, "quarantine": 6}
    assert outcome.accounting() == (10, 6, 4, 0) and outcome.result_table == "gold"

    # A run that stops at silver: nothing later writes quarantine, so silver writes it itself.
    ran, _ = select_stages(_stages(_silver(lambda ctx: ctx.written_later("quarantine"))), "silver")
    assert run_stages(None, None, ran).versions == {"bronze": 1, "silver": 2, "quarantine": 5}


def test_the_runner_refuses_stages_that_break_the_contract():
    # The old failure mode: rows held back on a condition other than "a later stage writes them"
    # (here: always) are lost on a run that stops at silver.
    always = _stages(_silver(lambda ctx: True))
    ran, _ = select_stages(always, "silver")
    with pytest.raises(StageContractError, match="held back rows for quarantine, which no later stage writes"):
        run_stages(None, None, ran)
    # Never holding back: quarantine would get two commits in one run (readers could see silver's alone).
    with pytest.raises(StageContractError, match="committed quarantine a second time in one run"):
        run_stages(None, None, _stages(_silver(lambda ctx: False)))

    stages = _stages(_silver(lambda ctx: ctx.written_later("quarantine")))
    stages[0].body = lambda ctx: (StageCount("bronze", 10, 10), {"bronze": 1, "gold": 9}, {})
    with pytest.raises(StageContractError, match="stage bronze wrote gold, not among its outputs"):
        run_stages(None, None, stages)
    stages[0].body = lambda ctx: (StageCount("bronze", 10, 10), {}, {})
    with pytest.raises(StageContractError, match="stage bronze neither wrote nor held back bronze"):
        run_stages(None, None, stages)
    stages[0].body = _source
    stages[2].body = lambda ctx: (StageCount("gold", ctx.input_rows, 5, 1), {"gold": 3, "quarantine": 6}, {})
    with pytest.raises(AccountingError, match="raw 10 != gold 5 \\+ quarantine 4"):
        run_stages(None, None, stages)


# --- the real stages, one root, every --until ---------------------------------------------------


def _input(tmp_path):
    """300 real records, two silver rejects (bad JSON, no instruction) and one too long for gold."""
    src = tmp_path / "in.jsonl"
    with open(DOLLY_JSONL) as f:
        lines = [next(f) for _ in range(300)]
    long = {"instruction": "Repeat.", "context": "", "response": "word " * 5000, "category": "open_qa"}
    empty = {"instruction": "", "context": "", "response": "x", "category": "open_qa"}
    lines += ["{not json\n", json.dumps(empty) + "\n", json.dumps(long) + "\n"]
    src.write_text("".join(lines))
    return src


def _versions(root) -> dict[str, int]:
    tables = root / "tables"
    return {p.name: deltalake.DeltaTable(str(p)).version() for p in sorted(tables.iterdir())} if tables.is_dir() else {}


def _rows(root, table: str) -> int:
    return deltalake.DeltaTable(str(root / "tables" / table)).to_pyarrow_table().num_rows


def test_each_until_writes_its_stages_tables_once_and_empties_the_later_ones(spark, tmp_path):
    src, root = _input(tmp_path), tmp_path / "out"
    names = PrepareConfig(output_root=str(root)).table_names()
    for until in ("gold", "bronze", "silver", "dedup", "gold"):
        before = _versions(root)
        result = run(PrepareConfig(input=str(src), output_root=str(root), until=until), spark)
        after = _versions(root)
        ran = STAGES[: STAGES.index(until) + 1]
        declared = {t for s in ran for t in STAGE_TABLES[s]}
        later = {t for s in STAGES[len(ran) :] for t in STAGE_TABLES[s]} - declared
        assert set(result.versions) == declared | {"metrics"}, until
        assert manifest.latest(spark, names).versions == result.versions
        for table in declared | {"metrics"}:  # one commit each, the one the manifest names
            assert (after[table], after[table] - before.get(table, -1)) == (result.versions[table], 1), (until, table)
        for table in later & set(before):  # built from the previous silver: emptied, in one commit
            assert (after[table] - before[table], _rows(root, table)) == (1, 0), (until, table)
        assert after["manifest"] - before.get("manifest", -1) == 2  # started, committed
        assert [c.stage for c in result.counts] == list(ran)
        if until == "gold":
            rejects = deltalake.DeltaTable(str(root / "tables" / "quarantine")).to_pyarrow_table()
            assert set(rejects["stage"].to_pylist()) == {"silver", "gold"}, "the input needs both stages' rejects"
    acct = result.details["accounting"]
    assert acct["raw"] == 303 == acct["gold"] + acct["quarantine"] + acct["duplicates"]


def test_prepare_stages_get_the_resolved_configs():
    cfg = PrepareConfig(input="x.jsonl", output_root="/tmp/r")
    stages = {s.name: s for s in prepare_stages(cfg)}
    assert isinstance(stages["silver"], SilverStage) and stages["silver"].clean == cfg.clean_config()
    assert isinstance(stages["dedup"], DedupStage) and stages["dedup"].dedup == cfg.dedup_config()
    assert list(stages) == list(STAGES)
