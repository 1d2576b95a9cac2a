"""``dolly-spark run``: its config (sections, presets, flags that do what they say), stage selection,
and the whole DAG on a small real sample."""

import itertools
import json
import os

import pytest

from dolly_spark.commands import run as run_cmd
from dolly_spark.commands.run import PIPELINE_STAGES, RunConfig, run
from dolly_spark.ops import tables
from dolly_spark.ops.config import parse_config
from dolly_spark.text.model_config import TINY_MODEL
from tests.shared_data import DOLLY_JSONL, SHARED, TOKENIZER_DIR


def parsed(*argv: str) -> RunConfig:
    return parse_config(RunConfig, ["--output-root", "out", *argv], prog="dolly-spark run")


def test_stage_selection_keeps_dag_order_and_rejects_unknown():
    assert RunConfig(output_root="x").selected_stages() == list(PIPELINE_STAGES)
    assert RunConfig(output_root="x", stages=("score", "prepare")).selected_stages() == ["prepare", "score"]
    assert RunConfig(output_root="x", skip=("train", "register")).selected_stages() == [
        "prepare",
        "report",
        "evaluate",
        "score",
    ]
    with pytest.raises(ValueError, match="unknown stages"):
        RunConfig(output_root="x", skip=("deploy",))


def test_two_source_flags_are_both_read():
    cfg = parsed("--source", "a=/data/a.jsonl", "--source", "b=/data/b.jsonl")
    assert [s.source_name for s in cfg.prepare.source_list()] == ["a", "b"]
    assert parsed("--source", "a=/data/a.jsonl", "b=/data/b.jsonl").prepare.source == (
        "a=/data/a.jsonl",
        "b=/data/b.jsonl",
    )


def test_an_input_equal_to_the_hub_id_is_kept_next_to_sources():
    cfg = parsed("--input", "databricks/databricks-dolly-15k", "--source", "t=/data/t.jsonl")
    assert [s.uri for s in cfg.prepare.source_list()] == ["databricks/databricks-dolly-15k", "/data/t.jsonl"]


def test_without_a_base_model_run_is_the_local_preset_and_with_one_it_is_not(tmp_path):
    local = parsed("--input", "a.jsonl")
    assert local.base_model == local.train.base_model == local.prepare.gold.base_model == TINY_MODEL
    assert (local.train.max_steps, local.train.lr, local.score.limit) == (40, 1e-3, 500)
    assert local.score.generation.greedy and local.evaluate.generation.greedy
    config_json = tmp_path / "config.json"
    config_json.write_text("{}")
    real = parsed("--input", "a.jsonl", "--base-model", str(config_json))
    assert real.base_model == real.train.base_model == real.prepare.gold.base_model == str(config_json)
    assert not real.train.tiny and not real.score.generation.greedy  # Dolly's sampling
    assert (real.train.max_steps, real.train.lr, real.score.limit) == (-1, 5e-6, 0)  # the jobs' own defaults
    # Section flags reach their section with or without the preset (no flag is ignored).
    for cfg in (
        parsed("--train-max-seq-len", "300"),
        parsed("--base-model", str(config_json), "--train-max-seq-len", "300"),
    ):
        assert cfg.train.max_seq_len == 300
    assert parsed("--preset", "local", "--base-model", str(config_json)).train.base_model == str(config_json)


def test_location_tokenizer_and_base_model_are_set_once_for_every_section(tmp_path):
    cfg = parsed("--tokenizer", "tok", "--experiment", "e1")
    for section in (cfg.prepare, cfg.report, cfg.train, cfg.register, cfg.evaluate, cfg.score):
        assert (section.output_root, section.experiment) == ("out", "e1")
    assert cfg.prepare.gold.tokenizer == cfg.train.tokenizer == "tok"
    flags = {o for a in run_cmd_parser()._actions for o in a.option_strings}
    assert not {"--train-tokenizer", "--train-base-model", "--train-output-root", "--score-model-uri"} & flags
    bad = tmp_path / "run.yaml"
    bad.write_text("train:\n  tokenizer: other\n")
    with pytest.raises(SystemExit):  # one usage line, exit 2
        parse_config(RunConfig, ["--config", str(bad)], prog="dolly-spark run")


