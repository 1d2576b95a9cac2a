"""The progress line rank 0 prints and the driver's launcher reads from the ranks' output.

Light on purpose (no torch, no transformers): the driver imports it.
"""

from __future__ import annotations

import json

PROGRESS_PREFIX = "DOLLY_PROGRESS "


def progress_line(payload: dict) -> str:
    return PROGRESS_PREFIX + json.dumps(payload)


def parse_progress(line: str) -> dict | None:
    """The payload of a progress line (anywhere in ``line``: launchers prefix rank output), else None."""
    idx = line.find(PROGRESS_PREFIX)
    if idx < 0:
        return None
    try:
        payload = json.loads(line[idx + len(PROGRESS_PREFIX) :])
    except ValueError:
        return None
    return payload if isinstance(payload, dict) else None
