"""Checkpoint bookkeeping: completion markers, latest-good lookup, and rotation.

The Trainer writes ``checkpoint-<step>`` directories; every rank writes its own shard. A
checkpoint counts only once the ``COMPLETE`` marker exists, written by rank 0 after all ranks
passed a barrier following the save. A run killed mid-save leaves no marker, so resume skips
that directory and takes the previous good one.

The marker also lists every file of the checkpoint with its size, and a SHA-256 of each file up
to 1 MiB (of the first and last MiB for larger ones, so marking and checking a 12B checkpoint
reads a few MB per shard, not its tens of GB). ``is_complete`` checks them, so a checkpoint
truncated, altered or missing a shard after it was marked is skipped like a partial one.
Markers written before the file list existed are accepted with a warning (nothing to check).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
import time
from pathlib import Path

log = logging.getLogger(__name__)

MARKER = "COMPLETE"
HASH_WHOLE_MAX = 1 << 20  # files up to this size are hashed whole
HASH_EDGE = 1 << 20  # larger files: hash of their first and last HASH_EDGE bytes
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


def _sha256(path: Path, size: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        if size <= HASH_WHOLE_MAX:
            h.update(f.read())
        else:
            h.update(f.read(HASH_EDGE))
            f.seek(max(HASH_EDGE, size - HASH_EDGE))
            h.update(f.read(HASH_EDGE))
    return h.hexdigest()


def _checkpoint_files(path: Path) -> list[str]:
    """Relative POSIX paths of the checkpoint's files, the marker and its temp file excluded."""
    skip = {MARKER, MARKER + ".tmp"}
    return sorted(
        f.relative_to(path).as_posix()
        for f in path.rglob("*")
        if f.is_file() and f.relative_to(path).as_posix() not in skip
    )


def checkpoint_problem(path: str | Path) -> str | None:
    """Why ``path`` is not a usable checkpoint, or None when its marker's file list checks out."""
    p = Path(path)
    if (p / MARKER).is_file() and not (p / "trainer_state.json").is_file():
        return "no trainer_state.json"
    return marker_problem(p)


def marker_problem(path: str | Path) -> str | None:
    """Why a published directory is not complete (no marker, or files that differ from it), or None."""
    p = Path(path)
    if not (p / MARKER).is_file():
        return f"no {MARKER} marker"
    try:
        marker = json.loads((p / MARKER).read_text())
    except (OSError, ValueError) as err:
        return f"unreadable {MARKER} marker ({err})"
    files = marker.get("files") if isinstance(marker, dict) else None
    if files is None:
        return None  # an old marker without a file list: nothing to check (see legacy_marker)
    hashes = {**marker.get("sha256", {}), **marker.get("sha256_head_tail", {})}
    for rel, size in files.items():
        f = p / rel
        if not f.is_file():
            return f"{rel} is missing"
        actual = f.stat().st_size
        if actual != size:
            return f"{rel} has {actual} bytes, the marker says {size}"
        if rel in hashes and _sha256(f, actual) != hashes[rel]:
            return f"{rel} does not match its SHA-256 in the marker"
    return None


def legacy_marker(path: str | Path) -> bool:
    """True for a marker written before markers listed their files (accepted unchecked)."""
    try:
        marker = json.loads((Path(path) / MARKER).read_text())
    except (OSError, ValueError):
        return False
    return not isinstance(marker, dict) or "files" not in marker


def is_complete(path: str | Path) -> bool:
    return checkpoint_problem(path) is None


def is_published(path: str | Path) -> bool:
    """A directory published whole and marked (a saved base, a model): every listed file checks out."""
    return marker_problem(path) is None


def mark_complete(path: str | Path, step: int) -> Path:
    """Write the marker with every file's size and hash. Call only after all ranks saved."""
    root = Path(path)
    files, whole, head_tail = {}, {}, {}
    for rel in _checkpoint_files(root):
        size = (root / rel).stat().st_size
        files[rel] = size
        (whole if size <= HASH_WHOLE_MAX else head_tail)[rel] = _sha256(root / rel, size)
    marker = root / MARKER
    tmp = root / (MARKER + ".tmp")
    tmp.write_text(
        json.dumps(
            {"step": int(step), "time": time.time(), "files": files, "sha256": whole, "sha256_head_tail": head_tail},
            indent=1,
        )
    )
    tmp.replace(marker)  # atomic: the marker either exists whole or not at all
    return marker


def publish(local: str | Path, dest: str | Path) -> Path:
    """Copy a directory written on local disk to the output location whole: every file written
    once, front to back (all a Volume accepts), no permission bits copied, markers left out (the
    caller marks ``dest`` complete once every node has copied its shards)."""
    return Path(
        shutil.copytree(
            local,
            dest,
            dirs_exist_ok=True,
            copy_function=shutil.copyfile,
            ignore=shutil.ignore_patterns(MARKER, MARKER + ".tmp"),
        )
    )


def latest_complete_checkpoint(checkpoint_dir: str | Path) -> Path | None:
    for step, path in reversed(list_checkpoints(checkpoint_dir)):
        problem = checkpoint_problem(path)
        if problem is None:
            if legacy_marker(path):
                log.warning("checkpoint %s has an old %s marker without a file list: using it unchecked", path, MARKER)
            return path
        log.warning("skipping incomplete or corrupt checkpoint %s: %s", path, problem)
    return None


def remove_incomplete_after(checkpoint_dir: str | Path, good: Path | None) -> list[Path]:
    """Delete partial or corrupt checkpoints newer than ``good`` so a resumed run can write those steps again."""
    good_step = -1 if good is None else int(_CKPT.match(Path(good).name).group(1))
    removed = []
    for step, path in list_checkpoints(checkpoint_dir):
        problem = checkpoint_problem(path) if step > good_step else None
        if problem is not None:
            log.warning("removing incomplete or corrupt checkpoint %s: %s", path, problem)
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
