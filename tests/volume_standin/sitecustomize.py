"""A Unity Catalog Volume stand-in: under ``$DOLLY_VOLUME_STANDIN`` files can be created (or
truncated) and written front to back, read, renamed and removed, but an existing file cannot be
opened for append or for update in place (``a``/``r+`` modes, ``O_APPEND``, ``O_RDWR`` without
``O_TRUNC``), which is what a Volume's FUSE mount refuses.

On PYTHONPATH it loads into every Python process (commands, DeepSpeed ranks, engine workers).
Writes made by native code (sqlite, Delta via Rust) are not seen.
"""

import builtins
import io
import os

_ROOT = os.environ.get("DOLLY_VOLUME_STANDIN")

if _ROOT:
    _ROOT = os.path.realpath(_ROOT)
    _open, _os_open = io.open, os.open

    def _on_volume(path) -> bool:
        if isinstance(path, int):
            return False
        try:
            real = os.path.realpath(os.fsdecode(path))
        except (TypeError, ValueError):
            return False
        return real == _ROOT or real.startswith(_ROOT + os.sep)

    def _refuse(path, how):
        raise OSError(95, f"Volume stand-in: {how} is not supported on a Volume", os.fsdecode(path))

    def volume_open(file, mode="r", *args, **kwargs):
        if ("a" in mode or ("+" in mode and "w" not in mode and "x" not in mode)) and _on_volume(file):
            _refuse(file, f"open mode {mode!r}")
        return _open(file, mode, *args, **kwargs)

    def volume_os_open(path, flags, *args, **kwargs):
        updates = flags & os.O_RDWR and not flags & (os.O_TRUNC | os.O_EXCL) and os.path.exists(path)
        if (flags & os.O_APPEND or updates) and _on_volume(path):
            _refuse(path, "append or update in place")
        return _os_open(path, flags, *args, **kwargs)

    builtins.open = io.open = volume_open
    os.open = volume_os_open
