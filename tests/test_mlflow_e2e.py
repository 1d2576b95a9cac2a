"""Local end to end: train the tiny model on a gold table from real dolly-15k records, log it with
lineage inside the train job's run, register it, load it back by alias and generate for a
DataFrame of instructions."""

import pandas as pd
import pytest

from dolly_spark.ops import tables
from dolly_spark.serve import model_uri
from dolly_spark.text.prompts import END_KEY
from dolly_spark.tracking import lineage, models, registry, runs
from tests.shared_data import DOLLY_JSONL, TOKENIZER_DIR


@pytest.fixture(autouse=True)
def no_env_overrides(monkeypatch):
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "DATABRICKS_RUNTIME_VERSION", runs.PARENT_RUN_ENV):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("DOLLY_TOKENIZER", str(TOKENIZER_DIR))


def test_train_log_register_load_by_alias_generate(spark, tmp_path):
    from mlflow import MlflowClient

    from dolly_spark.launch import launcher as launch
    from tests.train_fixtures import gold_rows, tiny_train_config, write_gold

    rows = gold_rows(DOLLY_JSONL, TOKENIZER_DIR, n=24, max_tokens=128, max_seq_len=256)
    write_gold(spark, tmp_path, rows[:12])
    gold_version = write_gold(spark, tmp_path, rows)  # version 1: lineage must not say 0
    cfg = tiny_train_config(str(tmp_path), str(TOKENIZER_DIR))

    # What the train job does: its run holds per-step metrics, lineage and the model.
    with runs.job_run("train", cfg, engine="sail") as run:
        result = launch.run(cfg, spark)
        info = models.log_training_run(cfg, result, spark=spark, names=cfg.table_names())
    assert result.final_step == 2 and result.gold_version == gold_version == 1

    registered = registry.register(registry.RegisterConfig(output_root=str(tmp_path)))
    assert registered.run_id == run.info.run_id and registered.model_uri == "models:/dolly@champion"

    # The version leads back to gold@version, checked against the table's own history.
    mv = MlflowClient().get_model_version_by_alias("dolly", "champion")
    gold = cfg.table_names().gold
    assert mv.tags[lineage.TAG_GOLD_TABLE] == gold.path
    assert int(mv.tags[lineage.TAG_GOLD_VERSION]) == max(h["version"] for h in tables.table_history(gold))
    assert int(mv.tags[lineage.TAG_GOLD_VERSION]) == tables.table_version(spark, gold)
    assert mv.tags[lineage.TAG_SILVER_VERSION] == "3"  # what the gold rows say they came from
    assert float(mv.tags["dolly.metric.eval_loss"]) == pytest.approx(result.eval_loss)
    assert info.model_uri.startswith("models:/m-")

    model = model_uri.load_model_by_alias(registered.model_uri)
    instructions = pd.DataFrame(
        {"instruction": ["What is Apache Spark?", "Name three colors.", ""], "context": [None, "", None]}
    )
    out = model.predict(instructions, params={"max_new_tokens": 8, "seed": 0})
    assert len(out) == 3 and list(out.columns) == [
        "response",
        "prompt_tokens",
        "completion_tokens",
        "finish_reason",
        "error",
    ]
    ok = out.iloc[:2]
    assert ok["error"].isna().all() and ok["finish_reason"].isin(["end_key", "length"]).all()
    assert (ok["completion_tokens"] <= 8).all() and (ok["prompt_tokens"] > 0).all()
    assert not ok["response"].str.contains(END_KEY, regex=False).any()
    assert out.loc[2, "error"] == "empty_instruction"

    with pytest.raises(model_uri.AliasNotFoundError, match="existing aliases: @champion"):
        model_uri.load_model_by_alias("models:/dolly@candidate")
