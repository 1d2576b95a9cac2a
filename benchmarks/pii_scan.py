"""Cost of prepare's PII/secrets detectors on real records, and what the digit prefilter saves.

    python -m benchmarks.pii_scan [--input ../shared/data/databricks-dolly-15k.jsonl] [--records N] [--raw-text]

Times ``detectors.find`` on every text field twice in this process: with the prefilter (a text
with fewer digits than a kind's matches hold, or no "@" for an email, skips that recognizer; the
phone recognizer sees only runs of digits; the keyword plugin only texts with one of its
keywords) and with every recognizer and plugin on every whole text, the baseline. It checks both give the same findings and
prints the ratio, the findings by kind and how many records have one. Then the engine's gate
(``detectors.scan_gate``): it checks every text with a finding passes it, and times the scan of
the texts that pass against the scan of all, in one pass. ``--prepare`` times
``prepare --until silver`` with the scan on and off instead (best of two each, alternated).
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter

import regex

from dolly_spark.prep import detectors
from dolly_spark.prep.clean import normalize_text_value
from tests.shared_data import DOLLY_JSONL

FIELDS = ("instruction", "context", "response")
KINDS = frozenset(detectors.PII_KINDS + detectors.SECRET_KINDS)


def _scan(texts: list[str]) -> tuple[float, list]:
    detectors._phone_spans.cache_clear()  # each timed scan starts cold
    t0 = time.perf_counter()
    found = [detectors.find(t, KINDS) for t in texts]
    return time.perf_counter() - t0, found


def _without_prefilter(texts: list[str]) -> tuple[float, list]:
    t0 = time.perf_counter()
    found = [_all(t) if t else [] for t in texts]
    return time.perf_counter() - t0, found


def _all(text: str) -> list:
    """``detectors.find`` without its prefilter: every recognizer and plugin on the whole text."""
    found = detectors.pii_findings(text, KINDS, prefilter=False) + detectors.secret_findings(
        text, KINDS, prefilter=False
    )
    return detectors.resolve_overlaps(found)


def prepare_ratio(input_path: str, repeats: int = 2) -> None:
    """``prepare --until silver`` with the scan on and off, alternated, best of ``repeats`` each."""
    import os
    import tempfile

    from dolly_spark.ops.session import get_spark
    from dolly_spark.prep.pii import PiiConfig
    from dolly_spark.prep.prepare import PrepareConfig, run

    spark, best = get_spark(), {}
    for scan in (False, True) * repeats:
        cfg = PrepareConfig(input=input_path, output_root=tempfile.mkdtemp(), until="silver", pii=PiiConfig(scan=scan))
        t0 = time.perf_counter()
        result = run(cfg, spark)
        best[scan] = min(best.get(scan, float("inf")), time.perf_counter() - t0)
    print(
        f"prepare --until silver: scan on {best[True]:.1f} s, off {best[False]:.1f} s, on / off {best[True] / best[False]:.2f}"
    )
    print(f"silver details.pii: {json.dumps(result.details['pii'], sort_keys=True)}")
    os._exit(0)  # deltalake can abort at exit after reading several tables


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--input", default=str(DOLLY_JSONL))
    p.add_argument("--records", type=int, default=None)
    p.add_argument("--list", action="store_true", help="print every finding with its context, for review")
    p.add_argument("--raw-text", action="store_true", help="scan the text as published (prepare --raw-text)")
    p.add_argument("--prepare", action="store_true", help="instead: time prepare --until silver, scan on / off")
    args = p.parse_args(argv)
    if args.prepare:
        prepare_ratio(args.input)
    with open(args.input) as f:
        records = [json.loads(line) for line in f][: args.records]
    # What silver holds, and so what prepare scans: the cleaned text unless --raw-text.
    clean = (lambda t: t) if args.raw_text else normalize_text_value
    texts = [clean(r.get(c) or "") for r in records for c in FIELDS]
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
    gate = regex.compile(detectors.scan_gate())
    passed = [bool(t) and gate.search(t) is not None for t in texts]
    assert all(p for p, found in zip(passed, fast) if found), "a text with a finding fails the gate"
    t_gated, _ = _scan([t for t, p in zip(texts, passed) if p])
    print(
        f"texts passing the gate: {sum(passed)} of {len(texts)}; scan of those / scan of all: "
        f"{t_gated / t_fast:.3f} (every text with a finding passes)"
    )
    if args.list:
        for i in range(0, len(texts), len(FIELDS)):
            for j, field in enumerate(FIELDS):
                for f in fast[i + j]:
                    t = texts[i + j]
                    around = t[max(0, f.start - 40) : f.end + 20].replace("\n", " ")
                    print(f"{i // len(FIELDS)}\t{field}\t{f.kind}\t{t[f.start : f.end]!r}\t{around!r}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
