"""``dolly-spark serve``: a real subprocess serving a registered model through MLflow's scoring
server, answering real HTTP requests in the three input formats with Dolly's params, one log line
per request, and stopping cleanly on SIGINT/SIGTERM (the server's whole process group gone)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from dolly_spark.ops.config import parse_config
from dolly_spark.serve import server as serving
from dolly_spark.serve.server import ServeConfig
from dolly_spark.tracking import models, runs
from tests.reliability import helpers
from tests.test_pyfunc_model import save_scripted_model

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def no_env_overrides(monkeypatch):
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "DATABRICKS_RUNTIME_VERSION", runs.PARENT_RUN_ENV):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture(scope="module")
def registered_root(tmp_path_factory) -> Path:
    """A root whose store holds ``dolly`` v1 (@champion): the scripted "hello world" model."""
    from mlflow import MlflowClient

    root = tmp_path_factory.mktemp("serve_root")
    model_dir = save_scripted_model(tmp_path_factory.mktemp("scripted") / "model")
    with runs.job_run("train", {"output_root": str(root)}, output_root=root, engine="test"):
        info = models.log_dolly_model(model_dir, registered_model_name="dolly")
    MlflowClient().set_registered_model_alias("dolly", "champion", info.registered_model_version)
    return root


def _env() -> dict[str, str]:
    env = dict(os.environ)
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "SPARK_REMOTE", runs.PARENT_RUN_ENV):
        env.pop(var, None)
    env.update(HF_HUB_OFFLINE="1", MLFLOW_DISABLE_TELEMETRY="true", PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])  # this checkout's code
    return env


def _start(root: Path, port: int, log_path: Path, *extra: str) -> subprocess.Popen:
    args = ["serve", "--model-uri", "models:/dolly@champion", "--output-root", str(root), "--port", str(port), *extra]
    return subprocess.Popen(
        [sys.executable, "-m", "dolly_spark.commands.cli", *args],
        cwd=REPO,
        env=_env(),
        stdout=open(log_path, "wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _wait_for(log_path: Path, text: str, proc: subprocess.Popen, timeout: float = 240) -> str:
    t0 = time.time()
    while time.time() - t0 < timeout:
        out = log_path.read_text(errors="replace")
        if text in out:
            return out
        if proc.poll() is not None:
            raise AssertionError(f"serve exited with {proc.returncode} before {text!r}:\n{out}")
        time.sleep(0.2)
    raise AssertionError(f"no {text!r} within {timeout}s:\n{log_path.read_text(errors='replace')}")


def _post(url: str, body: dict) -> tuple[int, dict]:
    req = urllib.request.Request(
        f"{url}/invocations", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


def _group_gone(pgid: int, timeout: float = 30) -> bool:
    t0 = time.time()
    while time.time() - t0 < timeout:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


@pytest.fixture(scope="module")
def served(registered_root, tmp_path_factory):
    """``dolly-spark serve`` on a free port; yields (url, process, log path)."""
    port = serving.free_port("127.0.0.1")
    log_path = tmp_path_factory.mktemp("serve_log") / "serve.log"
    proc = _start(registered_root, port, log_path)
    try:
        _wait_for(log_path, "serving until interrupted", proc)
        yield f"http://127.0.0.1:{port}", proc, log_path
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                helpers.kill_group(proc)


def test_a_killed_serve_takes_its_server_with_it(registered_root, tmp_path):
    """SIGKILL leaves no handler to run: the server's parent-death signal stops it anyway."""
    port = serving.free_port("127.0.0.1")
    log_path = tmp_path / "serve.log"
    proc = _start(registered_root, port, log_path)
    try:
        _wait_for(log_path, "serving until interrupted", proc)
        pids = _server_pids(proc.pid)
        assert pids
        proc.kill()
        proc.wait(timeout=30)
        assert all(_group_gone(pid) for pid in pids)
    finally:
        if proc.poll() is None:
            helpers.kill_group(proc)


GREEDY = {"greedy": True, "max_new_tokens": 10}


def test_ping_answers_and_the_banner_names_the_pinned_version_and_a_curl_call(served):
    url, _, log_path = served
    with urllib.request.urlopen(f"{url}/ping", timeout=10) as resp:
        assert resp.status == 200
    out = log_path.read_text()
    assert f"serving models:/dolly@champion as models:/dolly/1 (version 1) at {url}" in out
    assert f"curl -s {url}/invocations -H 'Content-Type: application/json'" in out


