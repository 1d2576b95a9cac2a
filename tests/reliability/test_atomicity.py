"""SIGKILL during writes: every table is at the old version or the new one, never partial, and a
rerun reaches exactly the state of a clean run.

Two inputs (A: the bad-input corpus, B: the first 600 real dolly records plus a near-duplicate
pair) alternate as the target, so each kill interrupts a run that would change every table. The
kill lands at a random moment after the job's first file write, within the time a clean run of
that input takes.
The default run kills 3 times; the ``slow`` variant adds 7 more (10 in all).
"""

from __future__ import annotations

import random
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest

from dolly_spark.prep.prepare import PrepareConfig, run
from tests.reliability import helpers
from tests.shared_data import DOLLY_JSONL

corpus_mod = helpers.load_corpus_module()


@dataclass
class Target:
    input: str
    quarantine_commits: int  # commits one fresh run made to quarantine (1 when the run is atomic)
    snapshot: dict[str, Counter]  # table -> rows of a clean run
    seconds: float  # how long a clean in-process run of it took: the write window


@pytest.fixture(scope="module")
def targets(spark, tmp_path_factory) -> dict[str, Target]:
    base = tmp_path_factory.mktemp("atomicity_inputs").resolve()
    corpus = base / "corpus"
    corpus_mod.write_corpus(corpus, include_large=False)
    real = base / "dolly_head" / "head.jsonl"
    real.parent.mkdir()
    with open(DOLLY_JSONL, "rb") as src:
        head = b"".join(src.readline() for _ in range(600))
    # plus a near-duplicate pair, so the dedup stage has work to do
    near = corpus_mod.DEFAULT_OUT / "near_duplicates" / "data.jsonl"
    real.write_bytes(head + near.read_bytes())
    out = {}
    for name, inp in (("A", corpus), ("B", real.parent)):
        root = base / f"clean_{name}"
        t0 = time.time()
        run(PrepareConfig(input=str(inp), output_root=str(root)), spark)
        out[name] = Target(str(inp), 0, helpers.snapshot(root), time.time() - t0)
        out[name].quarantine_commits = helpers.commits_per_run(root, "quarantine")
        helpers.assert_accounted(root)
    assert out["A"].snapshot["bronze"] != out["B"].snapshot["bronze"]
    return out


def _metrics_runs_complete(root) -> None:
    """metrics is append-only: every run id it holds has one row per stage (a whole commit)."""
    t = helpers.existing_tables(root)
    if "metrics" not in t:
        return
    per_run = Counter(r["run_id"] for r in helpers.read_rows(t["metrics"]))
    stages = Counter(per_run.values())
    assert len(stages) == 1, f"metrics holds runs with different stage counts: {per_run}"


def _assert_each_table_old_or_new(root, old: Target, new: Target, where: str) -> dict[str, str]:
    state = {}
    now = helpers.snapshot(root)
    assert set(now) == set(old.snapshot), f"{where}: tables {sorted(now)} != {sorted(old.snapshot)}"
    for name, rows in now.items():
        if rows == old.snapshot[name]:
            state[name] = "old"
        elif rows == new.snapshot.get(name):
            state[name] = "new"
        else:
            pytest.fail(
                f"{where}: table {name} is neither the old nor the new version "
                f"({sum(rows.values())} rows; old {sum(old.snapshot[name].values())}, "
                f"new {sum(new.snapshot[name].values())})"
            )
    _metrics_runs_complete(root)
    return state


