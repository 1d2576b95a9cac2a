"""One ``prepare`` at a time per output root.

Locally: an exclusive ``fcntl.flock`` on ``ROOT/_prepare.lock``, taken without waiting. The
kernel drops it when the holder dies (SIGKILL included), so a killed run never leaves a stale
lock; the file keeps the holder's pid, host, run id and start time for the loser's message.
Re-entrant within a process (the command layer and ``prepare.run`` both take it).

On Databricks (``--catalog``) there is no shared filesystem lock: the job in
``bundles/`` runs with ``max_concurrent_runs: 1``, and ``prepare`` refuses to start while the
manifest shows another run ``started`` less than ``LEASE_HOURS`` ago without committing (see
``prep.prepare._check_lease``).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import threading
from datetime import UTC, datetime
from pathlib import Path

LOCK_NAME = "_prepare.lock"
_held: dict[str, tuple[int, int]] = {}  # lock path -> (fd, depth) held by this process
_guard = threading.Lock()


class ConcurrentRunError(RuntimeError):
    """Another prepare holds the output root."""


def lock_path(root: str | os.PathLike) -> Path:
    return Path(root).resolve() / LOCK_NAME


def holder(root: str | os.PathLike) -> dict:
    """What the lock file says about its last holder ({} when unreadable)."""
    try:
        return json.loads(lock_path(root).read_text() or "{}")
    except (OSError, ValueError):
        return {}


@contextlib.contextmanager
def exclusive(root: str | os.PathLike, run_id: str, what: str = "prepare"):
    """Hold the root's lock for the block, or raise :class:`ConcurrentRunError` at once."""
    path = lock_path(root)
    key = str(path)
    with _guard:
        if key in _held:
            fd, depth = _held[key]
            _held[key] = (fd, depth + 1)
            acquired = False
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                h = holder(root)
                raise ConcurrentRunError(
                    f"another {what} is running on {Path(root).resolve()} (run {h.get('run_id', '?')}, pid "
                    f"{h.get('pid', '?')} on {h.get('host', '?')}, started {h.get('started_at', '?')}); "
                    "wait for it to finish: two runs on one root would overwrite each other's tables"
                ) from None
            info = {
                "run_id": run_id,
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
                "what": what,
            }
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(info).encode(), 0)
            _held[key] = (fd, 1)
            acquired = True
    try:
        yield acquired
    finally:
        with _guard:
            fd, depth = _held[key]
            if depth > 1:
                _held[key] = (fd, depth - 1)
            else:
                del _held[key]
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)
