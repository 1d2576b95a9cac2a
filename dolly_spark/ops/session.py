"""Spark session factory: Databricks' own session, a Spark Connect remote, or embedded Sail.

One code path for all three: only the DataFrame/SQL API (no RDDs, no JVM handles).
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
from dataclasses import dataclass

log = logging.getLogger(__name__)
# The embedded engine's own log lines follow this logger: at INFO (``--verbose``) Sail's INFO lines
# show; else only its errors. A RUST_LOG the user set wins.
ENGINE_LOG = "dolly_spark.engine"

_EMBEDDED: dict[str, object] = {}


@dataclass(frozen=True)
class Engine:
    name: str  # "databricks" | "remote" | "sail"
    url: str | None = None


def detect_engine() -> Engine:
    if os.environ.get("DATABRICKS_RUNTIME_VERSION"):
        return Engine("databricks")
    if os.environ.get("SPARK_REMOTE"):
        return Engine("remote", os.environ["SPARK_REMOTE"])
    return Engine("sail")


@contextlib.contextmanager
def scoped_environ(**values: str):
    """Set environment variables inside the block and restore them afterwards, so a command
    never leaves the process (or the processes it starts later) a changed environment."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def engine_environ() -> dict[str, str]:
    """The embedded engine's settings; a value the user set wins.

    - No join swapping: the left input of every join is its hash table (ops/joins.py puts the
      small side there), and with swapping on the optimizer built the packing join on all gold rows.
    - RUST_LOG: errors only, unless ``ENGINE_LOG`` is at INFO (``--verbose``).
    """
    out = {} if "SAIL_OPTIMIZER__ENABLE_JOIN_SWAP" in os.environ else {"SAIL_OPTIMIZER__ENABLE_JOIN_SWAP": "false"}
    if "RUST_LOG" not in os.environ and not logging.getLogger(ENGINE_LOG).isEnabledFor(logging.INFO):
        out["RUST_LOG"] = "error"
    return out


def start_sail_server(host: str = "127.0.0.1", port: int = 0):
    """Start a Sail Spark Connect server in this process; returns (server, port). Port 0: a free one."""
    from pysail.spark import SparkConnectServer

    # Sail reads its config (SAIL_* variables) when a server is built, and sets up its logger
    # from RUST_LOG when the process builds its first one: both only need to hold for that call.
    with scoped_environ(**engine_environ()):
        server = SparkConnectServer(ip=host, port=port)
    server.start(background=True)
    return server, server.listening_address[1]


def shared_session_url(host: str, port: int, session_id: str) -> str:
    """A Spark Connect URL that joins one server-side session. Sail's catalog belongs to a
    session, so clients that share the tables registered there must share its id."""
    return f"sc://{host}:{port}/;session_id={session_id}"


def _start_sail() -> str:
    server, port = start_sail_server()
    _EMBEDDED["server"] = server
    atexit.register(stop_embedded)
    return f"sc://127.0.0.1:{port}"


def stop_embedded() -> None:
    server = _EMBEDDED.pop("server", None)
    spark = _EMBEDDED.pop("spark", None)
    if spark is not None:
        try:
            spark.stop()
        except Exception:  # the server may already be gone at interpreter exit
            pass
    if server is not None:
        server.stop()


def get_spark(app_name: str = "dolly_spark"):
    """Return a SparkSession for the detected engine, logging which one was chosen."""
    engine = detect_engine()
    if engine.name == "databricks":
        from pyspark.sql import SparkSession

        spark = SparkSession.getActiveSession() or SparkSession.builder.getOrCreate()
        log.info("engine: databricks (runtime %s)", os.environ["DATABRICKS_RUNTIME_VERSION"])
        return spark
    from pyspark.sql import SparkSession

    if engine.name == "remote":
        log.info("engine: Spark Connect remote %s", engine.url)
        return SparkSession.builder.remote(engine.url).appName(app_name).getOrCreate()
    if "spark" in _EMBEDDED:
        return _EMBEDDED["spark"]
    url = _start_sail()
    spark = SparkSession.builder.remote(url).appName(app_name).getOrCreate()
    _EMBEDDED["spark"] = spark
    log.info("engine: embedded Sail at %s", url)
    return spark


def engine_name() -> str:
    return detect_engine().name
