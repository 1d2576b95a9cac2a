"""Real-time serving of a registered model through MLflow's own scoring server.

``mlflow models serve --env-manager local`` is the server Databricks Model Serving runs around a
pyfunc, so the local contract is the endpoint's: ``GET /ping``, ``POST /invocations`` with
``dataframe_records``, ``dataframe_split`` or ``inputs``, the model's signature, and Dolly's
sampling parameters as ``params``. This module starts it as a child process in its own process
group, waits until ``/ping`` answers, and stops the whole group (the CLI and its uvicorn) on
request. An alias is resolved once at start, so the server keeps serving the version it loaded
even when the alias moves; restart it to pick up a new champion.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from dolly_spark.ops.config import Location

log = logging.getLogger(__name__)

# uvicorn reads its settings from UVICORN_* variables too: this one gives every request one
# timestamped line in the project's log format (without it, uvicorn's default access line).
_ACCESS_FORMAT = '%(asctime)s INFO dolly_spark.serve: %(client_addr)s "%(request_line)s" %(status_code)s'
_STOP_SECONDS = 15.0


@dataclass
class ServeConfig(Location):
    model_uri: str = field(
        default="", metadata={"help": "models:/NAME@ALIAS, models:/NAME/VERSION, runs:/ID/PATH or a saved model dir"}
    )
    host: str = field(default="127.0.0.1", metadata={"help": "address to listen on (default: loopback only)"})
    port: int = field(default=5000, metadata={"help": "port to listen on (MLflow's 5000; 0: a free port)"})
    workers: int = field(default=1, metadata={"help": "server worker processes (each loads the model once)"})
    request_timeout: int = field(default=300, metadata={"help": "seconds one /invocations request may take"})
    start_timeout: float = field(
        default=600.0, metadata={"help": "seconds to wait for /ping after start (a large model downloads first)"}
    )

    def __post_init__(self):
        if not self.model_uri:
            raise ValueError("give --model-uri, e.g. models:/dolly@champion")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"--port {self.port}: expected 0-65535")
        if self.workers < 1 or self.request_timeout < 1 or self.start_timeout <= 0:
            raise ValueError("--workers, --request-timeout and --start-timeout must be positive")


class ServerExitedError(RuntimeError):
    """The scoring server's process ended on its own."""


def pin_model(uri: str) -> tuple[str, str | None]:
    """(URI to serve, version): ``models:/NAME@ALIAS`` becomes ``models:/NAME/VERSION``."""
    from dolly_spark.serve.model_uri import parse_alias_uri, resolve_alias

    try:
        name, _ = parse_alias_uri(uri)
    except ValueError:
        return uri, None
    mv = resolve_alias(uri)
    return f"models:/{name}/{mv.version}", str(mv.version)


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def access_log_config(path: Path) -> Path:
    """A uvicorn log config: server lines on stderr, one access line per request on stdout."""
    fmt = {"()": "uvicorn.logging.AccessFormatter", "fmt": _ACCESS_FORMAT, "use_colors": False}
    config = {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "default": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"},
            "access": fmt,
        },
        "handlers": {
            "default": {"formatter": "default", "class": "logging.StreamHandler", "stream": "ext://sys.stderr"},
            "access": {"formatter": "access", "class": "logging.StreamHandler", "stream": "ext://sys.stdout"},
        },
        "loggers": {
            "uvicorn": {"handlers": ["default"], "level": "INFO", "propagate": False},
            "uvicorn.error": {"level": "INFO"},
            "uvicorn.access": {"handlers": ["access"], "level": "INFO", "propagate": False},
        },
    }
    path.write_text(json.dumps(config))
    return path


def server_command(cfg: ServeConfig, model_uri: str, port: int) -> list[str]:
    """``mlflow models serve`` in this interpreter's environment (no new virtualenv)."""
    return [
        sys.executable, "-m", "mlflow", "models", "serve",
        "--model-uri", model_uri,
        "--env-manager", "local",
        "--host", cfg.host,
        "--port", str(port),
        "--workers", str(cfg.workers),
        "--timeout", str(cfg.request_timeout),
    ]  # fmt: skip


