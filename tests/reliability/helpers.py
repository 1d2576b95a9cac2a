"""Shared checks for the reliability suite: table snapshots and the row-accounting partition.

Tables are read with delta-rs (no Spark needed), and the accounting check adapts to the tables
a run produced: the final table is ``gold`` when it exists, else ``silver``; ``duplicates`` is
counted when present. So the same assertions hold before and after dedup/gold land in prepare.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import deltalake

REPO = Path(__file__).resolve().parents[2]
CLI = REPO / ".venv" / "bin" / "dolly-spark"
# Columns that legitimately differ between two runs over the same input.
VOLATILE_COLUMNS = ("ingested_at", "created_at", "run_id", "scored_at", "updated_at")
# Appended per run (history, not state): compared per run, not as a whole.
APPEND_ONLY_TABLES = ("metrics", "manifest")


def load_corpus_module():
    path = REPO / "tests" / "data" / "make_bad_corpus.py"
    spec = importlib.util.spec_from_file_location("make_bad_corpus", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("make_bad_corpus", mod)
    spec.loader.exec_module(mod)
    return mod


def tables_dir(root) -> Path:
    return Path(root) / "tables"


def existing_tables(root) -> dict[str, Path]:
    d = tables_dir(root)
    if not d.is_dir():
        return {}
    return {p.name: p for p in sorted(d.iterdir()) if (p / "_delta_log").is_dir()}


def read_rows(path, version: int | None = None) -> list[dict]:
    dt = deltalake.DeltaTable(str(path), version=version)
    return dt.to_pyarrow_table().to_pylist()


def delta_version(path) -> int:
    return int(deltalake.DeltaTable(str(path)).version())


def _canonical(row: dict, drop=VOLATILE_COLUMNS) -> str:
    # *_version columns are lineage (the Delta version read), which differs between a fresh root
    # and one with history; everything else must match exactly.
    keep = {k: v for k, v in row.items() if k not in drop and not k.endswith("_version")}
    return json.dumps(keep, sort_keys=True, default=str)


def table_content(path, version: int | None = None) -> Counter:
    """The table as a multiset of rows, volatile columns dropped: order-free, exact otherwise."""
    return Counter(_canonical(r) for r in read_rows(path, version))


def snapshot(root, skip=APPEND_ONLY_TABLES) -> dict[str, Counter]:
    return {name: table_content(p) for name, p in existing_tables(root).items() if name not in skip}


def ids(rows: list[dict], table: str) -> list[str]:
    assert rows == [] or "record_id" in rows[0], f"{table} has no record_id column"
    return [r["record_id"] for r in rows]


def committed_versions(root) -> dict[str, int] | None:
    """The table versions the last completed prepare run committed (None without a manifest)."""
    t = existing_tables(root)
    if "manifest" not in t:
        return None
    rows = sorted(read_rows(t["manifest"]), key=lambda r: (r["at"], r["status"] == "committed"))
    done = [r for r in rows if r["status"] == "committed"]
    assert done, f"{root}: a manifest without a completed run"
    return json.loads(done[-1]["versions"])


def accounting(root) -> dict[str, list[str]]:
    """record ids per destination, as readers see them: raw (bronze), the final table,
    quarantine, duplicates. With a manifest, each table at the version it committed."""
    t = existing_tables(root)
    assert "bronze" in t, f"no bronze table under {root}"
    pinned = committed_versions(root)
    if pinned is None:
        final = "gold" if "gold" in t else "silver"
        pinned = {name: None for name in t}
    else:
        final = next(n for n in ("gold", "candidates", "silver", "bronze") if n in pinned)
    parts = {"raw": ids(read_rows(t["bronze"], pinned["bronze"]), "bronze")}
    parts[final] = ids(read_rows(t[final], pinned[final]), final)  # --until bronze: raw is the output
    for name in ("quarantine", "duplicates"):
        if name in t and name in pinned:
            parts[name] = ids(read_rows(t[name], pinned[name]), name)
    return parts


def assert_accounted(root) -> dict[str, list[str]]:
    """Every raw record is in exactly one of final / quarantine / duplicates, and nothing else is.

    Stronger than raw = out + quarantine + duplicates on counts: it is a partition of record ids.
    """
    parts = accounting(root)
    raw = parts.pop("raw")
    assert len(raw) == len(set(raw)), "bronze record ids are not unique"
    seen: Counter = Counter()
    for name, id_list in parts.items():
        dupes = [i for i, n in Counter(id_list).items() if n > 1]
        assert not dupes, f"{name}: record ids listed more than once: {dupes[:5]}"
        seen.update(id_list)
    twice = [i for i, n in seen.items() if n > 1]
    assert not twice, f"record ids in more than one of {sorted(parts)}: {twice[:5]}"
    missing = set(raw) - set(seen)
    extra = set(seen) - set(raw)
    assert not missing, f"{len(missing)} raw records are in none of {sorted(parts)}"
    assert not extra, f"{len(extra)} records appeared that are not in bronze"
    assert len(raw) == sum(len(v) for v in parts.values())
    return parts


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", MLFLOW_DISABLE_TELEMETRY="true", PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    for var in ("SPARK_REMOTE", "MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "DOLLY_PARENT_RUN_ID"):
        env.pop(var, None)  # each job finds its own root's store
    return env


def start(args: list[str], log_path: Path) -> subprocess.Popen:
    """Start ``dolly-spark ARGS`` in its own process group (so SIGKILL takes its children too)."""
    log = open(log_path, "wb")
    return subprocess.Popen(
        [str(CLI), *args], cwd=REPO, env=subprocess_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )


def kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)


def wait_for_file_count_change(root, before: int, proc: subprocess.Popen, timeout: float = 120) -> float:
    """Block until the process writes its first new file under root; return that moment."""
    t0 = time.time()
    while time.time() - t0 < timeout:
        if count_files(root) != before or proc.poll() is not None:
            return time.time()
        time.sleep(0.01)
    raise TimeoutError(f"no write under {root} within {timeout}s")


def count_files(root) -> int:
    return sum(len(files) for _, _, files in os.walk(root))


def commits_per_run(root, table: str) -> int:
    """Commits a fresh single run made to ``table`` (its version + 1)."""
    return delta_version(existing_tables(root)[table]) + 1


CONFIGURE_TRACKING = (
    "import sys; from dolly_spark.tracking import experiments; experiments.configure(output_root=sys.argv[1])"
)


def start_configure_tracking(root) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", CONFIGURE_TRACKING, str(root)],
        cwd=REPO,
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def init_tracking_store(root) -> None:
    """Create the local MLflow store before a kill loop, so kills land in the job's table writes."""
    proc = start_configure_tracking(root)
    out = proc.communicate(timeout=180)[0].decode(errors="replace")
    assert proc.returncode == 0, out[-3000:]


def tiny_train_args(steps: int, lr: str, warmup: int, save_steps: int = 3) -> list[str]:
    """``dolly-spark train`` flags for a few CPU steps of the tiny model on 2 ranks (the training tests)."""
    from tests.shared_data import TOKENIZER_DIR

    return [
        *("--base-model", "tiny", "--gpu-family", "cpu", "--tokenizer", str(TOKENIZER_DIR)),
        *("--lr", lr, "--warmup-steps", str(warmup), "--per-device-batch-size", "1"),
        *("--max-seq-len", "256", "--eval-steps", "1000", "--save-steps", str(save_steps)),
        *("--save-total-limit", "3", "--max-eval-records", "2", "--max-steps", str(steps)),
    ]


def run_train(args: list[str], env: dict, log: Path, timeout: float) -> tuple[int, float, str, float]:
    """``dolly-spark train ARGS`` in its own process group: (returncode, end time, output, wall seconds)."""
    import pytest

    t0 = time.time()
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [str(CLI), "train", *args], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_group(proc)
            pytest.fail(f"training did not finish within {timeout}s:\n{log.read_text(errors='replace')[-3000:]}")
    return proc.returncode, time.time(), log.read_text(errors="replace"), time.time() - t0
