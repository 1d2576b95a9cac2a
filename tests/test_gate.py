"""The evaluation gate on the alias: the rule on literal numbers, then real tiny models trained for
different numbers of steps, registered against each other on the same pinned gold eval split.

A better model takes the alias; a worse one is registered but tagged ``gate=failed`` with both
sets of numbers, the command exits 1 with one line (0 with ``--gate-warn-only``) and the alias
stays; the first model passes; the tolerances are honoured to the measured worsening; the
comparison is a table in the register run; evaluate's numbers for the same data are reused."""

import json
import math
from dataclasses import dataclass

import pytest

from dolly_spark.commands import evaluate as evaluate_cmd
from dolly_spark.commands import register as register_cmd
from dolly_spark.ops import tables
from dolly_spark.ops.config import parse_config
from dolly_spark.serve.evaluate import ALL, EvaluateConfig
from dolly_spark.serve.generate import GenerationConfig
from dolly_spark.tracking import gate, models, registry, runs
from tests.shared_data import DOLLY_JSONL, TOKENIZER_DIR
from tests.tiny_model import save_tiny_model
from tests.train_fixtures import gold_rows, write_gold

SAMPLE, NEW_TOKENS = 4, 8  # the generation checks, kept small


@dataclass
class FakeTrainConfig:
    output_root: str
    lr: float = 3e-3


@pytest.fixture(autouse=True)
def no_env_overrides(monkeypatch):
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "DATABRICKS_RUNTIME_VERSION", runs.PARENT_RUN_ENV):
        monkeypatch.delenv(var, raising=False)


def train_tiny(path, rows: list[dict], steps: int):
    """The tiny model (seed 0) after ``steps`` AdamW steps on the train rows' response tokens."""
    import torch
    from transformers import GPTNeoXForCausalLM

    save_tiny_model(path)
    if not steps:
        return path
    torch.manual_seed(0)
    model = GPTNeoXForCausalLM.from_pretrained(str(path))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    train = [r for r in rows if r["split"] == "train"]
    for step in range(steps):
        r = train[step % len(train)]
        ids = torch.tensor([r["input_ids"]])
        labels = ids.clone()
        labels[0, : r["prompt_len"]] = -100
        model(input_ids=ids, labels=labels).loss.backward()
        opt.step()
        opt.zero_grad()
    model.save_pretrained(str(path), safe_serialization=True)
    return path


@pytest.fixture(scope="module")
def trained(spark, tmp_path_factory):
    """Gold (real records, 16 eval rows over several categories) and two train runs with lineage:
    ``weak`` (the untrained tiny model) and ``strong`` (the same after 40 steps)."""
    root = tmp_path_factory.mktemp("gateroot")
    names = tables.TableNames(root=str(root))
    rows = gold_rows(DOLLY_JSONL, TOKENIZER_DIR, n=64, max_tokens=128, max_seq_len=256, eval_every=4)
    gold_version = write_gold(spark, root, rows)
    run_ids = {}
    for label, steps in (("weak", 0), ("strong", 40)):
        model_dir = train_tiny(root / "models" / label, rows, steps)
        result = {
            "model_dir": str(model_dir),
            "gold_table": names.gold.path,
            "gold_version": gold_version,
            "final_step": steps,
            "metrics_path": str(root / "none.jsonl"),
        }
        with runs.job_run("train", FakeTrainConfig(str(root))) as run:
            models.log_training_run(FakeTrainConfig(str(root)), result, spark=spark, names=names)
        run_ids[label] = run.info.run_id
    categories = sorted({r["category"] for r in rows if r["split"] == "eval"})
    return {"root": root, "names": names, "gold_version": gold_version, "categories": categories, **run_ids}


def gate_argv(trained, model: str, name: str, *extra: str) -> list[str]:
    return [
        *("--output-root", str(trained["root"]), "--run-id", trained[model], "--model-name", name),
        *("--gate-sample-size", str(SAMPLE), "--gate-max-new-tokens", str(NEW_TOKENS), *extra),
    ]


def cfg_for(trained, model: str, name: str, *extra: str) -> registry.RegisterConfig:
    return parse_config(registry.RegisterConfig, gate_argv(trained, model, name, *extra), prog="x")


def champion_version(name: str) -> str:
    from mlflow import MlflowClient

    return str(MlflowClient().get_model_version_by_alias(name, "champion").version)


