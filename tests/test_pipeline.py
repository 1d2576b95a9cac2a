"""``dolly-spark run``: stage selection, and the whole DAG on a small real sample."""

import itertools

import pytest

from dolly_spark.commands.cli import parser_for
from dolly_spark.commands.run import PIPELINE_STAGES, RunConfig, run, selected_stages
from dolly_spark.ops import tables
from tests.shared_data import DOLLY_JSONL, TOKENIZER_DIR


def test_stage_selection_keeps_dag_order_and_rejects_unknown():
    assert selected_stages(RunConfig(output_root="x")) == list(PIPELINE_STAGES)
    assert selected_stages(RunConfig(output_root="x", stages=("score", "prepare"))) == ["prepare", "score"]
    assert selected_stages(RunConfig(output_root="x", skip=("train", "register"))) == [
        "prepare",
        "report",
        "evaluate",
        "score",
    ]
    with pytest.raises(ValueError, match="unknown stages"):
        selected_stages(RunConfig(output_root="x", skip=("deploy",)))


def test_run_parser_accepts_readme_flags():
    ns = parser_for("run").parse_args(
        ["--input", "a.jsonl", "--output-root", "out", "--tokenizer", "tok", "--skip", "train", "--max-steps", "3"]
    )
    assert ns.skip == ["train"] and ns.max_steps == 3 and ns.tokenizer == "tok"


def test_pipeline_end_to_end_on_a_sample_then_score_rerun_is_a_noop(spark, tmp_path):
    sample = tmp_path / "dolly_sample.jsonl"
    with open(DOLLY_JSONL) as src:
        sample.write_text("".join(itertools.islice(src, 400)))
    root = tmp_path / "root"
    cfg = RunConfig(
        input=str(sample),
        output_root=str(root),
        tokenizer=str(TOKENIZER_DIR),
        max_steps=4,
        train_max_eval_records=4,
        eval_sample_size=4,
        score_limit=16,
        max_new_tokens=4,
    )
    outcomes = {o.stage: o.summary for o in run(cfg, spark)}
    assert list(outcomes) == list(PIPELINE_STAGES)

    names = tables.TableNames(root=str(root))
    acct = outcomes["prepare"]["tables"]
    assert acct["raw"] == 400 == acct["gold"] + acct["quarantine"] + acct["duplicates"]
    assert outcomes["train"]["final_step"] == 4
    assert outcomes["register"]["model_uri"] == "models:/dolly@champion"
    assert outcomes["evaluate"]["generations"] == 4
    scored = outcomes["score"]["scored"]
    assert 0 < scored <= 16
    assert tables.read_table(spark, names.predictions).count() == scored

    again = {o.stage: o.summary for o in run(RunConfig(**{**cfg.__dict__, "stages": ("score",)}), spark)}
    assert again["score"]["scored"] == 0 and again["score"]["skipped"] == scored
    assert tables.read_table(spark, names.predictions).count() == scored
