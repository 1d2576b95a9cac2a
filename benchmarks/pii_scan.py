"""Cost of prepare's PII/secrets detectors on real records, and what the digit prefilter saves.

    python -m benchmarks.pii_scan [--input ../shared/data/databricks-dolly-15k.jsonl] [--records N]

Times ``detectors.find`` on every text field twice in this process: with the prefilter (a text
with fewer digits than a kind's matches hold, or no "@" for an email, skips that recognizer)
and with every recognizer on every text, the baseline. It checks both give the same findings and
prints the ratio, the findings by kind and how many records have one.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter

from dolly_spark.prep import detectors
from tests.shared_data import DOLLY_JSONL

FIELDS = ("instruction", "context", "response")
KINDS = frozenset(detectors.PII_KINDS + detectors.SECRET_KINDS)


def _scan(texts: list[str]) -> tuple[float, list]:
    t0 = time.perf_counter()
    found = [detectors.find(t, KINDS) for t in texts]
    return time.perf_counter() - t0, found


def _without_prefilter(texts: list[str]) -> tuple[float, list]:
    t0 = time.perf_counter()
    found = [_all(t) if t else [] for t in texts]
    return time.perf_counter() - t0, found


def _all(text: str) -> list:
    """``detectors.find`` with each recognizer run on every text (the post-filter still applies)."""
    found = []
    for kind, rec in detectors._pii_recognizers().items():
        for r in rec.analyze(text, rec.supported_entities, None):
            if kind in detectors.NEEDS_CONTEXT and not detectors._has_context(text, r.start, rec.context):
                continue
            if detectors._plausible(kind, text, r.start, r.end):
                found.append(detectors.Finding(kind, r.start, r.end))
    return detectors.resolve_overlaps(found + detectors.secret_findings(text, KINDS))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--input", default=str(DOLLY_JSONL))
    p.add_argument("--records", type=int, default=None)
    args = p.parse_args(argv)
    with open(args.input) as f:
        records = [json.loads(line) for line in f][: args.records]
    texts = [r.get(c) or "" for r in records for c in FIELDS]
    detectors.find("warm up a@b.com 415-555-0132", KINDS)
    t_fast, fast = _scan(texts)
    t_base, base = _without_prefilter(texts)
    assert fast == base, "the prefilter changed a finding"
    by_kind = Counter(f.kind for fs in fast for f in fs)
    with_findings = sum(any(fast[i + j] for j in range(len(FIELDS))) for i in range(0, len(texts), len(FIELDS)))
    print(f"records {len(records)}, texts {len(texts)}; records with a finding: {with_findings}")
    print(f"findings by kind: {dict(sorted(by_kind.items()))}")
    print(f"scan with prefilter / every recognizer on every text: {t_fast / t_base:.3f} (same findings)")
    print(f"per record, with prefilter: {1000 * t_fast / len(records):.2f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
