"""Checkpoint bookkeeping: completion markers, latest-good lookup, and rotation.

The Trainer writes ``checkpoint-<step>`` directories; every rank writes its own shard. A
checkpoint counts only once the ``COMPLETE`` marker exists, written by rank 0 after all ranks
passed a barrier following the save. A run killed mid-save leaves no marker, so resume skips
that directory and takes the previous good one.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import time
from pathlib import Path

log = logging.getLogger(__name__)

MARKER = "COMPLETE"
_CKPT = re.compile(r"^checkpoint-(\d+)$")


def list_checkpoints(checkpoint_dir: str | Path) -> list[tuple[int, Path]]:
    """(step, path) of every ``checkpoint-N`` directory, oldest first."""
    root = Path(checkpoint_dir)
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _CKPT.match(p.name)
        if m and p.is_dir():
            found.append((int(m.group(1)), p))
    return sorted(found)


def is_complete(path: str | Path) -> bool:
    p = Path(path)
    return (p / MARKER).is_file() and (p / "trainer_state.json").is_file()


def mark_complete(path: str | Path, step: int) -> Path:
    marker = Path(path) / MARKER
    tmp = marker.with_suffix(".tmp")
    tmp.write_text(json.dumps({"step": int(step), "time": time.time()}))
    tmp.replace(marker)  # atomic: the marker either exists whole or not at all
    return marker


def latest_complete_checkpoint(checkpoint_dir: str | Path) -> Path | None:
    for step, path in reversed(list_checkpoints(checkpoint_dir)):
        if is_complete(path):
            return path
        log.warning("skipping incomplete checkpoint %s (no %s marker)", path, MARKER)
    return None


def remove_incomplete_after(checkpoint_dir: str | Path, good: Path | None) -> list[Path]:
    """Delete partial checkpoints newer than ``good`` so a resumed run can write those steps again."""
    good_step = -1 if good is None else int(_CKPT.match(Path(good).name).group(1))
    removed = []
    for step, path in list_checkpoints(checkpoint_dir):
        if step > good_step and not is_complete(path):
            log.warning("removing incomplete checkpoint %s", path)
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def rotate(checkpoint_dir: str | Path, keep: int) -> list[Path]:
    """Keep the newest ``keep`` complete checkpoints; drop older ones, complete or not."""
    ckpts = list_checkpoints(checkpoint_dir)
    complete = [(s, p) for s, p in ckpts if is_complete(p)]
    if not complete:
        return []
    kept = {p for _, p in complete[-keep:]}
    oldest_kept = min(s for s, p in complete if p in kept)
    removed = []
    for step, path in ckpts:
        if path not in kept and step < oldest_kept:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed
