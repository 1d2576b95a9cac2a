"""Batch scoring: row keys, model resolution, and the Delta -> UDF -> MERGE path on real dolly-15k
prompts (500 eval rows, a registered tiny model, a no-op rerun, SQL over predictions, concurrency)."""

import hashlib
import json
import threading
from pathlib import Path

import pytest
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from dolly_spark.ops import tables
from dolly_spark.serve import score
from dolly_spark.serve.generate import GenerationConfig, generate_responses, load_for_generation
from dolly_spark.serve.score import ScoreConfig
from dolly_spark.text.prompts import format_prompt
from tests.shared_data import DOLLY_JSONL

N_EVAL = 500
MAX_POSITIONS = 512  # the tiny model's context: dolly's longest prompts do not fit and must fail per row


def dolly_records(n: int, skip: int = 0) -> list[dict]:
    out = []
    with open(DOLLY_JSONL) as f:
        for i, line in enumerate(f):
            if i < skip:
                continue
            r = json.loads(line)
            out.append(
                {
                    "record_id": f"dolly-{i}",
                    "category": r["category"],
                    "instruction": r["instruction"],
                    "context": r["context"] or None,
                    "response": r["response"],
                }
            )
            if len(out) == n:
                break
    return out


def gold_like(spark, rows: list[dict], split: str):
    return spark.createDataFrame(
        [{**r, "split": split} for r in rows],
        "record_id string, category string, instruction string, context string, response string, split string",
    )


def expected_key(record_id: str, instruction: str, context: str | None) -> str:
    return hashlib.sha256("\u001f".join([record_id, instruction, context or ""]).encode()).hexdigest()


def test_row_key_is_sha256_of_id_instruction_context(spark):
    df = spark.createDataFrame(
        [("a", "Say hi", None), ("a", "Say hi", ""), ("b", "Say hi", None), ("a", "Say hi", "ctx")],
        "record_id string, instruction string, context string",
    )
    keys = [r["row_key"] for r in score.with_row_key(df).collect()]
    assert keys == [
        expected_key("a", "Say hi", None),
        expected_key("a", "Say hi", ""),
        expected_key("b", "Say hi", None),
        expected_key("a", "Say hi", "ctx"),
    ]
    assert keys[0] == keys[1]  # null and empty context make the same prompt
    assert len(set(keys[1:])) == 3
    no_id = spark.createDataFrame([("Say hi", None)], "instruction string, context string")
    assert score.with_row_key(no_id).first()["row_key"] == expected_key("", "Say hi", None)


def test_read_input_filters_split_drops_training_columns_and_adds_context(spark, tmp_path):
    names = tables.TableNames(root=str(tmp_path))
    tables.write_table(
        spark,
        spark.createDataFrame(
            [("1", "train", "a", 5), ("2", "eval", "b", 6)],
            "record_id string, split string, instruction string, seq_len int",
        ),
        names.gold,
    )
    got = score.read_input(ScoreConfig(output_root=str(tmp_path)), spark, names)
    expected = spark.createDataFrame(
        [("2", "eval", "b", None)], "record_id string, split string, instruction string, context string"
    )
    assertDataFrameEqual(got, expected)
    every = score.read_input(ScoreConfig(output_root=str(tmp_path), split="all"), spark, names)
    assert sorted(r["record_id"] for r in every.collect()) == ["1", "2"]
    tables.write_table(
        spark, spark.createDataFrame([("a", "ref")], "instruction string, response string"), names.silver
    )
    renamed = score.read_input(ScoreConfig(output_root=str(tmp_path), input_table="silver"), spark, names)
    assert renamed.columns == ["instruction", "reference_response", "context"]
    with pytest.raises(tables.InvalidIdentifierError):
        score.read_input(ScoreConfig(output_root=str(tmp_path), input_table="x; DROP TABLE y"), spark, names)


def perturbed_copy(src: Path, dst: Path) -> Path:
    """A copy of the model with one weight tensor changed: a different model version."""
    import shutil

    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    weights = load_file(str(dst / "model.safetensors"))
    name = sorted(weights)[0]
    weights[name] = weights[name] + 1.0
    save_file(weights, str(dst / "model.safetensors"), metadata={"format": "pt"})
    return dst


