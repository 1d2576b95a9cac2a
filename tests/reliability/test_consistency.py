"""Cross-table consistency of ``prepare``.

Readers pin the table versions of the last completed run (the ``manifest`` table, written
last), partial reruns (``--until``) never break the accounting of what readers see, a second
prepare on one root fails at once, and a killed run's leftovers (dedup work dirs, MLflow runs
stuck in RUNNING) are cleaned by the next run.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dolly_spark.prep import stages
from dolly_spark.prep.prepare import PrepareConfig, run
from tests.reliability import helpers
from tests.shared_data import DOLLY_JSONL

corpus_mod = helpers.load_corpus_module()


def _head(tmp_path: Path, n: int) -> Path:
    src = tmp_path / f"head{n}" / "head.jsonl"
    src.parent.mkdir(parents=True, exist_ok=True)
    with open(DOLLY_JSONL, "rb") as f:
        src.write_bytes(b"".join(f.readline() for _ in range(n)))
    return src


def _latest_rows(root, table: str) -> int:
    return len(helpers.read_rows(helpers.existing_tables(root)[table]))


def test_partial_reruns_keep_the_accounting_of_what_readers_see(spark, tmp_path):
    """`--until silver` on a prepared root used to rewrite quarantine without gold's rejects:
    8 of 2,000 records ended in no table. Now a partial run commits the tables it wrote and
    empties the later stages' ones (built from the old silver), at every stop."""
    src, root = _head(tmp_path, 2000), tmp_path / "out"
    names = PrepareConfig(output_root=str(root)).table_names()
    run(PrepareConfig(input=str(src), output_root=str(root)), spark)
    full = helpers.assert_accounted(root)
    assert "gold" in full and any(
        r["stage"] == "gold" for r in helpers.read_rows(helpers.existing_tables(root)["quarantine"])
    ), "the input must have gold-stage rejects, or the bug cannot show"

    for until, final in (("silver", "silver"), ("dedup", "candidates"), ("bronze", "bronze"), ("gold", "gold")):
        run(PrepareConfig(input=str(src), output_root=str(root), until=until), spark)
        assert final in helpers.assert_accounted(root)
        # The latest versions on disk (what a by-name SQL query sees) are a partition too.
        latest = {t: _latest_rows(root, t) for t in ("bronze", "quarantine", "duplicates", "gold", final)}
        assert latest["bronze"] == latest[final] + latest["quarantine"] + latest["duplicates"], (until, latest)
        from dolly_spark.ops import manifest

        if until != "gold":
            assert latest["gold"] == 0, f"--until {until} left stale gold rows in place"
            with pytest.raises(manifest.NotCommittedError, match=f"--until {until}"):
                manifest.read_committed(spark, names, "gold")
        else:
            assert manifest.read_committed(spark, names, "gold").count() == len(full["gold"])


def test_failed_run_leaves_readers_on_the_previous_consistent_set(spark, tmp_path, monkeypatch):
    """A run that dies after bronze, silver and dedup were rewritten (here: gold raises) leaves
    new bronze next to old gold. Readers still see the old run's tables as a whole, and the next
    run says the last one did not complete."""
    corpus = tmp_path / "corpus"
    corpus_mod.write_corpus(corpus, include_large=False)
    other, root = _head(tmp_path, 300), tmp_path / "out"
    names = PrepareConfig(output_root=str(root)).table_names()
    run(PrepareConfig(input=str(corpus), output_root=str(root)), spark)
    old = {t: helpers.table_content(p) for t, p in helpers.existing_tables(root).items() if t != "manifest"}
    old_gold_version = helpers.delta_version(helpers.existing_tables(root)["gold"])

    def boom(*a, **k):
        raise RuntimeError("simulated crash in the gold stage")

    monkeypatch.setattr(stages, "write_gold", boom)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(PrepareConfig(input=str(other), output_root=str(root)), spark)
    monkeypatch.undo()
    t = helpers.existing_tables(root)
    assert helpers.table_content(t["bronze"]) != old["bronze"], "the failed run must have rewritten bronze"

    helpers.assert_accounted(root)  # at the pinned versions: the old run, whole
    from dolly_spark.ops import manifest
    from dolly_spark.prep import report

    pinned = helpers.committed_versions(root)
    for table in ("bronze", "silver", "quarantine", "duplicates", "gold"):
        assert helpers.table_content(t[table], pinned[table]) == old[table], table
    assert manifest.pinned_version(spark, names, "gold") == old_gold_version  # what train stages
    note = manifest.status_line(spark, names)
    assert note and "did not complete" in note
    summary = report.summary_markdown(spark, names, report.category_counts(spark, names), [])
    assert "did not complete" in summary
    assert sum(report.category_counts(spark, names)["bronze"].values()) == sum(old["bronze"].values())

    run(PrepareConfig(input=str(other), output_root=str(root)), spark)
    helpers.assert_accounted(root)
    assert manifest.status_line(spark, names) is None
    assert sum(helpers.table_content(t["bronze"], helpers.committed_versions(root)["bronze"]).values()) == 300


