"""Source licences (SPDX ids) and whether they clear a model trained on them for commercial use.

``commercial_use`` answers ``"true"``, ``"false"`` or ``"unknown"`` per licence; ``combine``
answers for a mix of sources: one non-commercial source is enough to make the mix ``false``.
Dolly 1.0 was trained on Alpaca (CC-BY-NC-4.0) and could not be shipped; the table says so.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

UNKNOWN = "unknown"
TRUE, FALSE = "true", "false"

# Commercial use allowed: permissive, public-domain and copyleft (share-alike) licences.
COMMERCIAL = (
    "0BSD",
    "AGPL-3.0-only",
    "AGPL-3.0-or-later",
    "Apache-2.0",
    "Artistic-2.0",
    "BSD-2-Clause",
    "BSD-3-Clause",
    "BSL-1.0",
    "CC-BY-2.0",
    "CC-BY-2.5",
    "CC-BY-3.0",
    "CC-BY-4.0",
    "CC-BY-SA-2.0",
    "CC-BY-SA-2.5",
    "CC-BY-SA-3.0",
    "CC-BY-SA-4.0",
    "CC-PDDC",
    "CC0-1.0",
    "CDLA-Permissive-1.0",
    "CDLA-Permissive-2.0",
    "CDLA-Sharing-1.0",
    "EPL-2.0",
    "GPL-2.0-only",
    "GPL-2.0-or-later",
    "GPL-3.0-only",
    "GPL-3.0-or-later",
    "ISC",
    "LGPL-2.1-only",
    "LGPL-2.1-or-later",
    "LGPL-3.0-only",
    "LGPL-3.0-or-later",
    "MIT",
    "MPL-2.0",
    "ODbL-1.0",
    "ODC-By-1.0",
    "PDDL-1.0",
    "Unlicense",
    "Zlib",
)
# Non-commercial SPDX ids without the CC "-NC" element (those are caught by _NC below).
NON_COMMERCIAL = ("NCGL-UK-2.0", "PolyForm-Noncommercial-1.0.0")
KNOWN = {i.lower(): i for i in (*COMMERCIAL, *NON_COMMERCIAL, UNKNOWN)}
# The NonCommercial element of the CC family: CC-BY-NC-4.0, CC-BY-NC-SA-3.0, CC-BY-NC-ND-3.0-DE...
_NC = re.compile(r"-NC(?:-|$)", re.IGNORECASE)
# An SPDX short id: letters, digits, '.', '-' (a trailing '+' means "or later"); LicenseRef-x too.
_SPDX_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9.-]*\+?")


def canonical(license_id: str) -> str:
    """The SPDX id in its canonical spelling (matched case-insensitively), ``unknown`` kept;
    an id of another spelling is returned as given. ValueError for what cannot be an SPDX id."""
    text = str(license_id).strip()
    if not _SPDX_ID.fullmatch(text):
        raise ValueError(
            f"license {license_id!r} is not an SPDX licence id (one id such as CC-BY-SA-3.0, Apache-2.0 or MIT, "
            f"or {UNKNOWN})"
        )
    known = KNOWN.get(text.lower())
    return known or (text.upper() if _NC.search(text) else text)


def commercial_use(license_id: str | None) -> str:
    """``true``, ``false`` or ``unknown`` for one licence (None: unknown)."""
    if license_id is None:
        return UNKNOWN
    lid = canonical(license_id)
    if _NC.search(lid) or lid in NON_COMMERCIAL:
        return FALSE
    return TRUE if lid in COMMERCIAL else UNKNOWN


def combine(statuses: Iterable[str]) -> str:
    """The mix: false if any is false, else unknown if any is unknown (or there is none), else true."""
    seen = set(statuses)
    if FALSE in seen:
        return FALSE
    return TRUE if seen == {TRUE} else UNKNOWN


def combined_use(licenses: Mapping[str, str]) -> str:
    """``combine`` over the licences of ``{source: licence}``."""
    return combine(commercial_use(lic) for lic in licenses.values())


def offending(licenses: Mapping[str, str]) -> list[tuple[str, str]]:
    """(source, licence) of the sources that keep the mix from ``true``: non-commercial first."""
    rank = {FALSE: 0, UNKNOWN: 1}
    bad = [(name, lic) for name, lic in licenses.items() if commercial_use(lic) != TRUE]
    return sorted(bad, key=lambda p: rank[commercial_use(p[1])])


def to_text(licenses: Mapping[str, str]) -> str:
    """``{a: X, b: Y}`` -> ``a=X;b=Y`` (the form of the run's and the version's tags)."""
    return ";".join(f"{name}={lic}" for name, lic in licenses.items())


def from_text(text: str | None) -> dict[str, str]:
    """``a=X;b=Y`` -> ``{a: X, b: Y}``; an empty or absent text (``unknown`` too) -> ``{}``."""
    out: dict[str, str] = {}
    for item in (text or "").split(";"):
        name, sep, lic = item.rpartition("=")  # an id never holds '=': a name may
        if sep and name:
            out[name] = lic
    return out
