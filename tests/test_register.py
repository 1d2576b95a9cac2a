"""Registry: promote a train run under an alias, lineage and eval metrics as version tags,
clear errors for a run without a model and for an alias that does not exist."""

from dataclasses import dataclass

import pytest

from dolly_spark.commands import register as register_cmd
from dolly_spark.ops import tables
from dolly_spark.ops.config import parse_config
from dolly_spark.serve import model_uri
from dolly_spark.tracking import experiments, lineage, models, registry, runs


@dataclass
class FakeTrainConfig:
    output_root: str
    lr: float = 5e-6


@pytest.fixture(autouse=True)
def no_env_overrides(monkeypatch):
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "DATABRICKS_RUNTIME_VERSION", runs.PARENT_RUN_ENV):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture(scope="module")
def trained(spark, tiny_model_dir, tmp_path_factory):
    """A train run as the train job leaves it: gold lineage (gold at version 1), metrics, model."""
    import mlflow

    root = tmp_path_factory.mktemp("regroot")
    names = tables.TableNames(root=str(root))
    ddl = "record_id string, split string, instruction string, response string"
    tables.write_table(spark, spark.createDataFrame([("r1", "train", "q", "a")], ddl), names.gold)
    gold_version = tables.write_table(
        spark, spark.createDataFrame([("r1", "train", "q", "a"), ("r2", "eval", "q2", "b")], ddl), names.gold
    )
    result = {
        "model_dir": str(tiny_model_dir),
        "gold_table": names.gold.path,
        "gold_version": gold_version,
        "silver_version": 5,
        "bronze_version": 2,
        "final_step": 4,
        "train_loss_first": 10.5,
        "train_loss_last": 9.75,
        "eval_loss": 9.5,
        "eval_loss_by_category": {"open_qa": 9.25},
        "metrics_path": str(root / "none.jsonl"),
    }
    with runs.job_run("train", FakeTrainConfig(str(root))) as run:
        info = models.log_training_run(FakeTrainConfig(str(root)), result, spark=spark, names=names)
    with runs.job_run("evaluate", FakeTrainConfig(str(root))) as eval_run:
        mlflow.log_metrics({"eval_bleu": 0.25, "latency_s": 1.5})
    return {
        "root": root,
        "names": names,
        "run_id": run.info.run_id,
        "eval_run_id": eval_run.info.run_id,
        "info": info,
        "gold_version": gold_version,
    }


def test_training_run_logs_lineage_metrics_and_model(trained):
    from mlflow import MlflowClient

    run = MlflowClient().get_run(trained["run_id"])
    assert run.data.metrics["eval_loss"] == 9.5 and run.data.metrics["eval_loss_open_qa"] == 9.25
    assert run.data.metrics["train_loss_last"] == 9.75 and run.data.metrics["final_step"] == 4
    assert run.data.tags[lineage.TAG_GOLD_VERSION] == str(trained["gold_version"])
    assert trained["info"].model_uri.startswith("models:/m-")
    assert run.inputs.dataset_inputs[0].dataset.name == f"gold@v{trained['gold_version']}"


def test_register_latest_train_run_tags_lineage_from_delta_history(trained):
    from mlflow import MlflowClient

    result = registry.register(registry.RegisterConfig(output_root=str(trained["root"])))
    assert (result.model_name, result.alias, result.run_id) == ("dolly", "champion", trained["run_id"])
    assert result.model_uri == "models:/dolly@champion"
    mv = MlflowClient().get_model_version_by_alias("dolly", "champion")
    assert int(mv.version) == result.version and mv.run_id == trained["run_id"]
    gold = trained["names"].gold
    history = tables.table_history(gold)
    assert mv.tags[lineage.TAG_GOLD_TABLE] == gold.path
    assert int(mv.tags[lineage.TAG_GOLD_VERSION]) == max(h["version"] for h in history) == 1
    assert mv.tags[lineage.TAG_SILVER_VERSION] == "5" and mv.tags[lineage.TAG_BRONZE_VERSION] == "2"
    assert set(lineage.GOLD_TAGS) <= set(mv.tags)
    assert (mv.tags[lineage.TAG_METHOD], mv.tags[lineage.TAG_MODEL_FORM]) == ("full", "full")
    assert mv.tags[registry.TAG_SOURCE_RUN] == trained["run_id"]
    assert float(mv.tags["dolly.metric.eval_loss"]) == 9.5
    assert float(mv.tags["dolly.metric.eval_loss_open_qa"]) == 9.25
    assert "dolly.metric.train_loss_last" not in mv.tags


