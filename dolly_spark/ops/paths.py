"""Keep every path a job writes (MLflow artifacts, checkpoints, outputs) inside its configured root.

Paths are resolved first, so ``..``, absolute paths and symlinks pointing out of the root are all
caught. ``file:`` URIs and ``sqlite:///`` tracking URIs are checked as the local paths they name.
Remote URIs (``dbfs:``, ``s3://``, ``databricks``...) are not local writes and are checked only
when the root is itself a URI of the same scheme.

``engine_path`` hands the embedded engine any local path, odd characters included.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import uuid
from pathlib import Path
from urllib.parse import unquote, urlparse


class PathOutsideRootError(ValueError):
    """A path would be written outside the root it is confined to."""


def local_scratch(*parts: str) -> Path:
    """A directory on this node's local disk for hot writes: per-step metrics, HF caches,
    in-progress checkpoints. Unity Catalog Volumes take no appends or random writes, so those
    never go to the output location directly: ``/local_disk0`` on Databricks, the temp dir
    elsewhere, ``DOLLY_LOCAL_SCRATCH`` to choose."""
    base = os.environ.get("DOLLY_LOCAL_SCRATCH")
    if not base:
        on_databricks = os.environ.get("DATABRICKS_RUNTIME_VERSION") and os.path.isdir("/local_disk0")
        base = "/local_disk0/dolly_spark" if on_databricks else os.path.join(tempfile.gettempdir(), "dolly_spark")
    path = Path(base, *parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


_WINDOWS_DRIVE = re.compile(r"^[A-Za-z]:[\\/]")


def local_path_of(uri_or_path: str | os.PathLike) -> Path | None:
    """The local filesystem path a path or URI names, or None for a remote URI."""
    s = os.fspath(uri_or_path)
    if "\x00" in s:
        raise PathOutsideRootError(f"path {s!r} contains a NUL byte")
    if s.startswith("sqlite:///"):
        return (
            Path(unquote(s[len("sqlite:///") :]).split("?", 1)[0]).absolute()
            if not s.startswith("sqlite:////")
            else Path("/" + unquote(s[len("sqlite:////") :]).split("?", 1)[0])
        )
    if s.startswith("file:"):
        return Path(unquote(urlparse(s).path))
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", s) and not _WINDOWS_DRIVE.match(s):
        return None
    return Path(s)


def ensure_within_root(path: str | os.PathLike, root: str | os.PathLike) -> Path:
    """Return ``path`` resolved (relative paths are taken relative to ``root``) if it lies inside
    ``root``; raise :class:`PathOutsideRootError` otherwise.

    >>> ensure_within_root("ckpt/step-10", "/tmp/run")
    PosixPath('/tmp/run/ckpt/step-10')
    """
    root_s, path_s = os.fspath(root), os.fspath(path)
    root_local = local_path_of(root_s)
    target = local_path_of(path_s)
    if root_local is None or target is None:
        if root_local is None and target is None and _same_remote_prefix(path_s, root_s):
            return Path(path_s)
        raise PathOutsideRootError(f"refusing to write {path_s!r}: it is not inside the configured root {root_s!r}")
    root_resolved = root_local.expanduser().resolve()
    candidate = target.expanduser()
    if not candidate.is_absolute():
        candidate = root_resolved / candidate
    resolved = candidate.resolve()  # follows symlinks that exist, normalises ``..``
    if resolved != root_resolved and root_resolved not in resolved.parents:
        raise PathOutsideRootError(
            f"refusing to write {path_s!r} (resolves to {resolved}): it is outside the configured root {root_resolved}"
        )
    return resolved


def safe_join(root: str | os.PathLike, *parts: str) -> Path:
    """``root / parts`` for untrusted parts (run names, checkpoint tags), confined to ``root``."""
    for p in parts:
        if not p or "\x00" in p:
            raise PathOutsideRootError(f"invalid path component {p!r}")
    return ensure_within_root(Path(*parts), root)


def _same_remote_prefix(path: str, root: str) -> bool:
    p, r = urlparse(path), urlparse(root)
    if p.scheme != r.scheme or p.netloc != r.netloc:
        return False
    parts = [x for x in p.path.split("/") if x]
    if ".." in parts:
        return False
    rparts = [x for x in r.path.split("/") if x]
    return parts[: len(rparts)] == rparts


# What the embedded engine (Sail) takes as is in a local path. Other characters it percent-encodes
# on disk (it writes "/r/a b" to "/r/a%20b") or cuts the path at ("/r/a?b" becomes "/r/a").
_ENGINE_SAFE = re.compile(r"[A-Za-z0-9._/+=@,-]*")


def engine_path(path: str | os.PathLike) -> str:
    """``path`` as the embedded engine should be given it, so its files land exactly there.

    A path the engine takes as is comes back unchanged, and so does a remote URI. Otherwise the
    deepest directory whose name holds other characters (a space, ``é``, a quote...) is reached
    through a symlink with a plain name under local scratch: ``/r/my root/tables/gold`` becomes
    ``<scratch>/engine_paths/<hash>/tables/gold``. That directory is created if missing (a link
    must point at something; the engine's write would create it anyway).
    """
    s = os.fspath(path)
    local = local_path_of(s)
    if local is None or _ENGINE_SAFE.fullmatch(s):
        return s
    parts = local.absolute().parts
    odd = max(i for i, part in enumerate(parts) if not _ENGINE_SAFE.fullmatch(part))
    return str(_engine_alias(Path(*parts[: odd + 1])).joinpath(*parts[odd + 1 :]))


def _engine_alias(target: Path) -> Path:
    """A symlink to ``target`` with a plain name, reused while it points there."""
    base = local_scratch("engine_paths")
    if not _ENGINE_SAFE.fullmatch(str(base)):
        raise ValueError(f"local scratch {base} holds characters the engine rewrites; set DOLLY_LOCAL_SCRATCH")
    if not target.exists():
        target.mkdir(parents=True, exist_ok=True)
    link = base / hashlib.sha256(os.fsencode(target)).hexdigest()[:32]
    if link.is_symlink() and os.readlink(link) == str(target):
        return link
    tmp = base / f".{link.name}.{uuid.uuid4().hex}"
    os.symlink(target, tmp, target_is_directory=target.is_dir())
    os.replace(tmp, link)  # atomic: a concurrent job sees the old link or the new one
    return link
