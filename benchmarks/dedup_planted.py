"""Planted-duplicate benchmark for ``dolly_spark.prep.dedup``: precision and recall of found pairs.

Takes N real dolly-15k records, plants one near-duplicate for each of a known subset (case,
whitespace, punctuation, 1-3 word edits, sentence reordering, or a mix), runs ``deduplicate``
and scores the pairs found:

- recall: planted (original, variant) pairs whose shingle Jaccard is at or above the threshold
  ("edits within the threshold") that end up in one group; also reported over all planted pairs;
- precision: found pairs with at least one planted record that are true, where true means
  same planted family, or linked through a natural duplicate that ``deduplicate`` finds in the
  N originals alone (those are real duplicates in dolly-15k, not planting errors).

Two planted classes target short records:

- ``subst_short``: a copy of a short record (every field at most 32 words, instruction and
  response at least 7) with one word substituted in the instruction and one, independently, in
  the response (not the same word, not the same replacement). These are duplicates.
- near misses, which must NOT be merged: ``near_miss_real`` (a short real record with one
  instruction word substituted and the response of another record: a different question with a
  different answer), ``near_miss_slot`` (one word of the instruction that the response repeats,
  changed in both: "safe for dogs to eat chocolate?" / "No, chocolate is ..." against the same
  with avocado, as found in dolly-15k) and ``near_miss_template`` (families such as "What is the capital of
  France?" / "...of Spain?" with their different answers). Any found pair touching one of these
  is a false positive (unless it is a natural duplicate among the originals).

Usage: python benchmarks/dedup_planted.py [--n 2000] [--planted 400] [--threshold 0.7] ...
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import re
import sys
import time
from collections import Counter, defaultdict
from dataclasses import fields, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dolly_spark.prep.clean import normalize_text_value  # noqa: E402
from dolly_spark.prep.dedup import (  # noqa: E402
    DedupConfig,
    add_shingles,
    deduplicate,
    field_shingle_columns,
    field_text_columns,
    normalize_for_matching,
    within_substitution_budget,
)

DEFAULT_DATA = Path(os.environ.get("DOLLY_SHARED_DATA", ROOT.parent / "shared" / "data")) / "databricks-dolly-15k.jsonl"
SILVER_SCHEMA = (
    "record_id string, instruction string, context string, response string, category string, "
    "source_file string, line_number long"
)
KINDS = ("case", "whitespace", "punctuation", "words_1", "words_2", "words_3", "reorder", "mixed")
TUNABLE = (
    "threshold",
    "ngram",
    "num_perm",
    "shingle",
    "fields",
    "fp_weight",
    "fn_weight",
    "per_field_threshold",
    "short_field_words",
    "short_field_substitution_rate",
)
FILLER = ("very", "also", "really", "the", "some", "just", "quite", "new", "main", "old")
SUBSTITUTES = ("house", "river", "green", "music", "winter", "paper", "garden", "silver", "window", "market")
# Different short questions with different answers: none of a family may be merged.
TEMPLATES = [
    (
        "What is the capital of {0}?",
        "{1}",
        [
            ("France", "Paris"),
            ("Spain", "Madrid"),
            ("Italy", "Rome"),
            ("Germany", "Berlin"),
            ("Japan", "Tokyo"),
            ("Egypt", "Cairo"),
            ("Peru", "Lima"),
            ("Kenya", "Nairobi"),
        ],
    ),
    (
        "What is the capital of {0}?",
        "The capital city of {0} is {1}.",
        [
            ("France", "Paris"),
            ("Spain", "Madrid"),
            ("Italy", "Rome"),
            ("Germany", "Berlin"),
            ("Japan", "Tokyo"),
            ("Egypt", "Cairo"),
            ("Peru", "Lima"),
        ],
    ),
    (
        "How many legs does a {0} have?",
        "A {0} has {1} legs.",
        [
            ("spider", "eight"),
            ("dog", "four"),
            ("bird", "two"),
            ("beetle", "six"),
            ("lobster", "ten"),
            ("horse", "four"),
            ("ant", "six"),
        ],
    ),
    (
        "Who was the {0} president of the United States?",
        "{1} was the {0} president of the United States.",
        [
            ("first", "George Washington"),
            ("second", "John Adams"),
            ("third", "Thomas Jefferson"),
            ("fourth", "James Madison"),
            ("fifth", "James Monroe"),
            ("sixth", "John Quincy Adams"),
        ],
    ),
    (
        "What is the boiling point of water in degrees {0}?",
        "Water boils at {1} degrees {0} at sea level.",
        [("Celsius", "100"), ("Fahrenheit", "212"), ("Kelvin", "373")],
    ),
    (
        "Who wrote the play {0}?",
        "The play {0} was written by {1}.",
        [
            ("Hamlet", "William Shakespeare"),
            ("Faust", "Johann Wolfgang von Goethe"),
            ("Medea", "Euripides"),
            ("Phaedra", "Jean Racine"),
        ],
    ),
    (
        "Which planet is the {0} from the Sun?",
        "{1} is the {0} planet from the Sun.",
        [
            ("first", "Mercury"),
            ("second", "Venus"),
            ("third", "Earth"),
            ("fourth", "Mars"),
            ("fifth", "Jupiter"),
            ("sixth", "Saturn"),
        ],
    ),
    (
        "What is the chemical symbol of {0} in the periodic table?",
        "The chemical symbol of {0} is {1}.",
        [("gold", "Au"), ("silver", "Ag"), ("iron", "Fe"), ("lead", "Pb"), ("copper", "Cu"), ("tin", "Sn")],
    ),
]


def load_records(path: Path, n: int, seed: int) -> list[dict]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    rng = random.Random(seed)
    picked = sorted(rng.sample(range(len(rows)), n))
    out = []
    for i in picked:
        r = rows[i]
        out.append(
            {
                "record_id": f"r{i:05d}",
                "instruction": normalize_text_value(r["instruction"]),
                "context": normalize_text_value(r.get("context") or ""),
                "response": normalize_text_value(r["response"]),
                "category": r["category"],
                "source_file": path.name,
                "line_number": i + 1,
            }
        )
    return out


# --- perturbations: each returns new (instruction, context) ---------------------------------


def _case(rng, text):
    mode = rng.choice(("upper", "title", "swap"))
    return text.upper() if mode == "upper" else text.title() if mode == "title" else text.swapcase()


def _whitespace(rng, text):
    return re.sub(r" ", lambda m: rng.choice(("  ", " ", "\t", " \n ")), text)


def _punctuation(rng, text):
    text = re.sub(r"[.,;:!?]", lambda m: rng.choice(("", m.group(0), "!", ",")), text)
    return text + rng.choice(("?", "!!", " ...", ""))


def _word_edits(rng, text, k):
    words = text.split(" ")
    for _ in range(k):
        op = rng.choice(("replace", "delete", "insert")) if len(words) > 1 else "insert"
        i = rng.randrange(len(words))
        if op == "replace":
            words[i] = rng.choice(FILLER)
        elif op == "delete":
            del words[i]
        else:
            words.insert(i, rng.choice(FILLER))
    return " ".join(words)


def _reorder(rng, text):
    sentences = re.split(r"(?<=[.!?])\s+", text)
    if len(sentences) < 2:
        return None
    i = rng.randrange(len(sentences) - 1)
    sentences[i], sentences[i + 1] = sentences[i + 1], sentences[i]  # swap two adjacent sentences
    return " ".join(sentences)


def perturb(rng: random.Random, rec: dict, kind: str) -> dict | None:
    ins, ctx = rec["instruction"], rec["context"]
    main_is_ctx = bool(ctx) and len(ctx.split()) > len(ins.split())
    target = ctx if main_is_ctx else ins

    def put(new):
        return (ins, new) if main_is_ctx else (new, ctx)

    if kind == "case":
        ins, ctx = _case(rng, ins), _case(rng, ctx)
    elif kind == "whitespace":
        ins, ctx = _whitespace(rng, ins), _whitespace(rng, ctx)
    elif kind == "punctuation":
        ins, ctx = _punctuation(rng, ins), _punctuation(rng, ctx)
    elif kind.startswith("words_"):
        ins, ctx = put(_word_edits(rng, target, int(kind[-1])))
    elif kind == "reorder":
        new = _reorder(rng, target)
        if new is None:
            return None
        ins, ctx = put(new)
    elif kind == "mixed":
        ins, ctx = _case(rng, ins), _whitespace(rng, ctx)
        ins, ctx = put(_word_edits(rng, ctx if main_is_ctx else ins, rng.randint(1, 2)))
    if (ins, ctx) == (rec["instruction"], rec["context"]):
        return None
    return {**rec, "instruction": ins, "context": ctx}


def plant(records: list[dict], n_planted: int, seed: int) -> tuple[list[dict], list[tuple[str, str, str]]]:
    rng = random.Random(seed + 1)
    variants, pairs = [], []
    for rec in rng.sample(records, n_planted):
        for attempt in range(5):
            kind = KINDS[(len(pairs) + attempt) % len(KINDS)]
            v = perturb(rng, rec, kind)
            if v is not None:
                vid = f"{rec['record_id']}-{kind}"
                variants.append({**v, "record_id": vid})
                pairs.append((rec["record_id"], vid, kind))
                break
    return variants, pairs


def _words(text: str) -> list[str]:
    return text.split(" ") if text else []


def is_short(rec: dict, max_words: int = 32, min_words: int = 7) -> bool:
    ins, ctx, resp = (_words(rec[k]) for k in ("instruction", "context", "response"))
    return min_words <= len(ins) <= max_words and min_words <= len(resp) <= max_words and len(ctx) <= max_words


def _substitute(rng: random.Random, text: str, avoid: set[str] = frozenset()) -> tuple[str, set[str]]:
    """One word replaced; returns the text and {old, new} (lower case). Words in ``avoid`` are
    neither replaced nor inserted: two independent edits rarely touch the same word."""
    words = text.split(" ")
    choices = [i for i, w in enumerate(words) if w.lower() not in avoid] or list(range(len(words)))
    i = rng.choice(choices)
    old = words[i]
    words[i] = rng.choice([w for w in SUBSTITUTES if w != old.lower() and w not in avoid])
    return " ".join(words), {old.lower(), words[i]}


def plant_short(records: list[dict], n: int, seed: int, taken: set[str]):
    """Copies of short records with one word substituted in the instruction and one in the response."""
    rng = random.Random(seed + 2)
    pool = [r for r in records if is_short(r) and r["record_id"] not in taken]
    variants, pairs = [], []
    for rec in rng.sample(pool, min(n, len(pool))):
        vid = f"{rec['record_id']}-subst_short"
        ins, touched = _substitute(rng, rec["instruction"])
        resp, _ = _substitute(rng, rec["response"], avoid=touched)  # an independent edit
        variants.append({**rec, "record_id": vid, "instruction": ins, "response": resp})
        pairs.append((rec["record_id"], vid, "subst_short"))
    return variants, pairs


def plant_near_misses(records: list[dict], n_real: int, seed: int, taken: set[str]) -> list[dict]:
    """Different questions that look alike: template families and real short records with one
    instruction word changed and another record's response."""
    rng = random.Random(seed + 3)
    out = []
    for t, (q, a, slots) in enumerate(TEMPLATES):
        for j, slot in enumerate(slots):
            out.append(
                {
                    "record_id": f"t{t:02d}-{j:02d}-near_miss_template",
                    "instruction": q.format(*slot),
                    "context": "",
                    "response": a.format(*slot),
                    "category": "open_qa",
                    "source_file": "templates",
                    "line_number": 0,
                }
            )
    pool = [r for r in records if is_short(r) and r["record_id"] not in taken]
    picked = rng.sample(pool, min(n_real, len(pool)))
    for rec in picked:
        other = rng.choice([r for r in records if r["record_id"] != rec["record_id"]])
        ins, _ = _substitute(rng, rec["instruction"])
        out.append(
            {
                **rec,
                "record_id": f"{rec['record_id']}-near_miss_real",
                "instruction": ins,
                "response": other["response"],
            }
        )
    # The slot follows into the answer ("safe for dogs to eat chocolate?" / "No, chocolate is ..."
    # against the same with avocado): a word of the instruction that the response repeats, changed in both.
    slots = 0
    for rec in pool:
        if slots >= n_real or rec in picked:
            continue
        resp_words = set(rec["response"].split(" "))
        shared = [w for w in rec["instruction"].split(" ") if w in resp_words and w.isalpha() and len(w) > 3]
        if not shared:
            continue
        w = rng.choice(shared)
        y = rng.choice([s for s in SUBSTITUTES if s != w.lower()])
        swap = lambda t: " ".join(y if x == w else x for x in t.split(" "))  # noqa: E731
        out.append(
            {
                **rec,
                "record_id": f"{rec['record_id']}-near_miss_slot",
                "instruction": swap(rec["instruction"]),
                "response": swap(rec["response"]),
            }
        )
        slots += 1
    return out


