"""Spark session factory: Databricks' own session, a Spark Connect remote, or embedded Sail.

One code path for all three: only the DataFrame/SQL API (no RDDs, no JVM handles).
"""

from __future__ import annotations

import atexit
import logging
import os
from dataclasses import dataclass

log = logging.getLogger(__name__)

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


def start_sail_server(host: str = "127.0.0.1", port: int = 0):
    """Start a Sail Spark Connect server in this process; returns (server, port). Port 0: a free one."""
    from pysail.spark import SparkConnectServer

    # The left input of every join is its hash table (ops/joins.py puts the small side there):
    # with swapping on, the optimizer built the packing join on all gold rows (issue 16).
    os.environ.setdefault("SAIL_OPTIMIZER__ENABLE_JOIN_SWAP", "false")
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
