"""The error contract through the real CLI (``python -m dolly_spark.commands.cli``, a subprocess):
every failure a user can cause or meet is ONE line on stderr and a non-zero exit, and the tables
an earlier run committed stand. Disk full, an output root inside the input folder and an
unreachable tokenizer fail that way; a huge gzip line and an odd output path are not failures at
all. Below them, the parts: the one-line rules, the fast hub probe, quiet logs.
"""

from __future__ import annotations

import errno
import gzip
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.reliability import helpers
from tests.shared_data import DOLLY_JSONL, TOKENIZER_DIR

DATA_TABLES = ("bronze", "silver", "quarantine", "duplicates", "candidates", "gold", "gold_stats", "sql_views")


@dataclass
class Done:
    code: int
    out: str
    err: str
    seconds: float
    peak_rss_mib: int

    @property
    def err_lines(self) -> list[str]:
        return self.err.strip().splitlines()


def cli(args: list[str], env: dict | None = None, timeout: float = 600) -> Done:
    """Run ``dolly-spark ARGS`` as a user would; peak RSS from the child's own rusage."""
    env = {**helpers.subprocess_env(), "PYTHONPATH": str(helpers.REPO), **(env or {})}
    env = {k: v for k, v in env.items() if v is not None}
    t0 = time.time()
    proc = subprocess.Popen(
        [sys.executable, "-m", "dolly_spark.commands.cli", *args],
        cwd=helpers.REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    streams: dict[str, bytes] = {}
    readers = [
        threading.Thread(target=lambda n=n, f=f: streams.__setitem__(n, f.read()))
        for n, f in (("out", proc.stdout), ("err", proc.stderr))
    ]
    for r in readers:
        r.start()
    timer = threading.Timer(timeout, proc.kill)
    timer.start()
    try:
        _, status, usage = os.wait4(proc.pid, 0)
    finally:
        timer.cancel()
    proc.returncode = os.waitstatus_to_exitcode(status)
    for r in readers:
        r.join()
    text = {k: v.decode(errors="replace") for k, v in streams.items()}
    return Done(proc.returncode, text["out"], text["err"], time.time() - t0, usage.ru_maxrss // 1024)


def dolly_lines(n: int, start: int = 0) -> list[bytes]:
    with open(DOLLY_JSONL, "rb") as f:
        return f.read().splitlines()[start : start + n]


def write_jsonl(path: Path, lines: list[bytes]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def assert_one_error_line(done: Done, command: str, code: int, *needles: str) -> str:
    assert done.code == code, (done.code, done.err[-3000:])
    assert len(done.err_lines) == 1, done.err[-3000:]
    line = done.err_lines[0]
    assert line.startswith(f"dolly-spark {command}: error: "), line
    assert "Traceback" not in done.err
    for needle in needles:
        assert needle in line, line
    return line


def table_state(root: Path) -> dict[str, tuple[int, int]]:
    """(Delta version, rows) of every data table (manifest and metrics are append-only history)."""
    return {
        name: (helpers.delta_version(p), len(helpers.read_rows(p)))
        for name, p in helpers.existing_tables(root).items()
        if name in DATA_TABLES
    }


# --- 1. disk full mid-prepare ----------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path):
    """A 64 MiB tmpfs; skipped where mounting is not permitted (not root, no CAP_SYS_ADMIN)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip() or done.returncode}): needs root")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(disk: Path, leave_bytes: int) -> None:
    free = shutil.disk_usage(disk).free
    with open(disk / "filler", "wb") as f:
        os.posix_fallocate(f.fileno(), 0, free - leave_bytes)


def test_a_full_disk_mid_prepare_is_one_line_and_the_committed_tables_stand(tmp_path, small_disk):
    root = small_disk / "out"
    first = cli(
        ["prepare", "--input", str(write_jsonl(tmp_path / "a.jsonl", dolly_lines(300))), "--output-root", str(root)]
    )
    assert first.code == 0, first.err[-3000:]
    before, committed = table_state(root), helpers.committed_versions(root)
    fill(small_disk, leave_bytes=300 * 1024)  # the lock, the MLflow run and the manifest fit; bronze does not
    bigger = write_jsonl(tmp_path / "b.jsonl", dolly_lines(3000))
    done = cli(["prepare", "--input", str(bigger), "--output-root", str(root)])
    assert_one_error_line(done, "prepare", 1, "no space left on device", "free space")
    assert table_state(root) == before and helpers.committed_versions(root) == committed
    helpers.assert_accounted(root)  # what readers see is the first run, whole


# --- 2. an output root inside the input folder -----------------------------------------------


@pytest.mark.parametrize("where", ["inside", "equal"])
def test_an_output_root_inside_the_input_folder_is_refused_before_anything_is_written(tmp_path, where):
    data = tmp_path / "data"
    write_jsonl(data / "part.jsonl", dolly_lines(20))
    root = data / "out" if where == "inside" else data
    done = cli(["prepare", "--input", str(data), "--output-root", str(root)])
    assert_one_error_line(done, "prepare", 2, "inside the input folder", str(root))
    assert sorted(p.name for p in data.iterdir()) == ["part.jsonl"]  # nothing written, not even mlflow.db


# --- 3. an unreachable tokenizer --------------------------------------------------------------

# No HF_HUB_OFFLINE, an empty cache, a repo that does not exist: unreachable here (no network),
# a 404 where there is one; both must fail at once, in the preflight.
HUB_ENV = {"HF_HUB_OFFLINE": None, "DOLLY_TOKENIZER": None}
MISSING_TOKENIZER = "dolly-spark-tests/no-such-tokenizer"
FAST_SECONDS = 20.0  # the whole CLI run; the hub client's own retries alone took 23-31 s


def test_an_unreachable_tokenizer_fails_fast_before_any_table_is_written(tmp_path):
    data = write_jsonl(tmp_path / "in.jsonl", dolly_lines(20))
    root = tmp_path / "out"
    env = {**HUB_ENV, "HF_HOME": str(tmp_path / "hf")}
    done = cli(["prepare", "--input", str(data), "--output-root", str(root), "--tokenizer", MISSING_TOKENIZER], env)
    line = assert_one_error_line(done, "prepare", 2, f"Could not load tokenizer {MISSING_TOKENIZER!r}", "--tokenizer")
    assert "DOLLY_TOKENIZER" in line
    assert done.seconds < FAST_SECONDS, done.seconds
    assert not root.exists()  # checked before the session, any table or the MLflow store


# --- 4. a 200 MB gzip line --------------------------------------------------------------------


def write_gzip(path: Path, lines: list[bytes], huge_mib: int = 0) -> Path:
    """``lines`` with, in the middle, one line of ``huge_mib`` MiB (streamed: never in memory)."""
    with gzip.open(path, "wb", compresslevel=1) as g:
        for ln in lines[: len(lines) // 2]:
            g.write(ln + b"\n")
        if huge_mib:
            g.write(b'{"instruction": "')
            block = b"z" * (1 << 20)
            for _ in range(huge_mib):
                g.write(block)
            g.write(b'", "response": "r", "category": "open_qa"}\n')
        for ln in lines[len(lines) // 2 :]:
            g.write(ln + b"\n")
    return path


def test_a_200_mb_gzip_line_is_quarantined_in_bounded_memory_and_the_rest_kept(tmp_path):
    lines = dolly_lines(200)
    base = cli(
        ["prepare", "--input", str(write_gzip(tmp_path / "base.jsonl.gz", lines)), "--output-root", str(tmp_path / "b")]
    )
    assert base.code == 0, base.err[-3000:]
    path = write_gzip(tmp_path / "huge.jsonl.gz", lines, huge_mib=200)
    assert path.stat().st_size < 2 * 1024 * 1024  # a small file on disk
    root = tmp_path / "h"
    done = cli(["prepare", "--input", str(path), "--output-root", str(root)])
    assert done.code == 0 and "error" not in done.err, done.err[-3000:]
    t = helpers.existing_tables(root)
    quarantined = helpers.read_rows(t["quarantine"])
    assert [(r["reason"], r["line_number"], len(r["raw_line"])) for r in quarantined] == [("line_too_long", 101, 4096)]
    assert quarantined[0]["raw_line"].startswith('{"instruction": "zzz')
    assert len(helpers.read_rows(t["gold"])) == len(helpers.read_rows(helpers.existing_tables(tmp_path / "b")["gold"]))
    helpers.assert_accounted(root)
    # Holding the line would take 200 MiB at least (bytes, then text, then an Arrow batch).
    assert done.peak_rss_mib - base.peak_rss_mib < 100, (done.peak_rss_mib, base.peak_rss_mib)


# --- 5. an odd output path --------------------------------------------------------------------


def test_an_output_root_with_a_space_accent_backquote_and_quote_works_for_prepare_and_sql(tmp_path):
    parent = tmp_path / "my root é `q'"
    root = parent / "out"
    data = write_jsonl(tmp_path / "in.jsonl", dolly_lines(300))
    done = cli(["prepare", "--input", str(data), "--output-root", str(root)])
    assert done.code == 0, done.err[-3000:]
    assert not [ln for ln in done.err_lines if "sail" in ln.lower()]  # the engine's own lines need --verbose
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", parent.name]  # no "my%20root…" twin
    assert (root / "tables" / "gold" / "_delta_log").is_dir()
    helpers.assert_accounted(root)
    query = cli(["sql", "SELECT count(*) AS n FROM gold", "--output-root", str(root), "--format", "csv"])
    assert (query.code, query.out) == (0, f"n\n{len(helpers.read_rows(root / 'tables' / 'gold'))}\n"), query.err


def test_verbose_shows_the_engines_own_log_lines(tmp_path):
    data = write_jsonl(tmp_path / "in.jsonl", dolly_lines(5))
    done = cli(
        ["prepare", "--input", str(data), "--output-root", str(tmp_path / "out"), "--until", "bronze", "--verbose"]
    )
    assert done.code == 0, done.err[-3000:]
    assert any("sail" in ln and " INFO " in ln for ln in done.err_lines), done.err[-3000:]


# --- the one-line rules -----------------------------------------------------------------------


def _engine_error(message: str):
    from pyspark.errors import PySparkException

    return PySparkException(message=message)


class _FakeRpcError(Exception):
    """What a gRPC error looks like when it reaches us: a long multi-line repr."""

    def __str__(self):
        return (
            "<_MultiThreadedRendezvous of RPC that terminated with:\n\tstatus = StatusCode.RESOURCE_EXHAUSTED\n"
            '\tdetails = "Decompressed message larger than max (134217728 vs. 312345678)"\n'
            '\tdebug_error_string = "UNKNOWN:Error received from peer  {grpc_status:8}"\n>'
        )


def _rpc_error():
    import grpc

    return type("RpcErr", (_FakeRpcError, grpc.RpcError), {})()


JVM_TAIL = "\n\nJVM stacktrace:\norg.apache.spark.SparkException: boom\n\tat org.apache.spark.x(X.scala:1)\n" * 3


@pytest.mark.parametrize(
    "make, code, needles",
    [
        (lambda: OSError(errno.ENOSPC, "No space left on device", "/r/tables/bronze/x.parquet"), 1,
         ["no space left on device: /r/tables/bronze/x.parquet", "free space"]),
        (lambda: PermissionError(errno.EACCES, "Permission denied", "/r/mlflow.db"), 1, ["permission denied: /r/mlflow.db"]),
        (lambda: OSError(errno.EROFS, "Read-only file system", "/r"), 1, ["read-only file system: /r"]),
        (lambda: _engine_error("Failed to write file: Unable to copy data: No space left on device (os error 28)" + JVM_TAIL),
         1, ["no space left on device (Failed to write file", "free space"]),
        (lambda: _engine_error("Permission denied (os error 13)" + JVM_TAIL), 1, ["permission denied"]),
        (lambda: _engine_error("[UNSUPPORTED_DATATYPE] Unsupported data type \"X\". SQLSTATE: 0A000" + JVM_TAIL), 1,
         ["PySparkException: [UNSUPPORTED_DATATYPE] Unsupported data type"]),
        (_rpc_error, 1, ["a result too large for one engine message (Decompressed message larger than max", "--max-line-bytes"]),
        (lambda: _engine_error("java.lang.OutOfMemoryError: Java heap space" + JVM_TAIL), 1, ["out of memory"]),
        (lambda: MemoryError(), 1, ["out of memory (MemoryError)"]),
        (lambda: RuntimeError("wrapped"), 1, ["unexpected RuntimeError: wrapped", "--debug"]),
        (lambda: KeyError("k"), 1, ["unexpected KeyError: 'k' (a bug? rerun with --debug"]),
        (lambda: KeyboardInterrupt(), 130, ["interrupted"]),
    ],
)  # fmt: skip
def test_every_failure_is_one_line_with_an_exit_status(make, code, needles):
    from dolly_spark.commands.common import describe_error

    got_code, line = describe_error(make())
    assert got_code == code and "\n" not in line, line
    for needle in needles:
        assert needle in line, line


def test_a_cause_is_found_under_a_generic_wrapper():
    from dolly_spark.commands.common import describe_error

    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device", "/r/x")
        except OSError as inner:
            raise RuntimeError("write failed") from inner
    except RuntimeError as err:
        assert describe_error(err) == (1, describe_error(err.__cause__)[1])
        assert describe_error(err)[1].startswith("no space left on device: /r/x")


def test_own_errors_keep_their_message_and_usage_errors_exit_2():
    from dolly_spark.commands.common import describe_error
    from dolly_spark.ops.config import ConfigError
    from dolly_spark.prep.accounting import AccountingError
    from dolly_spark.prep.sources import SourceError
    from dolly_spark.text.tokenizer import TokenizerLoadError

    long = "x" * 1000
    assert describe_error(ConfigError(f"--input: {long}")) == (2, f"--input: {long}")  # never cut
    assert describe_error(SourceError("source s: no files")) == (2, "source s: no files")
    assert describe_error(AccountingError("gold: 1 != 2\ndetail")) == (1, "gold: 1 != 2")
    assert describe_error(TokenizerLoadError("Could not load tokenizer 'x'")) == (1, "Could not load tokenizer 'x'")


def test_cli_errors_turns_any_exception_into_one_line_and_debug_adds_the_traceback(capsys):
    from dolly_spark.commands.common import cli_errors

    @cli_errors("demo")
    def main(argv):
        raise _engine_error("No space left on device (os error 28)" + JVM_TAIL)

    assert main([]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("dolly-spark demo: error: no space left on device")
    assert main(["--debug"]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and err.strip().splitlines()[-1].startswith("dolly-spark demo")
    assert JVM_TAIL.count("\n") > 1  # the raw message would have been many lines


# --- the tokenizer: a fast probe, the cache, the real client ----------------------------------

# Loads a tokenizer in a fresh interpreter (huggingface_hub reads its settings at import); argv:
# source, then "probe" or "no-probe" (the mutation: skip the probe, as the old loader did).
LOAD_TOKENIZER = """
import json, sys, time
from dolly_spark.text import tokenizer
if sys.argv[2] == "no-probe":
    tokenizer.hub_offline_reason = lambda: None
t0 = time.time()
try:
    ids, message = tokenizer.load_fast_tokenizer(sys.argv[1]).encode("### Response:").ids, None
except tokenizer.TokenizerLoadError as err:
    ids, message = None, str(err)
print(json.dumps({"seconds": time.time() - t0, "message": message, "ids": ids}))
"""
# Refused at once on any machine, network or not: the "unreachable hub" made deterministic.
DEAD_HUB = {**HUB_ENV, "HF_ENDPOINT": "http://127.0.0.1:9"}


def load_tokenizer(src: str, env: dict, mode: str = "probe") -> dict:
    env = {**helpers.subprocess_env(), "PYTHONPATH": str(helpers.REPO), **env}
    env = {k: v for k, v in env.items() if v is not None}
    done = subprocess.run(
        [sys.executable, "-c", LOAD_TOKENIZER, src, mode], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_an_unreachable_hub_fails_in_seconds_and_the_bound_catches_the_retry_loop(tmp_path):
    env = {**DEAD_HUB, "HF_HOME": str(tmp_path / "hf")}
    got = load_tokenizer(MISSING_TOKENIZER, env)
    assert got["seconds"] < 5, got
    assert "http://127.0.0.1:9 is unreachable and it is not in the local cache" in got["message"], got
    assert "Offline, point --tokenizer" in got["message"] and "\n" not in got["message"]
    # Without the probe the hub client's own retries run (1+2+4+8+8 s): the bound above fails.
    slow = load_tokenizer(MISSING_TOKENIZER, env, mode="no-probe")
    assert slow["message"] and slow["seconds"] > 5, slow


def test_a_cached_hub_tokenizer_loads_through_the_real_client_when_the_hub_is_unreachable(tmp_path):
    """The hub path is huggingface_hub's own: its cache layout, read by ``hf_hub_download``."""
    repo = tmp_path / "hf" / "hub" / "models--dolly-spark-tests--cached"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    shutil.copy(TOKENIZER_DIR / "tokenizer.json", repo / "snapshots" / commit / "tokenizer.json")
    got = load_tokenizer("dolly-spark-tests/cached", {**DEAD_HUB, "HF_HOME": str(tmp_path / "hf")})
    local = load_tokenizer(str(TOKENIZER_DIR), {})
    assert got["message"] is None and got["ids"] == local["ids"] and got["seconds"] < 5, got


def test_a_missing_or_broken_local_tokenizer_is_one_line_without_asking_the_hub(tmp_path):
    env = {**DEAD_HUB, "HF_HOME": str(tmp_path / "hf")}
    got = load_tokenizer(str(tmp_path / "nope"), env)
    assert got["message"].startswith(f"Could not load tokenizer {str(tmp_path / 'nope')!r}: no such file"), got
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "tokenizer.json").write_text("{not json")
    got = load_tokenizer(str(broken), env)
    assert got["message"].startswith(f"Could not load tokenizer {str(broken)!r}: ") and "\n" not in got["message"]


# --- quiet logs -------------------------------------------------------------------------------


def test_mlflow_progress_bars_are_off_when_piped_and_the_environment_is_restored(monkeypatch):
    from mlflow.environment_variables import MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR

    from dolly_spark.commands.common import cli_errors

    monkeypatch.delenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", raising=False)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False, raising=False)
    seen = []

    @cli_errors("demo")
    def main(argv):
        seen.append(MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR.get())
        return 0

    assert main([]) == 0 and main(["--verbose"]) == 0
    assert seen == [False, True]
    assert "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR" not in os.environ  # nothing left behind
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "true")  # the user's choice wins
    assert main([]) == 0 and seen[-1] is True
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    monkeypatch.delenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")
    assert main([]) == 0 and seen[-1] is True  # a terminal keeps its bars


def test_the_engine_log_level_follows_the_engine_logger_and_a_user_rust_log_wins(monkeypatch):
    import logging

    from dolly_spark.ops.session import ENGINE_LOG, engine_environ, scoped_environ

    engine_log = logging.getLogger(ENGINE_LOG)
    saved = engine_log.level
    monkeypatch.delenv("RUST_LOG", raising=False)
    monkeypatch.delenv("SAIL_OPTIMIZER__ENABLE_JOIN_SWAP", raising=False)
    no_swap = {"SAIL_OPTIMIZER__ENABLE_JOIN_SWAP": "false"}
    try:
        engine_log.setLevel(logging.WARNING)
        assert engine_environ() == {**no_swap, "RUST_LOG": "error"}
        engine_log.setLevel(logging.INFO)  # --verbose
        assert engine_environ() == no_swap
        engine_log.setLevel(logging.WARNING)
        monkeypatch.setenv("RUST_LOG", "debug")
        monkeypatch.setenv("SAIL_OPTIMIZER__ENABLE_JOIN_SWAP", "true")
        assert engine_environ() == {}
    finally:
        engine_log.setLevel(saved)
    with scoped_environ(RUST_LOG="error", DOLLY_SCOPED_TEST="1"):
        assert os.environ["RUST_LOG"] == "error" and os.environ["DOLLY_SCOPED_TEST"] == "1"
    assert os.environ["RUST_LOG"] == "debug" and "DOLLY_SCOPED_TEST" not in os.environ


def test_starting_the_embedded_engine_leaves_the_environment_unchanged(monkeypatch):
    from dolly_spark.ops.session import start_sail_server

    monkeypatch.delenv("RUST_LOG", raising=False)
    monkeypatch.delenv("SAIL_OPTIMIZER__ENABLE_JOIN_SWAP", raising=False)
    before = dict(os.environ)
    server, port = start_sail_server()
    try:
        assert port > 0 and dict(os.environ) == before
    finally:
        server.stop()
