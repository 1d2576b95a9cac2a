"""``dolly-spark engine --output-root DIR``: serve the prepared tables over Spark Connect.

Starts the embedded Sail server, registers every table and view of the root in one server-side
session and prints that session's ``sc://`` URL. Sail's catalog belongs to a session, so the URL
carries its ``session_id``: ``SPARK_REMOTE=<url>`` makes ``dolly-spark`` commands,
``pyspark --remote <url>`` and notebooks join it and see the tables by name. Runs until
interrupted (Ctrl-C or SIGTERM). Views pin the table snapshot they were created on, so the
tables and views are re-registered whenever a table gets a new Delta version.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import uuid
from dataclasses import dataclass, field

from dolly_spark.commands.common import parse_job
from dolly_spark.ops.config import LocalRoot

log = logging.getLogger(__name__)


@dataclass
class EngineConfig(LocalRoot):
    host: str = field(default="127.0.0.1", metadata={"help": "address to listen on (default: loopback only)"})
    port: int = field(default=0, metadata={"help": "port to listen on (default 0: a free port)"})
    refresh_seconds: float = field(
        default=5.0, metadata={"help": "how often to look for new table versions and a lost session (0: never)"}
    )

    def __post_init__(self):
        if not self.output_root:
            raise ValueError(
                "give --output-root DIR (the engine serves a local root; on Databricks use a SQL warehouse)"
            )
        if not 0 <= self.port <= 65535:
            raise ValueError(f"--port {self.port}: expected 0-65535")
        if self.refresh_seconds < 0:
            raise ValueError("--refresh-seconds must be >= 0")


CONFIG = EngineConfig


class Engine:
    """One Sail server and the shared session that holds the root's tables and views."""

    def __init__(self, cfg: EngineConfig):
        from dolly_spark.ops.session import start_sail_server

        self.cfg = cfg
        self.names = cfg.table_names()
        self.server, self.port = start_sail_server(cfg.host, cfg.port)
        self.spark = None
        self.url = ""
        self.versions: dict[str, int] = {}

    def connect(self) -> tuple[list[str], list[str]]:
        """A fresh session id with everything registered: at start, and after a client released it."""
        from pyspark.sql import SparkSession

        from dolly_spark.ops.session import shared_session_url

        self.close_session()
        host = "127.0.0.1" if self.cfg.host in ("0.0.0.0", "::") else self.cfg.host
        self.url = shared_session_url(host, self.port, str(uuid.uuid4()))
        self.spark = SparkSession.builder.remote(self.url).appName("dolly_spark_engine").create()
        return self.refresh()

    def refresh(self) -> tuple[list[str], list[str]]:
        from dolly_spark.ops import tables
        from dolly_spark.prep.views import open_tables

        self.versions = tables.local_versions(self.names)
        return open_tables(self.spark, self.names)

    def check(self) -> str | None:
        """Re-register after new table versions; a new session if a client released ours. Returns
        what changed, or None."""
        from pyspark.errors import PySparkException

        from dolly_spark.ops import tables

        try:
            self.spark.sql("SELECT 1").collect()
        except PySparkException as err:
            log.warning("session lost (%s): opening a new one", str(err).splitlines()[0])
            self.connect()
            return "session"
        if tables.local_versions(self.names) != self.versions:
            self.refresh()
            return "versions"
        return None

    def close_session(self) -> None:
        """Close our client before the server goes: its exit hook would otherwise retry RPCs
        against the stopped server for minutes."""
        if self.spark is not None:
            self.spark.stop()  # best effort by design: never raises
            self.spark = None

    def stop(self) -> None:
        self.close_session()
        self.server.stop()


def announce(engine: Engine, registered: list[str], views: list[str], out=None) -> None:
    out = out or sys.stdout
    print(engine.url, file=out)
    print(f"export SPARK_REMOTE='{engine.url}'", file=out)
    print(f"tables: {', '.join(registered) or '(none yet)'}", file=out)
    print(f"views: {', '.join(views) or '(none yet)'}", file=out)
    print("serving until interrupted (Ctrl-C)", file=out, flush=True)


def main(argv: list[str] | None = None) -> int:
    cfg = parse_job(EngineConfig, argv, "engine", __doc__, level=logging.WARNING)
    if os.environ.get("DATABRICKS_RUNTIME_VERSION"):
        print("dolly-spark engine: error: on Databricks the cluster is the engine", file=sys.stderr)
        return 1
    engine = Engine(cfg)
    stop = threading.Event()
    try:
        registered, views = engine.connect()
        # After the server and its first session: Sail's own Ctrl-C handler would stop the server
        # under a running query, whose client then retries for minutes. Ours replaces it.
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        announce(engine, registered, views)
        while not stop.wait(cfg.refresh_seconds or None):
            try:
                changed = engine.check()
            except Exception as err:  # a table mid-write, say: keep serving, try again next time
                log.warning("refresh failed, retrying in %ss: %s", cfg.refresh_seconds, str(err).splitlines()[0])
                continue
            if changed == "session":
                print(f"a client released the shared session; new URL:\n{engine.url}", flush=True)
    finally:
        engine.stop()
    return 0