def version_tags(name: str, version) -> dict:
    from mlflow import MlflowClient

    return MlflowClient().get_model_version(name, str(version)).tags


def latest_register_run():
    from mlflow import MlflowClient

    client = MlflowClient()
    exp_ids = [e.experiment_id for e in client.search_experiments()]
    found = client.search_runs(
        exp_ids, filter_string=f"tags.`{runs.TAG_JOB}` = 'register'", order_by=["attributes.start_time DESC"]
    )
    return found[0]


# ---------------------------------------------------------------------------------------------
# The rule on literal numbers.


def test_overall_tolerance_is_relative_and_inclusive():
    champ = {ALL: 2.0, "a": 2.0}
    assert gate.decide({ALL: 2.04, "a": 2.0}, champ, 0.02, 0.05)[0]  # exactly 2% worse: passes
    ok, why = gate.decide({ALL: 2.0401, "a": 2.0}, champ, 0.02, 0.05)
    assert not ok and why == "eval loss 2.0401 vs 2.0000 (+2.0%): more than 2.0% worse"
    assert gate.decide({ALL: 2.0401, "a": 2.0}, champ, 0.03, 0.05)[0]
    assert gate.decide({ALL: 1.0, "a": 1.0}, champ, 0.0, 0.0)[0]  # better passes at zero tolerance
    assert gate.relative_worsening(0.5, 0.0) == 0.5 and gate.relative_worsening(1.0, 2.0) == -0.5


def test_a_category_worse_than_its_tolerance_blocks_even_when_overall_is_better():
    champ = {ALL: 2.0, "a": 2.0, "b": 2.0, "c": 2.0}
    cand = {ALL: 1.9, "a": 2.1, "b": 2.2, "c": 1.0}  # a +5% (at tolerance), b +10%
    ok, why = gate.decide(cand, champ, 0.02, 0.05)
    assert not ok and "category b loss 2.2000 vs 2.0000 (+10.0%): more than 5.0% worse" in why
    assert "and" not in why.split("worse")[-1]  # only b is over
    ok, why = gate.decide(cand, champ, 0.02, 0.04)
    assert not ok and "category b" in why and why.endswith("(and 1 more)")
    assert gate.decide(cand, champ, 0.02, 0.10)[0]
    # A category only one side has, or without a finite loss, is not compared.
    assert gate.decide({ALL: 2.0, "new": 9.0, "a": math.nan}, {ALL: 2.0, "a": 1.0}, 0.02, 0.05)[0]
    with pytest.raises(ValueError, match="overall eval loss"):
        gate.decide({"a": 1.0}, {ALL: 1.0}, 0.02, 0.05)


def test_comparison_table_has_deltas_per_category_overall_and_checks():
    cand = gate.ModelScores({ALL: 3.0, "a": 4.0}, {"end_share": 0.5, "empty_share": 0.0, "median_tokens": 8.0})
    champ = gate.ModelScores({ALL: 2.0, "a": 2.0}, {"end_share": 0.25, "empty_share": 0.5, "median_tokens": 4.0})
    table = gate.comparison_table(cand, champ).set_index("metric")
    assert list(table.index) == ["eval_loss.a", "eval_loss", "gen.end_share", "gen.empty_share", "gen.median_tokens"]
    assert table.loc["eval_loss", ["candidate", "champion", "delta", "relative_delta"]].tolist() == [3.0, 2.0, 1.0, 0.5]
    assert table.loc["eval_loss.a", "relative_delta"] == 1.0 and table.loc["gen.empty_share", "delta"] == -0.5
    assert table.loc["gen.empty_share", "relative_delta"] == -1.0
    assert table.loc["gen.end_share", "kind"] == "generation" and table.loc["eval_loss.a", "kind"] == "loss"


def test_tolerances_are_validated_before_anything_runs():
    with pytest.raises(ValueError, match="tolerance must be a number >= 0"):
        gate.GateConfig(tolerance=-0.01)
    with pytest.raises(SystemExit) as exit_info:
        parse_config(registry.RegisterConfig, ["--gate-category-tolerance", "-1"], prog="dolly-spark register")
    assert exit_info.value.code == 2
    cfg = parse_config(registry.RegisterConfig, ["--no-gate", "--gate-tolerance", "0.1"], prog="x")
    assert cfg.gate is False and cfg.gate_options.tolerance == 0.1 and cfg.gate_options.category_tolerance == 0.05


# ---------------------------------------------------------------------------------------------
# Real models.


def test_the_first_model_passes(trained):
    result = register_cmd.run(cfg_for(trained, "weak", "g_first"))  # no Spark: nothing is measured
    assert result.gate.status == gate.PASSED and "first model passes" in result.gate.reason
    assert champion_version("g_first") == str(result.version)
    assert version_tags("g_first", result.version)[gate.TAG_GATE] == "passed"


def test_a_better_model_passes_and_the_comparison_is_logged_as_a_table(trained, spark):
    from mlflow import MlflowClient

    first = register_cmd.run(cfg_for(trained, "weak", "g_better"))
    result = register_cmd.run(cfg_for(trained, "strong", "g_better"), spark)
    assert result.gate.status == gate.PASSED, result.gate.reason
    assert champion_version("g_better") == str(result.version) != str(first.version)
    tags = version_tags("g_better", result.version)
    assert tags[gate.TAG_GATE] == "passed" and tags[gate.TAG_CHAMPION_VERSION] == str(first.version)
    cand, champ = json.loads(tags[gate.TAG_CANDIDATE]), json.loads(tags[gate.TAG_CHAMPION])
    assert cand["loss"][ALL] < champ["loss"][ALL] and set(cand["checks"]) == set(gate.CHECKS)
    assert tags[gate.TAG_EVAL_SET] == f"gold@v{trained['gold_version']} (eval)"

    run = latest_register_run()
    assert run.data.tags[gate.TAG_GATE] == "passed"
    assert run.data.tags["dolly.registered_version"] == str(result.version)
    table = MlflowClient().load_table(run.info.experiment_id, gate.TABLE_ARTIFACT, [run.info.run_id])
    table = table.set_index("metric")
    losses = {"eval_loss", *(f"eval_loss.{c}" for c in trained["categories"])}
    assert set(table.index) == losses | {f"gen.{c}" for c in gate.CHECKS} and len(trained["categories"]) > 2
    overall = table.loc["eval_loss"]
    assert overall["candidate"] == pytest.approx(cand["loss"][ALL], abs=1e-5)
    assert overall["champion"] == pytest.approx(champ["loss"][ALL], abs=1e-5)
    assert overall["delta"] == pytest.approx(overall["candidate"] - overall["champion"]) and overall["delta"] < 0
    assert run.data.metrics["gate.candidate.eval_loss"] == pytest.approx(overall["candidate"])


def test_a_worse_model_is_registered_but_blocked_with_one_line(trained, spark, capsys):
    champion = register_cmd.run(cfg_for(trained, "strong", "g_worse")).version

    assert register_cmd.main(gate_argv(trained, "weak", "g_worse")) == 1
    err = capsys.readouterr().err.strip().splitlines()  # MLflow and transformers write there too
    ours = [line for line in err if line.startswith("dolly-spark register:")]
    assert ours == err[-1:] and ours[0].startswith("dolly-spark register: error: gate failed against @champion")
    err = ours[0]
    assert "more than 2.0% worse" in err and f"@champion stays on version {champion}" in err
    assert champion_version("g_worse") == str(champion)
    blocked = champion + 1
    tags = version_tags("g_worse", blocked)
    assert tags[gate.TAG_GATE] == "failed" and "more than 2.0% worse" in tags[gate.TAG_REASON]
    cand, champ = json.loads(tags[gate.TAG_CANDIDATE]), json.loads(tags[gate.TAG_CHAMPION])
    assert cand["loss"][ALL] > champ["loss"][ALL] * 1.02 and len(cand["loss"]) == len(champ["loss"]) > 2
    assert latest_register_run().info.status == "FAILED"  # the job shows it

    assert register_cmd.main(gate_argv(trained, "weak", "g_worse", "--gate-warn-only")) == 0
    assert "warning (--gate-warn-only): gate failed" in capsys.readouterr().out
    assert champion_version("g_worse") == str(champion)
    assert version_tags("g_worse", blocked + 1)[gate.TAG_GATE] == "failed"

    assert register_cmd.main(gate_argv(trained, "weak", "g_worse", "--no-gate")) == 0  # documented escape hatch
    assert champion_version("g_worse") == str(blocked + 2)
    assert version_tags("g_worse", blocked + 2)[gate.TAG_GATE] == "skipped"