def test_cli_registers_candidate_with_eval_run_metrics(trained, capsys):
    from mlflow import MlflowClient

    argv = [
        "--output-root",
        str(trained["root"]),
        "--run-id",
        trained["run_id"],
        "--alias",
        "candidate",
        "--eval-run-id",
        trained["eval_run_id"],
        "--eval-metrics",
        "eval_bleu",
        "latency_s",
    ]
    assert register_cmd.main(argv) == 0
    assert "models:/dolly@candidate" in capsys.readouterr().out
    client = MlflowClient()
    mv = client.get_model_version_by_alias("dolly", "candidate")
    assert mv.tags["dolly.metric.eval_bleu"] == "0.25" and mv.tags["dolly.metric.latency_s"] == "1.5"
    assert mv.tags["dolly.eval_run_id"] == trained["eval_run_id"]
    assert float(mv.tags["dolly.metric.eval_loss"]) == 9.5  # the train run's eval* metrics stay
    assert {"champion", "candidate"} <= set(client.get_registered_model("dolly").aliases)
    with pytest.raises(KeyError, match="no metrics \\['nope'\\]"):
        registry.metric_tags(trained["eval_run_id"], ("nope",))


def test_run_without_model_fails_naming_the_run(trained):
    with runs.job_run("train", FakeTrainConfig(str(trained["root"]))) as empty:
        pass
    run_id = empty.info.run_id
    with pytest.raises(registry.NoLoggedModelError, match=f"run {run_id} has no logged model named 'model'"):
        registry.register(registry.RegisterConfig(output_root=str(trained["root"]), run_id=run_id))
    with pytest.raises(registry.NoLoggedModelError, match="does not exist"):
        registry.register(registry.RegisterConfig(output_root=str(trained["root"]), run_id="0" * 32))


def test_missing_alias_and_model_fail_clearly(trained):
    experiments.configure(trained["root"])
    registry.register(registry.RegisterConfig(output_root=str(trained["root"]), run_id=trained["run_id"]))
    with pytest.raises(model_uri.AliasNotFoundError, match=r"no alias 'prod'; existing aliases: .*@champion -> v\d"):
        model_uri.load_model_by_alias("models:/dolly@prod")
    with pytest.raises(model_uri.AliasNotFoundError, match="no registered model 'nobody'"):
        model_uri.load_model_by_alias("models:/nobody@champion")
    with pytest.raises(ValueError, match="models:/NAME@ALIAS"):
        model_uri.load_model_by_alias("models:/dolly/1")


def test_evaluate_metrics_tag_the_aliased_version(trained):
    from mlflow import MlflowClient

    result = registry.register(registry.RegisterConfig(output_root=str(trained["root"]), run_id=trained["run_id"]))
    registry.tag_version_metrics(result.model_uri, {"rouge_l": 0.125})
    mv = MlflowClient().get_model_version(result.model_name, str(result.version))
    assert mv.tags["dolly.metric.rouge_l"] == "0.125"
    with pytest.raises(model_uri.AliasNotFoundError):
        registry.tag_version_metrics("models:/dolly@prod", {"x": 1})


def test_model_names_local_and_unity_catalog():
    assert registry.RegisterConfig().resolved_model_name() == "dolly"
    assert registry.RegisterConfig(catalog="main", schema="ml").resolved_model_name() == "main.ml.dolly"
    with pytest.raises(ValueError, match="catalog.schema.model"):
        registry.RegisterConfig(catalog="main", schema="ml", model_name="dolly").resolved_model_name()
    with pytest.raises(ValueError, match="invalid model name"):
        registry.RegisterConfig(model_name="dolly; drop").resolved_model_name()
    with pytest.raises(SystemExit):
        parse_config(registry.RegisterConfig, ["--alias", "prod"], prog="x")


def test_registering_the_alias_holders_own_model_again_passes_the_gate_unmeasured(trained):
    """This fixture's gold has no tokens to measure: a gate that measured would fail here."""
    from mlflow import MlflowClient

    from dolly_spark.tracking import gate

    cfg = registry.RegisterConfig(output_root=str(trained["root"]), run_id=trained["run_id"], model_name="again")
    first = registry.register(cfg)
    again = registry.register(cfg)
    assert first.gate.status == again.gate.status == gate.PASSED
    assert "first model passes" in first.gate.reason and "is this model already" in again.gate.reason
    assert MlflowClient().get_model_version_by_alias("again", "champion").version == again.version
    assert MlflowClient().get_model_version("again", str(again.version)).tags[gate.TAG_GATE] == "passed"
