"""Scoring in committed chunks: a run that dies after chunk k keeps chunks 0..k, and the rerun
scores only the rest, so every row ends up scored once (none lost, none duplicated)."""

from pathlib import Path

import pytest
from pyspark.sql import functions as F

from dolly_spark.ops import tables
from dolly_spark.serve import score
from dolly_spark.serve.generate import GenerationConfig
from dolly_spark.serve.score import ScoreConfig

N = 40


class Killed(RuntimeError):
    pass


def write_input(spark, root: Path) -> None:
    rows = [(f"rec-{i:03d}", f"Name thing number {i}", None if i % 3 else f"ctx {i}") for i in range(N)]
    df = spark.createDataFrame(rows, "record_id string, instruction string, context string")
    tables.write_table(spark, df, tables.TableNames(root=str(root)).gold)


def config(root: Path, model_dir, **kw) -> ScoreConfig:
    base = dict(
        model_uri=str(model_dir),
        output_root=str(root),
        split="all",
        generation=GenerationConfig(greedy=True, max_new_tokens=2, batch_size=8),
    )
    return ScoreConfig(**{**base, **kw})


def responses(spark, root: Path) -> dict[str, str]:
    preds = tables.read_table(spark, tables.TableNames(root=str(root)).predictions)
    return {r["record_id"]: r["response"] for r in preds.select("record_id", "response").collect()}


@pytest.fixture(scope="module")
def clean(spark, tmp_path_factory, tiny_model_dir):
    """The same rows scored in one chunk: the reference every chunked run must equal."""
    root = tmp_path_factory.mktemp("clean")
    write_input(spark, root)
    res = score.run(config(root, tiny_model_dir), spark)
    assert res.chunks == 1 and res.scored == N
    return responses(spark, root)


def test_failure_after_chunk_k_keeps_committed_chunks_and_rerun_scores_the_rest_once(
    spark, tmp_path, tiny_model_dir, clean
):
    write_input(spark, tmp_path)
    committed = []

    def die_after_second(k, inserted):
        committed.append(inserted)
        if len(committed) == 2:
            raise Killed(f"injected failure after chunk {k}")

    cfg = config(tmp_path, tiny_model_dir, chunk_rows=10, num_partitions=3)
    with pytest.raises(Killed):
        score.run(cfg, spark, after_chunk=die_after_second)
    kept = sum(committed)
    preds = tables.read_table(spark, tables.TableNames(root=str(tmp_path)).predictions)
    assert 0 < kept < N and preds.count() == kept == preds.select("row_key").distinct().count()
    leftovers = [p.name for p in tmp_path.joinpath("tables").iterdir() if "__staging_" in p.name]
    assert leftovers == [], "the pending and chunk staging tables are dropped on failure"

    rerun = score.run(cfg, spark)
    assert (rerun.scored, rerun.skipped) == (N - kept, kept), "committed chunks are not generated again"
    assert rerun.chunks >= 1
    got = responses(spark, tmp_path)
    preds = tables.read_table(spark, tables.TableNames(root=str(tmp_path)).predictions)
    assert preds.count() == N == preds.select("row_key", "model_version").distinct().count()
    assert got == clean, "chunked, killed and rerun scoring equals one clean run"
    assert score.run(cfg, spark).scored == 0  # nothing left: a no-op


def test_every_chunk_is_its_own_commit_and_throughput_is_reported(spark, tmp_path, tiny_model_dir, clean):
    write_input(spark, tmp_path)
    res = score.run(config(tmp_path, tiny_model_dir, chunk_rows=8), spark)
    ref = tables.TableNames(root=str(tmp_path)).predictions
    # version 0 is the empty create; then one MERGE per non-empty chunk.
    assert res.chunks >= 3 and res.predictions_version == res.chunks
    assert res.scored == N and responses(spark, tmp_path) == clean
    assert res.rows_per_s > 0 and res.tokens_per_s > 0 and res.prompt_tokens_per_s > res.tokens_per_s
    failed = tables.read_table(spark, ref).filter(F.col("error").isNotNull()).count()
    assert res.failed == failed


def test_the_command_logs_and_prints_throughput(tmp_path, monkeypatch):
    from mlflow import MlflowClient

    from dolly_spark.commands import score as score_cmd
    from dolly_spark.tracking import runs

    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "DATABRICKS_RUNTIME_VERSION", runs.PARENT_RUN_ENV):
        monkeypatch.delenv(var, raising=False)
    result = score.ScoreResult(
        30, 0, 1, 30, 4, "m", "dir:x", chunks=3, generate_seconds=2.0, rows_per_s=15.0, tokens_per_s=45.0
    )
    monkeypatch.setattr(score_cmd.scoring, "run", lambda cfg, spark: result)
    cfg = ScoreConfig(model_uri="m", output_root=str(tmp_path))
    assert score_cmd.run(cfg, spark=None) is result
    run = MlflowClient().search_runs([MlflowClient().get_experiment_by_name("dolly_spark").experiment_id])[0]
    assert run.data.metrics["score_rows_per_s"] == 15.0 and run.data.metrics["score_tokens_per_s"] == 45.0
    assert run.data.metrics["score_chunks"] == 3
    assert "15.0 rows/s, 45.0 generated tokens/s" in score_cmd.format_summary(result)