@pytest.mark.parametrize(
    "body",
    [
        {"dataframe_records": [{"instruction": "Say something"}, {"instruction": "Again", "context": "ctx"}]},
        {"dataframe_split": {"columns": ["instruction", "context"], "data": [["Say something", None], ["Again", "c"]]}},
        {"inputs": {"instruction": ["Say something", "Again"], "context": ["", "ctx"]}},
    ],
    ids=["dataframe_records", "dataframe_split", "inputs"],
)
def test_invocations_generate_in_every_input_format_with_dolly_params(served, body):
    url, _, _ = served
    status, out = _post(url, {**body, "params": GREEDY})
    assert status == 200, out
    rows = out["predictions"]
    assert [r["response"] for r in rows] == ["hello world", "hello world"]
    assert [r["finish_reason"] for r in rows] == ["end_key", "end_key"]
    assert [r["completion_tokens"] for r in rows] == [3, 3]


def test_params_reach_the_model_and_bad_ones_are_refused(served):
    url, _, _ = served
    status, out = _post(url, {"dataframe_records": [{"instruction": "x"}], "params": {**GREEDY, "max_new_tokens": 2}})
    assert status == 200, out
    assert out["predictions"][0]["finish_reason"] == "length"
    assert out["predictions"][0]["completion_tokens"] == 2
    status, out = _post(url, {"dataframe_records": [{"prompt": "x"}], "params": GREEDY})
    assert status == 400 and "instruction" in json.dumps(out)


def test_one_log_line_per_request(served):
    url, _, log_path = served
    before = log_path.read_text().count('"POST /invocations HTTP/1.1"')
    for _ in range(3):
        assert _post(url, {"dataframe_records": [{"instruction": "x"}], "params": GREEDY})[0] == 200
    time.sleep(0.5)
    lines = [ln for ln in log_path.read_text().splitlines() if '"POST /invocations HTTP/1.1"' in ln]
    assert len(lines) - before == 3
    assert all(" INFO dolly_spark.serve: 127.0.0.1:" in ln and ln.endswith(" 200 OK") for ln in lines[-3:])


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_stops_the_server_and_exits_0(registered_root, tmp_path, sig):
    port = serving.free_port("127.0.0.1")
    log_path = tmp_path / "serve.log"
    proc = _start(registered_root, port, log_path)
    try:
        out = _wait_for(log_path, "serving until interrupted", proc)
        pids = _server_pids(proc.pid)
        assert pids, out  # MLflow's CLI and uvicorn, in a group of their own
        proc.send_signal(sig)  # what Ctrl-C does: only serve gets it, not the server's group
        assert proc.wait(timeout=60) == 0, log_path.read_text()
        assert all(_group_gone(pid) for pid in pids)
        with pytest.raises(OSError):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=5)
        assert "stopped" in log_path.read_text().splitlines()[-1]
    finally:
        if proc.poll() is None:
            helpers.kill_group(proc)


def _server_pids(parent: int) -> list[int]:
    """Process groups led by children of ``parent`` (the server's group)."""
    out = subprocess.run(["ps", "-o", "pid=,ppid=,pgid=", "-e"], capture_output=True, text=True, check=True)
    rows = [tuple(map(int, ln.split())) for ln in out.stdout.splitlines() if ln.strip()]
    return [pid for pid, ppid, pgid in rows if ppid == parent and pgid == pid]


def test_missing_alias_is_one_line_and_exit_1(registered_root, tmp_path):
    env = _env()
    out = subprocess.run(
        [sys.executable, "-m", "dolly_spark.commands.cli", "serve", "--model-uri", "models:/dolly@candidate",
         "--output-root", str(registered_root), "--port", "0"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 1, out.stderr
    assert out.stderr.strip().splitlines()[-1] == (
        "dolly-spark serve: error: models:/dolly@candidate: model 'dolly' has no alias 'candidate'; "
        "existing aliases: @champion -> v1"
    )


def test_config_requires_a_model_uri_and_a_valid_port(capsys):
    assert parse_config(ServeConfig, ["--model-uri", "models:/dolly@champion"], prog="s").port == 5000
    for argv in ([], ["--model-uri", "m", "--port", "70000"]):
        with pytest.raises(SystemExit):
            parse_config(ServeConfig, argv, prog="s")
    assert "--port 70000" in capsys.readouterr().err


def test_the_server_command_is_mlflows_own_with_the_local_env_manager():
    cfg = ServeConfig(model_uri="models:/dolly@champion", port=5123, workers=2)
    cmd = serving.server_command(cfg, "models:/dolly/3", 5123)
    assert cmd[:5] == [sys.executable, "-m", "mlflow", "models", "serve"]
    assert cmd[cmd.index("--env-manager") + 1] == "local" and cmd[cmd.index("--model-uri") + 1] == "models:/dolly/3"
    env = serving.server_env("sqlite:///x/mlflow.db", "sqlite:///x/mlflow.db", None)
    assert env["PATH"].split(os.pathsep)[0] == str(Path(sys.executable).parent)  # uvicorn is found
    assert env["MLFLOW_REGISTRY_URI"] == "sqlite:///x/mlflow.db"