def run_cmd_parser():
    from dolly_spark.commands.cli import parser_for

    return parser_for("run")


def test_yaml_sections_configure_each_job(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(
        "output_root: out\nbase_model: tiny\n"
        "prepare:\n  input: a.jsonl\n  dedup: {threshold: 0.8}\n"
        "train:\n  max_steps: 3\n"
        "score:\n  generation: {greedy: true, max_new_tokens: 5}\n"
    )
    cfg = parse_config(RunConfig, ["--config", str(path), "--train-max-steps", "4"], prog="dolly-spark run")
    assert (cfg.prepare.input, cfg.prepare.dedup.threshold, cfg.train.max_steps) == ("a.jsonl", 0.8, 4)
    assert cfg.score.generation.greedy and cfg.score.generation.max_new_tokens == 5
    path.write_text("train:\n  max_stepz: 3\n")
    with pytest.raises(SystemExit):  # a misspelt key is a usage error, not ignored
        parse_config(RunConfig, ["--config", str(path)], prog="dolly-spark run")


def test_run_writes_no_environment_variables(monkeypatch):
    seen = []
    for stage in PIPELINE_STAGES:
        monkeypatch.setitem(run_cmd.STAGE_RUNNERS, stage, lambda cfg, spark, state, s=stage: seen.append(s) or {})
    monkeypatch.setattr(run_cmd, "job_run", lambda job, cfg: _null())
    before = dict(os.environ)
    cfg = parsed("--tokenizer", str(TOKENIZER_DIR))
    run_cmd.run(cfg, spark=None)
    assert seen == list(PIPELINE_STAGES)
    assert dict(os.environ) == before


class _null:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def test_pipeline_end_to_end_on_a_sample_then_score_rerun_is_a_noop(spark, tmp_path):
    sample = tmp_path / "dolly_sample.jsonl"
    with open(DOLLY_JSONL) as src:
        sample.write_text("".join(itertools.islice(src, 400)))
    root = tmp_path / "root"
    argv = ["--input", str(sample), "--output-root", str(root), "--tokenizer", str(TOKENIZER_DIR)]
    argv += ["--train-max-steps", "4", "--train-max-eval-records", "4", "--evaluate-sample-size", "4"]
    argv += ["--score-limit", "16", "--evaluate-max-new-tokens", "4", "--score-max-new-tokens", "4"]
    cfg = parse_config(RunConfig, argv, prog="dolly-spark run")
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

    again = {o.stage: o.summary for o in run(parse_config(RunConfig, [*argv, "--stages", "score"], "run"), spark)}
    assert again["score"]["scored"] == 0 and again["score"]["skipped"] == scored
    assert tables.read_table(spark, names.predictions).count() == scored


def test_run_with_a_base_model_config_trains_that_model_without_extra_flags(spark, tmp_path):
    """``--base-model CONFIG.json`` alone: no preset, no ``tiny``; the model trained has the config's shape."""
    pythia = json.loads((SHARED / "models" / "pythia-410m" / "config.json").read_text())
    small = {**pythia, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2}
    config_json = tmp_path / "small_config.json"
    config_json.write_text(json.dumps(small))
    sample = tmp_path / "dolly_sample.jsonl"
    with open(DOLLY_JSONL) as src:
        sample.write_text("".join(itertools.islice(src, 120)))
    root = tmp_path / "root"
    argv = ["--input", str(sample), "--output-root", str(root), "--tokenizer", str(TOKENIZER_DIR)]
    argv += ["--base-model", str(config_json), "--stages", "prepare", "train"]
    argv += ["--train-max-steps", "2", "--train-max-seq-len", "256", "--train-max-eval-records", "2"]
    cfg = parse_config(RunConfig, argv, prog="dolly-spark run")
    outcomes = {o.stage: o.summary for o in run(cfg, spark)}
    assert outcomes["train"]["final_step"] == 2
    trained = json.loads((root / "train" / "model" / "config.json").read_text())
    assert (trained["hidden_size"], trained["num_hidden_layers"]) == (32, 1)