def test_fingerprint_follows_weights_not_path(tmp_path, tiny_model_dir):
    import shutil

    same = shutil.copytree(tiny_model_dir, tmp_path / "copy")
    changed = perturbed_copy(tiny_model_dir, tmp_path / "changed")
    assert score.fingerprint_dir(tiny_model_dir) == score.fingerprint_dir(same)
    assert score.fingerprint_dir(tiny_model_dir) != score.fingerprint_dir(changed)
    resolved = score.resolve_model(str(same))
    assert resolved.version == f"dir:{score.fingerprint_dir(same)}" and resolved.local_dir == str(same.resolve())
    with pytest.raises(FileNotFoundError):
        score.resolve_model(str(tmp_path / "missing"))


def test_task_device_without_cuda_is_cpu():
    import torch

    if torch.cuda.is_available():
        pytest.skip("checks the CPU fallback")
    assert score.task_device() == "cpu"


def test_staging_table_is_a_validated_sibling(tmp_path):
    local = tables.TableNames(root=str(tmp_path)).predictions
    st = score.staging_ref(local, "abc123")
    assert Path(st.path).parent == Path(local.path).parent and st.name == "predictions__staging_abc123"
    uc = tables.TableNames(catalog="main", schema="dolly").predictions
    assert score.staging_ref(uc, "abc123").name == "main.dolly.predictions__staging_abc123"
    with pytest.raises(tables.InvalidIdentifierError):
        score.staging_ref(local, "bad-id")


@pytest.fixture(scope="module")
def registered(tmp_path_factory, tiny_model_dir):
    """The tiny model logged as the project's pyfunc and registered as dolly_tiny@champion."""
    import mlflow

    from dolly_spark.tracking import models, runs

    root = tmp_path_factory.mktemp("mlflow")
    with runs.job_run("train", {"output_root": str(root)}, output_root=root, engine="test"):
        info = models.log_dolly_model(tiny_model_dir, registered_model_name="dolly_tiny")
    mlflow.MlflowClient().set_registered_model_alias("dolly_tiny", "champion", info.registered_model_version)
    return "models:/dolly_tiny@champion", f"dolly_tiny/{info.registered_model_version}"


@pytest.fixture(scope="module")
def scored_root(spark, tmp_path_factory, registered):
    """500 real eval prompts (and 20 train rows that must be ignored) scored once."""
    root = tmp_path_factory.mktemp("score")
    names = tables.TableNames(root=str(root))
    frame = gold_like(spark, dolly_records(N_EVAL), "eval").unionByName(
        gold_like(spark, dolly_records(20, skip=N_EVAL), "train")
    )
    tables.write_table(spark, frame, names.gold)
    cfg = ScoreConfig(
        model_uri=registered[0],
        output_root=str(root),
        generation=GenerationConfig(greedy=True, max_new_tokens=8, batch_size=32),
    )
    first = score.run(cfg, spark)
    return root, names, cfg, first


def prompt_too_long(tokenizer, rows) -> set[str]:
    return {
        r["record_id"]
        for r in rows
        if len(tokenizer.encode(format_prompt(r["instruction"], r["context"]), add_special_tokens=False))
        >= MAX_POSITIONS
    }


def test_scores_500_eval_prompts_from_the_registered_model(spark, scored_root, registered, tiny_model_dir):
    root, names, cfg, first = scored_root
    assert (first.total, first.scored, first.skipped, first.duplicates) == (N_EVAL, N_EVAL, 0, 0)
    assert first.model_version == registered[1]
    preds = tables.read_table(spark, names.predictions)
    assert preds.count() == N_EVAL
    assert preds.select("row_key", "model_version").distinct().count() == N_EVAL
    assert set(preds.columns) >= {
        "record_id",
        "category",
        "instruction",
        "context",
        "response",
        "split",
        "row_key",
        "prompt_tokens",
        "completion_tokens",
        "finish_reason",
        "error",
        "model_uri",
        "model_version",
        "scored_at",
    }
    # Failed rows: exactly the prompts that do not fit the 512-token window, each with an error.
    _, tok = load_for_generation(str(tiny_model_dir))
    too_long = prompt_too_long(tok, dolly_records(N_EVAL))
    assert too_long, "the sample should include prompts longer than the tiny model's context"
    failed = {r["record_id"]: r for r in preds.filter(F.col("error").isNotNull()).collect()}
    assert set(failed) == too_long and first.failed == len(too_long)
    assert all(r["error"].startswith("prompt_too_long") and r["response"] is None for r in failed.values())
    ok = preds.filter(F.col("error").isNull())
    assert ok.filter(~F.col("finish_reason").isin("end_key", "length")).count() == 0
    assert ok.filter((F.col("completion_tokens") < 1) | (F.col("completion_tokens") > 8)).count() == 0


