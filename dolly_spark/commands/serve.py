"""``dolly-spark serve --model-uri models:/dolly@champion [--port N]``: real-time serving.

Serves the registered pyfunc through MLflow's own scoring server, the contract Databricks Model
Serving uses: ``GET /ping``; ``POST /invocations`` with ``dataframe_records``,
``dataframe_split`` or ``inputs`` (``instruction``, optional ``context``), and Dolly's sampling
parameters as ``params`` (``max_new_tokens``, ``temperature``, ``top_p``, ``top_k``, ``greedy``,
``seed``, ``batch_size``). One log line per request. Runs until interrupted (Ctrl-C or SIGTERM),
then stops the server and exits 0. ``models:/NAME@ALIAS`` is resolved once at start.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading

from dolly_spark.commands.common import cli_errors, parse_job
from dolly_spark.serve import server as serving
from dolly_spark.serve.server import ServeConfig, ServerExitedError

CONFIG = ServeConfig
log = logging.getLogger(__name__)


def announce(server: serving.Server, out=None) -> None:
    out = out or sys.stdout
    version = f" (version {server.version})" if server.version else ""
    print(f"serving {server.model_uri} as {server.served_uri}{version} at {server.url}", file=out)
    print(f"ready in {server.ready_seconds:.1f}s; try:\n{serving.curl_example(server.url)}", file=out)
    print("serving until interrupted (Ctrl-C)", file=out, flush=True)


def run(cfg: ServeConfig, stop: threading.Event) -> int:
    """Serve until ``stop`` is set; ServerExitedError if the server ends on its own."""
    from dolly_spark.ops.mlflow_store import use_store

    tracking_uri, registry_uri = use_store(cfg.output_root, cfg.catalog)
    server = serving.start(cfg, tracking_uri, registry_uri, stop)
    try:
        if not stop.is_set():
            announce(server)
        while not stop.wait(0.5):
            if server.proc.poll() is not None:
                raise ServerExitedError(f"the scoring server exited with status {server.proc.returncode}")
    finally:
        clean = server.stop()
    log.info("stopped the scoring server at %s%s", server.url, "" if clean else " (killed)")
    print("stopped", flush=True)
    return 0


@cli_errors("serve")
def main(argv: list[str] | None = None) -> int:
    cfg = parse_job(ServeConfig, argv, "serve", __doc__)
    stop = threading.Event()
    # Ctrl-C reaches only this process (the server runs in its own process group): stop it here.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    return run(cfg, stop)