def kill_loop(spark, targets: dict[str, Target], root: Path, logs: Path, iterations: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    run(PrepareConfig(input=targets["A"].input, output_root=str(root)), spark)
    helpers.init_tracking_store(root)  # its own kill test: test_kill_during_tracking_store_creation
    current = "A"
    report = []
    for i in range(iterations):
        nxt = "B" if current == "A" else "A"
        old, new = targets[current], targets[nxt]
        window = max(new.seconds, 0.5)
        for attempt in range(4):
            delay = rng.uniform(0.0, window) / (2**attempt)
            before = helpers.count_files(root)
            proc = helpers.start(
                ["prepare", "--input", new.input, "--output-root", str(root)], logs / f"kill_{seed}_{i}_{attempt}.log"
            )
            first_write = helpers.wait_for_file_count_change(root, before, proc)
            time.sleep(max(0.0, delay - (time.time() - first_write)))
            finished_first = proc.poll() is not None
            helpers.kill_group(proc)
            if not finished_first:
                break
            # The job beat the kill: the tables must simply be new; try again sooner.
            assert proc.returncode == 0, (logs / f"kill_{seed}_{i}_{attempt}.log").read_text()[-3000:]
            assert helpers.snapshot(root) == new.snapshot
            old, new, current, nxt = new, old, nxt, current
        else:
            pytest.fail(f"iteration {i}: the job finished before every kill attempt")
        assert proc.returncode == -9
        where = f"seed {seed} iteration {i}: killed {delay:.2f}s after its first write"
        state = _assert_each_table_old_or_new(root, old, new, where)
        # Rerun to completion: exactly the clean run's state, every row accounted for.
        run(PrepareConfig(input=new.input, output_root=str(root)), spark)
        assert helpers.snapshot(root) == new.snapshot, f"{where}: rerun differs from a clean run"
        helpers.assert_accounted(root)
        _metrics_runs_complete(root)
        report.append({"delay": round(delay, 2), **state})
        current = nxt
    return report


def test_prepare_sigkill_3_times_then_rerun(spark, targets, tmp_path):
    report = kill_loop(spark, targets, tmp_path / "work", tmp_path, iterations=3, seed=1)
    print("kill states:", report)
    assert len(report) == 3


@pytest.mark.slow
def test_prepare_sigkill_7_more_times_then_rerun(spark, targets, tmp_path):
    report = kill_loop(spark, targets, tmp_path / "work", tmp_path, iterations=7, seed=2)
    print("kill states:", report)
    assert len(report) == 7
    # Over 10 kills, at least one must have landed mid-job (some table not yet new).
    assert any("old" in r.values() for r in report)


# --- score ----------------------------------------------------------------------------------

SCORE_ARGS = ["--input-table", "gold", "--greedy", "--max-new-tokens", "2", "--batch-size", "8", "--split", "all"]


def _predictions(root) -> Counter:
    return helpers.table_content(helpers.existing_tables(root)["predictions"])


def _score_rows(n: int) -> list[tuple]:
    return [(f"rec-{i:03d}", corpus_mod.good("score_atomicity", i)["instruction"], None) for i in range(n)]


def _write_gold_input(spark, root, rows) -> None:
    from dolly_spark.ops import tables

    df = spark.createDataFrame(rows, "record_id string, instruction string, context string")
    tables.write_table(spark, df, tables.TableNames(root=str(root)).gold)


def _score_in_process(spark, root, model_dir):
    from dolly_spark.serve import score
    from dolly_spark.serve.generate import GenerationConfig

    cfg = score.ScoreConfig(
        model_uri=str(model_dir),
        output_root=str(root),
        input_table="gold",
        generation=GenerationConfig(greedy=True, max_new_tokens=2, batch_size=8),
        split="all",
    )
    return score.run(cfg, spark)


def score_kill_loop(spark, model_dir, root: Path, logs: Path, iterations: int, seed: int) -> list[str]:
    """Each iteration adds 6 input rows, kills a score job mid-write, checks predictions is at the
    old or new version, reruns, and compares with a clean run over the same rows."""
    rng = random.Random(seed)
    rows = _score_rows(6 * (2 * iterations + 4))
    clean = root.parent / f"clean_{seed}"
    _write_gold_input(spark, clean, rows)
    _score_in_process(spark, clean, model_dir)
    reference = {
        r["record_id"]: helpers._canonical(r) for r in helpers.read_rows(helpers.existing_tables(clean)["predictions"])
    }
    expected = lambda n: Counter(reference[r[0]] for r in rows[:n])  # noqa: E731

    n_cur = 6
    helpers.init_tracking_store(root)  # its own kill test: test_kill_during_tracking_store_creation
    _write_gold_input(spark, root, rows[:n_cur])
    _score_in_process(spark, root, model_dir)
    assert _predictions(root) == expected(n_cur)
    states = []
    for i in range(iterations):
        for attempt in range(4):
            n_new = n_cur + 6
            _write_gold_input(spark, root, rows[:n_new])
            before = helpers.count_files(root)
            log = logs / f"score_kill_{seed}_{i}_{attempt}.log"
            proc = helpers.start(["score", "--model-uri", str(model_dir), "--output-root", str(root), *SCORE_ARGS], log)
            first_write = helpers.wait_for_file_count_change(root, before, proc, timeout=300)
            delay = rng.uniform(0.0, 1.5) / (2**attempt)
            time.sleep(max(0.0, delay - (time.time() - first_write)))
            finished_first = proc.poll() is not None
            helpers.kill_group(proc)
            if not finished_first:
                break
            # The job beat the kill: it must have completed; add rows and try again sooner.
            assert proc.returncode == 0, log.read_text()[-3000:]
            assert _predictions(root) == expected(n_new)
            n_cur = n_new
        else:
            pytest.fail(f"iteration {i}: the score job finished before every kill attempt")
        now = _predictions(root)
        state = "old" if now == expected(n_cur) else "new" if now == expected(n_new) else None
        assert state, (
            f"seed {seed} iteration {i}: predictions is neither old ({n_cur} rows) nor new "
            f"({n_new}); has {sum(now.values())}"
        )
        _score_in_process(spark, root, model_dir)
        assert _predictions(root) == expected(n_new), f"iteration {i}: rerun differs from a clean run"
        states.append(state)
        n_cur = n_new
    return states


@pytest.fixture(scope="module")
def score_model(tmp_path_factory):
    from tests.tiny_model import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("score_model") / "model", seed=5, max_positions=256)


def test_score_sigkill_3_times_then_rerun(spark, score_model, tmp_path):
    states = score_kill_loop(spark, score_model, tmp_path / "work", tmp_path, iterations=3, seed=11)
    print("predictions after each kill:", states)
    assert len(states) == 3


@pytest.mark.slow
def test_score_sigkill_7_more_times_then_rerun(spark, score_model, tmp_path):
    states = score_kill_loop(spark, score_model, tmp_path / "work", tmp_path, iterations=7, seed=12)
    print("predictions after each kill:", states)
    assert len(states) == 7


# --- the local MLflow store ------------------------------------------------------------------


def test_kill_during_tracking_store_creation_leaves_it_usable(tmp_path):
    """Every tracked job creates ROOT/mlflow.db on first use; a kill then must not break the next job."""
    rng = random.Random(21)
    for i in range(3):
        root = tmp_path / f"root{i}"
        root.mkdir()
        proc = helpers.start_configure_tracking(root)
        helpers.wait_for_file_count_change(root, 0, proc, timeout=120)
        time.sleep(rng.uniform(0.0, 0.5))
        helpers.kill_group(proc)
        again = helpers.start_configure_tracking(root)
        out = again.communicate(timeout=180)[0].decode(errors="replace")
        assert again.returncode == 0, out[-3000:]  # a half-built store fails with alembic/sqlite errors