def test_udf_output_equals_in_process_generation(spark, scored_root, tiny_model_dir):
    _, names, _, _ = scored_root
    rows = dolly_records(12)
    model, tok = load_for_generation(str(tiny_model_dir))
    direct = generate_responses(
        model,
        tok,
        [r["instruction"] for r in rows],
        [r["context"] for r in rows],
        GenerationConfig(greedy=True, max_new_tokens=8, batch_size=5),
    )
    got = {
        r["record_id"]: r
        for r in tables.read_table(spark, names.predictions)
        .filter(F.col("record_id").isin([r["record_id"] for r in rows]))
        .collect()
    }
    for r, d in zip(rows, direct):
        p = got[r["record_id"]]
        assert (p["response"], p["prompt_tokens"], p["completion_tokens"], p["finish_reason"]) == (
            d["response"],
            d["prompt_tokens"],
            d["completion_tokens"],
            d["finish_reason"],
        )


def test_rerun_is_a_noop(spark, scored_root):
    _, names, cfg, first = scored_root
    again = score.run(cfg, spark)
    assert (again.scored, again.skipped, again.total) == (0, N_EVAL, N_EVAL)
    assert again.predictions_version == first.predictions_version == tables.table_version(spark, names.predictions)
    assert tables.read_table(spark, names.predictions).count() == N_EVAL


def test_sql_over_predictions_by_name(spark, scored_root):
    _, names, _, first = scored_root
    tables.register_table(spark, names.predictions)
    by_cat = spark.sql(
        "SELECT category, count(*) AS n, sum(completion_tokens) AS tokens FROM predictions "
        "WHERE split = 'eval' GROUP BY category"
    )
    counts = {r["category"]: r["n"] for r in by_cat.collect()}
    expected: dict[str, int] = {}
    for r in dolly_records(N_EVAL):
        expected[r["category"]] = expected.get(r["category"], 0) + 1
    assert counts == expected
    failed = spark.sql("SELECT count(*) AS n FROM predictions WHERE error IS NOT NULL").first()["n"]
    assert failed == first.failed


def test_only_new_rows_and_new_model_versions_are_scored(spark, scored_root, tmp_path, tiny_model_dir):
    root, names, cfg, _ = scored_root
    extra = gold_like(spark, dolly_records(7, skip=2000), "eval")
    tables.write_table(spark, extra, names.gold, mode="append")
    more = score.run(cfg, spark)
    assert (more.scored, more.skipped, more.total) == (7, N_EVAL, N_EVAL + 7)
    other = perturbed_copy(tiny_model_dir, tmp_path / "other")
    limited = ScoreConfig(
        model_uri=str(other),
        output_root=str(root),
        generation=GenerationConfig(greedy=True, max_new_tokens=4),
        limit=30,
    )
    res = score.run(limited, spark)
    assert (res.scored, res.total) == (30, 30) and res.model_version.startswith("dir:")
    preds = tables.read_table(spark, names.predictions)
    assert preds.count() == N_EVAL + 7 + 30
    assert preds.filter(F.col("model_version") == res.model_version).count() == 30
    # limit picks the first rows by row_key, so a rerun sees the same 30 and does nothing
    assert score.run(limited, spark).scored == 0


def test_duplicate_prompts_without_ids_are_scored_once(spark, tmp_path, tiny_model_dir):
    names = tables.TableNames(root=str(tmp_path))
    tables.write_table(
        spark,
        spark.createDataFrame(
            [("Name a color", None), ("Name a color", ""), ("Name a fruit", "x")], "instruction string, context string"
        ),
        names.silver,
    )
    cfg = ScoreConfig(
        model_uri=str(tiny_model_dir),
        input_table="silver",
        output_root=str(tmp_path),
        generation=GenerationConfig(greedy=True, max_new_tokens=3),
    )
    res = score.run(cfg, spark)
    assert (res.total, res.duplicates, res.scored, res.skipped) == (3, 1, 2, 0)
    assert tables.read_table(spark, names.predictions).count() == 2