def server_env(tracking_uri: str, registry_uri: str, log_config: Path | None) -> dict[str, str]:
    """The child's environment: this store, and this interpreter's scripts first on PATH (MLflow
    starts ``uvicorn`` by name)."""
    env = dict(os.environ)
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([bin_dir, env.get("PATH", "")])
    env.update(MLFLOW_TRACKING_URI=tracking_uri, MLFLOW_REGISTRY_URI=registry_uri, PYTHONUNBUFFERED="1")
    env.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    if log_config is not None:
        env["UVICORN_LOG_CONFIG"] = str(log_config)
    return env


def wait_ready(url: str, proc: subprocess.Popen, timeout: float, stop=None) -> float:
    """Seconds until ``GET url/ping`` answers 200 (or ``stop``, a threading.Event, is set);
    ServerExitedError if the process ends first."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if stop is not None and stop.is_set():
            return time.monotonic() - t0
        if proc.poll() is not None:
            raise ServerExitedError(f"the scoring server exited with status {proc.returncode} before /ping answered")
        try:
            with urllib.request.urlopen(f"{url}/ping", timeout=5) as resp:
                if resp.status == 200:
                    return time.monotonic() - t0
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.25)
    raise TimeoutError(f"{url}/ping did not answer within {timeout:.0f}s (raise --start-timeout?)")


def _die_with_parent() -> None:
    """In the child before exec (Linux): SIGTERM when ``serve`` dies, even by SIGKILL, so the server
    never outlives it (MLflow does the same for its uvicorn). A no-op where prctl is missing."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop_server(proc: subprocess.Popen, timeout: float = _STOP_SECONDS) -> bool:
    """SIGTERM to the server's process group (MLflow's CLI and uvicorn), SIGKILL after ``timeout``.
    True when it stopped within the timeout."""
    pgid = proc.pid  # started with start_new_session: the group is the child's pid
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        proc.wait()
        return True
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        proc.poll()
        if not _group_alive(pgid):
            proc.wait()
            return True
        time.sleep(0.1)
    log.warning("the scoring server did not stop within %.0fs: killing it", timeout)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
    return False


@dataclass
class Server:
    """A running scoring server: its process, URL and the model version it serves."""

    proc: subprocess.Popen
    url: str
    model_uri: str  # as given
    served_uri: str  # pinned
    version: str | None
    ready_seconds: float = 0.0
    _tmp: tempfile.TemporaryDirectory | None = None

    def stop(self) -> bool:
        try:
            return stop_server(self.proc)
        finally:
            if self._tmp is not None:
                self._tmp.cleanup()


def start(cfg: ServeConfig, tracking_uri: str, registry_uri: str, stop=None) -> Server:
    """Resolve the model, start the server and wait for ``/ping`` (or ``stop``); the caller stops it."""
    served, version = pin_model(cfg.model_uri)
    port = cfg.port or free_port(cfg.host)
    tmp = tempfile.TemporaryDirectory(prefix="dolly-serve-")
    env = server_env(tracking_uri, registry_uri, access_log_config(Path(tmp.name) / "log_config.json"))
    log.info("starting MLflow's scoring server for %s on %s:%s", served, cfg.host, port)
    preexec = _die_with_parent if sys.platform.startswith("linux") else None
    proc = subprocess.Popen(server_command(cfg, served, port), env=env, start_new_session=True, preexec_fn=preexec)
    host = "127.0.0.1" if cfg.host in ("0.0.0.0", "::") else cfg.host
    server = Server(proc, f"http://{host}:{port}", cfg.model_uri, served, version, _tmp=tmp)
    try:
        server.ready_seconds = wait_ready(server.url, proc, cfg.start_timeout, stop)
    except BaseException:
        server.stop()
        raise
    return server


def curl_example(url: str) -> str:
    body = {
        "dataframe_records": [{"instruction": "Explain what a Delta table is in one sentence."}],
        "params": {"max_new_tokens": 64, "temperature": 0.7},
    }
    return f"curl -s {url}/invocations -H 'Content-Type: application/json' -d '{json.dumps(body)}'"