HOLD_LOCK = (
    "import sys, time; from dolly_spark.ops.lock import exclusive\n"
    "with exclusive(sys.argv[1], 'holder-run'):\n    print('held', flush=True); time.sleep(120)\n"
)


def test_second_prepare_on_the_same_root_fails_at_once_naming_the_holder(spark, tmp_path):
    root = tmp_path / "out"
    root.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(root)],
        cwd=helpers.REPO,
        env=helpers.subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        line = holder.stdout.readline().decode()
        assert line.strip() == "held", line + holder.stdout.read().decode()
        from dolly_spark.ops.lock import ConcurrentRunError

        t0 = time.time()
        with pytest.raises(ConcurrentRunError, match=rf"another prepare is running .*holder-run.*pid {holder.pid}"):
            run(PrepareConfig(input=str(helpers.REPO / "tests/data/bad"), output_root=str(root)), spark)
        assert time.time() - t0 < 10
        assert not helpers.existing_tables(root), "the loser wrote tables"
    finally:
        holder.kill()
        holder.wait()


def _mlflow_runs(root) -> list:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{Path(root).resolve()}/mlflow.db")
    exps = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(exps) if exps else []


def test_concurrent_cli_prepares_one_wins_the_loser_says_why(tmp_path):
    src, root = _head(tmp_path, 2000), tmp_path / "out"
    helpers.init_tracking_store(root)
    args = ["prepare", "--input", str(src), "--output-root", str(root)]
    winner = helpers.start(args, tmp_path / "winner.log")
    lock = root / "_prepare.lock"
    t0 = time.time()
    while not (lock.exists() and lock.read_text() and json.loads(lock.read_text())["pid"] == winner.pid):
        assert winner.poll() is None and time.time() - t0 < 180, (tmp_path / "winner.log").read_text()[-3000:]
        time.sleep(0.05)
    loser = helpers.start(args, tmp_path / "loser.log")
    assert loser.wait(timeout=240) != 0
    out = (tmp_path / "loser.log").read_text()
    assert winner.poll() is None, "the winner finished before the loser tried: the race was not tested"
    assert "another prepare is running" in out and f"pid {winner.pid}" in out, out[-3000:]
    assert winner.wait(timeout=600) == 0, (tmp_path / "winner.log").read_text()[-3000:]
    helpers.assert_accounted(root)


def test_killed_cli_prepare_is_cleaned_up_by_the_next_run(tmp_path):
    """SIGKILL during dedup leaves ``_work/dedup/<uuid>`` and a RUNNING MLflow run; the next
    run removes the dir, marks the run FAILED, says the last run did not complete, and the
    accounting of what readers see holds throughout."""
    src, root = _head(tmp_path, 2000), tmp_path / "out"
    helpers.init_tracking_store(root)
    args = ["prepare", "--input", str(src), "--output-root", str(root)]
    proc = helpers.start(args, tmp_path / "killed.log")
    work = root / "_work" / "dedup"
    t0 = time.time()
    while not (work.is_dir() and any(work.iterdir())):
        assert proc.poll() is None and time.time() - t0 < 300, (tmp_path / "killed.log").read_text()[-3000:]
        time.sleep(0.01)
    helpers.kill_group(proc)
    stale = sorted(p.name for p in work.iterdir())
    assert stale
    running = [r for r in _mlflow_runs(root) if r.info.status == "RUNNING"]
    assert len(running) == 1

    again = helpers.start(args, tmp_path / "again.log")
    assert again.wait(timeout=600) == 0, (tmp_path / "again.log").read_text()[-3000:]
    assert "did not complete" in (tmp_path / "again.log").read_text()
    assert not [p.name for p in work.iterdir() if p.name in stale], "stale dedup work dirs left"
    status = {r.info.run_id: r.info.status for r in _mlflow_runs(root)}
    assert status[running[0].info.run_id] == "FAILED"
    assert sorted(status.values()) == ["FAILED", "FINISHED"]
    helpers.assert_accounted(root)