def test_concurrent_jobs_on_overlapping_input_do_not_duplicate(spark, tmp_path, tiny_model_dir):
    names = tables.TableNames(root=str(tmp_path))
    rows = dolly_records(40, skip=3000)
    tables.write_table(spark, gold_like(spark, rows[:30], "eval"), names.gold)
    tables.write_table(spark, gold_like(spark, rows[10:], "eval"), names.silver)
    base = dict(
        model_uri=str(tiny_model_dir),
        output_root=str(tmp_path),
        generation=GenerationConfig(greedy=True, max_new_tokens=3),
    )
    results, errors = {}, []

    def job(table):
        try:
            results[table] = score.run(ScoreConfig(input_table=table, **base), spark)
        except Exception as err:  # surfaced below
            errors.append(err)

    threads = [threading.Thread(target=job, args=(t,)) for t in ("gold", "silver")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    preds = tables.read_table(spark, names.predictions)
    assert preds.count() == 40 == preds.select("row_key").distinct().count()
    assert results["gold"].scored + results["silver"].scored == 40
    assert all(r.scored + r.skipped == 30 for r in results.values())


def test_spark_udf_mode_matches_pandas_iter(spark, tmp_path, registered):
    rows = dolly_records(10, skip=100)
    by_mode = {}
    for mode in score.UDF_MODES:
        names = tables.TableNames(root=str(tmp_path / mode))
        tables.write_table(spark, gold_like(spark, rows, "eval"), names.gold)
        cfg = ScoreConfig(
            model_uri=registered[0],
            output_root=str(tmp_path / mode),
            generation=GenerationConfig(greedy=True, max_new_tokens=5),
            udf_mode=mode,
        )
        assert score.run(cfg, spark).scored == 10
        by_mode[mode] = {
            r["record_id"]: (r["response"], r["completion_tokens"], r["finish_reason"])
            for r in tables.read_table(spark, names.predictions).collect()
        }
    assert by_mode["spark_udf"] == by_mode["pandas_iter"]
    assert len(by_mode["pandas_iter"]) == 10


def test_length_buckets_cap_batch_size_and_padding():
    from dolly_spark.serve.generate import length_buckets

    lens = [3, 4, 5, 40, 60, 70, 500, 900, 1000]
    encoded = [(i, [0] * n) for i, n in enumerate(lens)]
    got = [[len(ids) for _, ids in b] for b in length_buckets(encoded, batch_size=2)]
    assert got == [[3, 4], [5, 40], [60, 70], [500, 900], [1000]]
    got = [[len(ids) for _, ids in b] for b in length_buckets(encoded, batch_size=8)]
    assert got == [[3, 4, 5, 40, 60], [70], [500, 900, 1000]]
    assert sorted(i for b in length_buckets(encoded, 3) for i, _ in b) == list(range(len(lens)))


def test_unknown_alias_is_a_clear_error(registered):
    from dolly_spark.serve.model_uri import AliasNotFoundError

    with pytest.raises(AliasNotFoundError, match="champion"):
        score.resolve_model("models:/dolly_tiny@nope")
    resolved = score.resolve_model(registered[0])
    assert resolved.version == registered[1] and resolved.pyfunc_uri == f"models:/{registered[1]}"


def test_stale_staging_tables_of_killed_runs_are_removed(spark, tmp_path):
    import os
    import time as _time

    from dolly_spark.ops import tables as _tables
    from dolly_spark.serve.score import remove_stale_staging, staging_ref

    target = _tables.TableNames(root=str(tmp_path)).predictions
    old, fresh = staging_ref(target, "oldrun"), staging_ref(target, "freshrun")
    for ref in (old, fresh):
        _tables.write_table(spark, spark.createDataFrame([(1,)], "x int"), ref)
    week_ago = _time.time() - 7 * 24 * 3600
    for p in [*Path(old.path).rglob("*"), Path(old.path)]:
        os.utime(p, (week_ago, week_ago))
    assert remove_stale_staging(spark, target, older_than_hours=6) == [old.name]
    assert not Path(old.path).exists() and Path(fresh.path).exists()
