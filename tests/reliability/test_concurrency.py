"""Concurrent writers to ``predictions``: separate processes (separate engines, as two Databricks
jobs would be), overlapping input, the same model version. Delta's optimistic commit rejects the
loser of a race ("Failed to commit transaction"); ``score.merge_new_rows`` retries, re-reading the
table, so rows the winner inserted are matched rather than inserted twice."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter

import pytest

from dolly_spark.ops import tables
from tests.reliability import helpers
from tests.tiny_model import save_tiny_model


def _prompts(n: int) -> list[tuple]:
    corpus = helpers.load_corpus_module()
    return [(f"rec-{i:03d}", corpus.good("concurrency", i)["instruction"], None, "eval") for i in range(n)]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("tiny_model") / "model", seed=3, max_positions=256)


def _predictions(root) -> list[dict]:
    return helpers.read_rows(helpers.existing_tables(root)["predictions"])


def _score_jobs(spark, root, tiny_model, inputs: dict[str, list[tuple]], logs) -> dict[str, str]:
    names = tables.TableNames(root=str(root))
    for logical, rows in inputs.items():
        tables.write_table(
            spark,
            spark.createDataFrame(rows, "record_id string, instruction string, context string, split string"),
            names.ref(logical),
        )
    procs = {
        logical: helpers.start(
            [
                "score",
                "--model-uri",
                str(tiny_model),
                "--input-table",
                logical,
                "--output-root",
                str(root),
                "--greedy",
                "--max-new-tokens",
                "2",
                "--batch-size",
                "8",
                "--split",
                "eval",
            ],
            logs / f"score_{logical}.log",
        )
        for logical in inputs
    }
    out = {}
    for logical, p in procs.items():
        p.wait(timeout=300)
        out[logical] = (logs / f"score_{logical}.log").read_text(errors="replace")
        assert p.returncode == 0, f"score on {logical} failed:\n{out[logical][-4000:]}"
    return out


def test_two_jobs_starting_on_a_fresh_root_both_set_up_tracking(tmp_path):
    procs = [helpers.start_configure_tracking(tmp_path / "root") for _ in range(2)]
    outs = [p.communicate(timeout=180)[0].decode(errors="replace") for p in procs]
    failed = [out for p, out in zip(procs, outs) if p.returncode != 0]
    assert not failed, failed[0][-3000:]  # both migrating at once fails with alembic/sqlite errors


def test_two_score_jobs_on_overlapping_input_write_each_row_once(spark, tmp_path, tiny_model):
    # The tracking store exists first (its set-up race is the test above): this test is about predictions.
    helpers.init_tracking_store(tmp_path / "root")
    rows = _prompts(40)
    logs = _score_jobs(spark, tmp_path / "root", tiny_model, {"gold": rows[:30], "silver": rows[10:]}, tmp_path)
    preds = _predictions(tmp_path / "root")
    keys = Counter((r["row_key"], r["model_version"]) for r in preds)
    assert not [k for k, n in keys.items() if n > 1], "duplicate predictions"
    assert sorted(r["record_id"] for r in preds) == [r[0] for r in rows]
    assert len({r["model_version"] for r in preds}) == 1
    # Each job reports what it inserted and skipped: together exactly the 40 distinct rows.
    scored = [
        int(line.split("scored")[1].split()[0])
        for log in logs.values()
        for line in log.splitlines()
        if line.startswith("input ")
    ]
    assert len(scored) == 2 and sum(scored) == 40, scored


def test_merge_retry_under_real_commit_contention(spark, tmp_path):
    """Two processes MERGE the same keys at the same moments, 8 rounds: every key lands once, and the
    inserted counts the two report add up to the rows in the table."""
    root = tmp_path / "root"
    names = tables.TableNames(root=str(root))
    tables.write_table(
        spark, spark.createDataFrame([], "row_key string, model_version string, writer string"), names.predictions
    )
    start = time.time() + 12  # both engines up before round 0
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.reliability.merge_worker", str(root), w, str(start)],
            cwd=helpers.REPO,
            env=helpers.subprocess_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for w in ("a", "b")
    ]
    outs = [p.communicate(timeout=240)[0].decode(errors="replace") for p in procs]
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-4000:]
    results = [json.loads(line) for out in outs for line in out.splitlines() if line.startswith('{"writer"')]
    preds = _predictions(root)
    keys = Counter(r["row_key"] for r in preds)
    assert not [k for k, n in keys.items() if n > 1], "duplicate predictions"
    assert sorted(keys) == [f"k{j:03d}" for j in range(45)]
    assert sum(sum(r["inserted"]) for r in results) == 45
    retries = sum(out.count("conflicted") for out in outs)
    print(f"MERGE conflicts retried: {retries}")
