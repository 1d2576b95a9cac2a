"""Rerunning prepare on the same input yields identical tables (volatile timestamps and run ids
excluded): same record ids, same rows, one new Delta version per table, nothing appended twice."""

from __future__ import annotations

import json
import shutil
from collections import Counter

import pytest

from dolly_spark.prep.prepare import PrepareConfig, run
from tests.reliability import helpers
from tests.shared_data import DOLLY_JSONL

corpus_mod = helpers.load_corpus_module()


def _without_timings(value):
    """Drop wall-clock measurements (``*_seconds``, ``timings``) and Delta versions (lineage, which
    grows with each run) from metrics details."""
    if isinstance(value, dict):
        return {
            k: _without_timings(v)
            for k, v in value.items()
            if not (k.endswith("seconds") or k in ("timings", "elapsed", "versions"))
        }
    return value


def _metrics_per_run(root) -> dict[str, Counter]:
    rows = helpers.read_rows(helpers.existing_tables(root)["metrics"])
    out: dict[str, Counter] = {}
    for r in rows:
        r = dict(r, details=json.dumps(_without_timings(json.loads(r["details"] or "{}")), sort_keys=True))
        out.setdefault(r["run_id"], Counter())[helpers._canonical(r)] += 1
    return out


def _versions(root) -> dict[str, int]:
    return {n: helpers.delta_version(p) for n, p in helpers.existing_tables(root).items()}


@pytest.mark.parametrize("records", [2000, pytest.param(15011, marks=pytest.mark.slow)])
def test_rerun_on_real_dolly_is_identical(spark, tmp_path, records):
    src = DOLLY_JSONL
    if records < 15011:
        src = tmp_path / "in" / "head.jsonl"
        src.parent.mkdir()
        with open(DOLLY_JSONL, "rb") as f:
            src.write_bytes(b"".join(f.readline() for _ in range(records)))
    tmp_path = tmp_path / "out"
    cfg = PrepareConfig(input=str(src), output_root=str(tmp_path))
    run(cfg, spark)
    first = helpers.snapshot(tmp_path)
    v1 = _versions(tmp_path)
    run(cfg, spark)
    second = helpers.snapshot(tmp_path)
    v2 = _versions(tmp_path)

    assert set(first) == set(second) and {"bronze", "silver", "quarantine"} <= set(first)
    for name in first:
        assert first[name] == second[name], f"{name} differs after a rerun"
    assert sum(first["bronze"].values()) == records
    helpers.assert_accounted(tmp_path)
    # metrics is append-only: two runs, each with the same per-stage counts
    runs = list(_metrics_per_run(tmp_path).values())
    assert len(runs) == 2 and runs[0] == runs[1]
    # One commit per table per run: what makes a killed run leave each table old or new.
    several = {n: v2[n] - v1[n] for n in v2 if n not in helpers.APPEND_ONLY_TABLES and v2[n] - v1[n] != 1}
    assert not several, f"tables committed more than once in one run: {several}"


def test_rerun_on_bad_corpus_is_identical_and_location_independent(spark, tmp_path):
    corpus = tmp_path / "in" / "corpus"
    corpus_mod.write_corpus(corpus, include_large=False)
    cfg = PrepareConfig(input=str(corpus), output_root=str(tmp_path / "out"))
    run(cfg, spark)
    first = helpers.snapshot(tmp_path / "out")
    run(cfg, spark)
    assert helpers.snapshot(tmp_path / "out") == first

    # The same files in another folder get the same record ids (ids hash paths below the input root).
    moved = tmp_path / "elsewhere" / "copy"
    shutil.copytree(corpus, moved)
    run(PrepareConfig(input=str(moved), output_root=str(tmp_path / "out2")), spark)
    ids = lambda root, t: Counter(r["record_id"] for r in helpers.read_rows(helpers.existing_tables(root)[t]))  # noqa: E731
    for t in ("bronze", "silver", "quarantine"):
        assert ids(tmp_path / "out", t) == ids(tmp_path / "out2", t), t
    helpers.assert_accounted(tmp_path / "out2")
