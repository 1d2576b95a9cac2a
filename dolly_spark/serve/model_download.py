"""Where a registered model is downloaded so that every executor can load it.

The embedded engine's executors run on this machine: MLflow's own temp dir does. On a cluster
(Databricks, or any Spark Connect server) executors on worker nodes cannot see the driver's temp
dirs, so the model goes once to a shared path: ``--download-dir`` (the bundle passes a Volume
path), else ``<output root>/_work/models``; without either the job stops in one line.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

DOWNLOADED_MARKER = "DOWNLOADED"


class NoSharedDownloadDirError(ValueError):
    pass


def shared_download_dir(download_dir: str | None, output_root: str | None, engine: str) -> str | None:
    if download_dir:
        return download_dir
    if output_root:
        return str(Path(output_root).resolve() / "_work" / "models")
    if engine == "sail":
        return None
    raise NoSharedDownloadDirError(
        f"engine {engine!r}: executors cannot read a driver temp dir; pass --download-dir on a path every "
        "node reads (a UC Volume, e.g. /Volumes/<catalog>/<schema>/<volume>/models/downloads)"
    )


def download_model_once(pinned_uri: str, version: str, download_dir: str | None) -> str:
    """Download ``pinned_uri`` (a fixed version) into ``<download_dir>/<version>`` unless an earlier
    job already finished that download (marker written last), and return the local path."""
    import mlflow

    if download_dir is None:
        return mlflow.artifacts.download_artifacts(artifact_uri=pinned_uri)
    target = Path(download_dir) / re.sub(r"[^A-Za-z0-9_.-]", "_", version)
    marker = target / DOWNLOADED_MARKER
    if marker.is_file():
        return json.loads(marker.read_text())["path"]
    target.mkdir(parents=True, exist_ok=True)
    local = mlflow.artifacts.download_artifacts(artifact_uri=pinned_uri, dst_path=str(target))
    marker.write_text(json.dumps({"uri": pinned_uri, "path": str(local)}))
    return local