def test_the_tolerances_are_honoured_to_the_measured_worsening(trained, spark):
    register_cmd.run(cfg_for(trained, "strong", "g_tol"))
    measured = register_cmd.run(cfg_for(trained, "weak", "g_tol", "--gate-warn-only"), spark).gate
    table = measured.table.set_index("metric")
    worse = float(table.loc["eval_loss", "relative_delta"])
    worst_category = float(table[table["kind"] == "loss"].drop("eval_loss")["relative_delta"].max())
    assert measured.status == gate.FAILED and worse > 0.02

    loose = ("--gate-tolerance", f"{worse + 0.001}", "--gate-category-tolerance", f"{worst_category + 0.001}")
    passed = register_cmd.run(cfg_for(trained, "weak", "g_tol", *loose), spark)
    assert passed.gate.status == gate.PASSED and champion_version("g_tol") == str(passed.version)

    # Against the weak model now holding the alias: the same numbers, the other way round.
    register_cmd.run(cfg_for(trained, "strong", "g_tol", "--no-gate"))
    just_under = ("--gate-tolerance", f"{worse - 0.001}", "--gate-category-tolerance", "100", "--gate-warn-only")
    failed = register_cmd.run(cfg_for(trained, "weak", "g_tol", *just_under), spark)
    assert failed.gate.status == gate.FAILED and "more than" in failed.gate.reason
    category_only = ("--gate-tolerance", "100", "--gate-category-tolerance", f"{worst_category - 0.001}")
    failed = register_cmd.run(cfg_for(trained, "weak", "g_tol", *category_only, "--gate-warn-only"), spark)
    assert failed.gate.status == gate.FAILED and ", but category " in failed.gate.reason


def test_numbers_evaluate_logged_for_the_same_data_are_reused(trained, spark):
    register_cmd.run(cfg_for(trained, "strong", "g_reuse"))
    gen = GenerationConfig(greedy=True, max_new_tokens=NEW_TOKENS, batch_size=4)
    ev_cfg = EvaluateConfig(
        model_uri="models:/g_reuse@champion", output_root=str(trained["root"]), sample_size=SAMPLE, generation=gen
    )
    evaluated, eval_run_id = evaluate_cmd.run(ev_cfg, spark)
    assert evaluated.gold_version == trained["gold_version"]

    result = register_cmd.run(cfg_for(trained, "weak", "g_reuse", "--gate-warn-only"), spark).gate
    assert result.champion.loss_from == result.champion.checks_from == f"evaluate run {eval_run_id}"
    assert result.candidate.loss_from == "computed"
    assert result.champion.losses[ALL] == pytest.approx(evaluated.eval_loss)
    assert result.champion.losses == pytest.approx({ALL: evaluated.eval_loss, **evaluated.loss_by_category})
    assert result.champion.checks == pytest.approx(evaluated.generation_checks)

    # Another sample: the loss is still evaluate's, the generation checks are measured again.
    other = register_cmd.run(
        cfg_for(trained, "weak", "g_reuse", "--gate-warn-only", "--gate-sample-seed", "7"), spark
    ).gate
    assert other.champion.loss_from == f"evaluate run {eval_run_id}" and other.champion.checks_from == "computed"


def test_generation_checks_count_end_key_empty_and_median_length():
    import pandas as pd

    from dolly_spark.serve.evaluate import generation_checks

    gens = pd.DataFrame(
        {
            "response": ["a b", "", "  ", "x", None],
            "finish_reason": ["end_key", "end_key", "length", "length", None],
            "completion_tokens": [2, 1, 8, 8, 0],
            "error": [None, None, None, None, "empty_instruction"],
        }
    )
    assert generation_checks(gens) == {"end_share": 0.4, "empty_share": 0.6, "median_tokens": 2.0}
    assert generation_checks(gens.iloc[:0]) == {}


def test_register_help_lists_the_gate_flags(capsys):
    with pytest.raises(SystemExit) as exit_info:  # a bare "%" in a help text breaks argparse here
        register_cmd.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--no-gate", "--gate-tolerance", "--gate-category-tolerance", "--gate-warn-only"):
        assert flag in out