def rule_holds(a: list, b: list, cfg: DedupConfig) -> bool:
    """The dedup rule on one pair, in Python: [whole shingles, field shingles..., field texts...]."""
    nf = len(field_shingle_columns(cfg))
    j = [len(x & y) / len(x | y) for x, y in zip(a[: 1 + nf], b[: 1 + nf])]
    if not cfg.per_field_threshold:
        return j[0] >= cfg.threshold
    if not cfg.short_rule:
        return min(j) >= cfg.threshold
    budget = within_substitution_budget(
        a[1 + nf :], b[1 + nf :], cfg.short_field_words, cfg.short_field_substitution_rate
    )
    *budget, slot = budget
    fields_close = all(jf >= cfg.threshold or ok for jf, ok in zip(j[1:], budget))
    return fields_close and (j[0] >= cfg.threshold or all(budget)) and not slot


def groups_of(duplicates_rows) -> dict[str, str]:
    """record_id -> the record kept for its group (kept records map to themselves)."""
    out = {}
    for r in duplicates_rows:
        out[r["record_id"]] = r["kept_record_id"]
        out.setdefault(r["kept_record_id"], r["kept_record_id"])
    return out


def components(pairs) -> dict[str, str]:
    parent: dict[str, str] = {}

    def find(x):
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in pairs:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    return {x: find(x) for x in parent}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--planted", type=int, default=400)
    p.add_argument("--short-planted", type=int, default=100, help="one-word substitutions in short records")
    p.add_argument("--near-misses", type=int, default=100, help="real short records turned into other questions")
    p.add_argument("--seed", type=int, default=7)
    for f in fields(DedupConfig):
        if f.name in TUNABLE:
            kind = (lambda v: v.lower() in ("1", "true", "yes")) if isinstance(f.default, bool) else type(f.default)
            p.add_argument("--" + f.name.replace("_", "-"), dest=f.name, type=kind, default=f.default)
    args = p.parse_args(argv)
    cfg = replace(
        DedupConfig(),
        **{k: getattr(args, k) for k in TUNABLE},
    )

    from dolly_spark.ops.session import get_spark

    spark = get_spark("dedup_planted")
    base = load_records(Path(args.data), args.n, args.seed)
    variants, planted = plant(base, args.planted, args.seed)
    taken = {a for a, _, _ in planted}
    short_variants, short_pairs = plant_short(base, args.short_planted, args.seed, taken)
    variants, planted = variants + short_variants, planted + short_pairs
    near_misses = plant_near_misses(base, args.near_misses, args.seed, taken | {a for a, _, _ in short_pairs})
    variants = variants + near_misses
    base_df = spark.createDataFrame(base, SILVER_SCHEMA)
    all_df = spark.createDataFrame(base + variants, SILVER_SCHEMA)

    # True shingle Jaccard of each planted pair, with the same normalisation and shingles.
    # With per_field_threshold each counted field must reach it too: the pair's similarity is the
    # minimum over the whole text and each field, exactly what verify_pairs checks.
    cols = ["shingles", *field_shingle_columns(cfg)]
    texts = field_text_columns(cfg)
    sh = {
        r["record_id"]: [set(r[c]) for c in cols] + [r[c] for c in texts]
        for r in all_df.transform(lambda d: normalize_for_matching(d, cfg))
        .transform(lambda d: add_shingles(d, cfg))
        .select("record_id", *cols, *texts)
        .collect()
    }
    true_j = {
        (a, b): min(len(x & y) / len(x | y) for x, y in zip(sh[a][: len(cols)], sh[b][: len(cols)]))
        for a, b, _ in planted
    }
    in_rule = {(a, b): rule_holds(sh[a], sh[b], cfg) for a, b, _ in planted}

    natural = deduplicate(base_df, cfg)
    natural_groups = groups_of(natural.duplicates.collect())
    t0 = time.perf_counter()
    result = deduplicate(all_df, cfg)
    dup_rows = result.duplicates.collect()
    seconds = time.perf_counter() - t0
    found_group = groups_of(dup_rows)

    truth = components([(a, b) for a, b, _ in planted] + list(natural_groups.items()))
    members = defaultdict(list)
    for rid, kept in found_group.items():
        members[kept].append(rid)
    found_pairs = {tuple(sorted(pq)) for g in members.values() for pq in itertools.combinations(g, 2)}
    variant_ids = {v for _, v, _ in planted} | {r["record_id"] for r in near_misses}
    scored = [pq for pq in found_pairs if pq[0] in variant_ids or pq[1] in variant_ids]
    true_pos = [pq for pq in scored if truth.get(pq[0], pq[0]) == truth.get(pq[1], pq[1])]

    def found(a, b):
        return found_group.get(a, a) == found_group.get(b, b)

    within = [(a, b, k) for a, b, k in planted if in_rule[(a, b)]]
    rec_within = sum(found(a, b) for a, b, _ in within) / max(len(within), 1)
    rec_all = sum(found(a, b) for a, b, _ in planted) / max(len(planted), 1)
    precision = len(true_pos) / max(len(scored), 1)
    by_kind = defaultdict(lambda: [0, 0, 0])
    for a, b, k in planted:
        s = by_kind[k]
        s[0] += 1
        s[1] += in_rule[(a, b)]
        s[2] += found(a, b)
    methods = Counter(r["method"] for r in dup_rows)

    print(f"config: {cfg}")
    print(f"bands x rows: {result.stats['bands']} x {result.stats['rows']}")
    print(f"records: {len(base)} real + {len(variants)} planted variants; dedup took {seconds:.1f}s")
    print(f"natural duplicate groups among the {len(base)} originals: {len(set(natural_groups.values()))}")
    print(
        f"removed: {dict(methods)}  candidate pairs: {result.stats['candidate_pairs']}  "
        f"verified: {result.stats['verified_pairs']}"
    )
    what = "the dedup rule (jaccard, per field, short-field substitutions)"
    print(f"planted pairs within {what}: {len(within)} of {len(planted)}")
    print(f"recall (within the rule): {rec_within:.4f}")
    print(f"recall (all planted pairs): {rec_all:.4f}")
    print(f"precision (found pairs touching a variant): {precision:.4f}  ({len(true_pos)}/{len(scored)})")
    print(f"{'kind':<12}{'planted':>8}{'within':>8}{'found':>8}")
    for k in (*KINDS, "subst_short"):
        n, w, f = by_kind[k]
        print(f"{k:<12}{n:>8}{w:>8}{f:>8}")
    near_ids = {r["record_id"] for r in near_misses}
    merged = [pq for pq in scored if (pq[0] in near_ids or pq[1] in near_ids) and pq not in true_pos]
    print(f"near misses planted: {len(near_misses)} records; wrongly merged pairs touching them: {len(merged)}")
    if merged:
        print("merged near misses:", sorted(merged)[:10])
    missed = [(a, b, k, round(true_j[(a, b)], 3)) for a, b, k in within if not found(a, b)]
    if missed:
        print("missed within the rule:", missed[:10])
    natural.cleanup()
    result.cleanup()
    ok = rec_within >= 0.98 and precision >= 0.98
    print("targets (recall >= 0.98, precision >= 0.98):", "met" if ok else "NOT met")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
