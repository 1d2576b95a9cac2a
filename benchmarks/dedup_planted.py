"""Planted-duplicate benchmark for ``dolly_spark.prep.dedup``, scored against an exact oracle.

Takes N real dolly-15k records, plants near-duplicates and near misses, runs ``deduplicate``, and
computes the exact pairwise decision (``dedup_edit.near_duplicate``, the definition in
docs/dedup.md) on ALL pairs of the sample: a pair whose field lengths differ by more than the
budget cannot be within it, so a vectorised length check skips those, and every other pair gets
the full decision. The pipeline is scored against that oracle:

- recall: oracle pairs (edges) whose two records end up in one pipeline group;
- precision: pairs in one pipeline group that are in one connected component of the oracle.

Since the pipeline decides with the same rule, precision below 1 would mean a bug; recall below 1
means a candidate the LSH or the short-record keys did not propose.

Planted records:

- variants of originals: case, whitespace, punctuation, 1-3 word edits, sentence swaps, a mix;
- ``field_<bin>``: one word edited per field (a substitution, insertion or deletion in each
  counted field of nine words or more), on records binned by response length (10-30, 31-99,
  100-149, 150+ tokens); these are copies by the definition;
- near misses that must NOT be merged: template families ("What is the capital of France?" /
  "Paris" against "...of Spain?" / "Madrid"), ``near_miss_real`` (a short record with one word
  of the question changed and another record's answer), ``near_miss_slot`` (the word changed in
  the question and in the answer: chocolate / avocado), ``near_miss_list`` (two different
  questions over one shared list, whose answers differ for a tenth of the items) and
  ``near_miss_context`` (one word of the question changed over the same context, with a tenth of
  the answer's words changed).

The planted labels are reported too, for each kind: how many the oracle calls copies and how many
the pipeline found.

Usage: python benchmarks/dedup_planted.py [--n 2000] [--planted 400] [--field-planted 25] ...
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

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dolly_spark.prep.clean import normalize_text_value  # noqa: E402
from dolly_spark.prep.dedup import (  # noqa: E402
    DedupConfig,
    add_shingles,
    deduplicate,
    field_text_columns,
    normalize_for_matching,
)
from dolly_spark.prep.dedup_edit import near_duplicate, tokens  # noqa: E402

DEFAULT_DATA = Path(os.environ.get("DOLLY_SHARED_DATA", ROOT.parent / "shared" / "data")) / "databricks-dolly-15k.jsonl"
SILVER_SCHEMA = (
    "record_id string, instruction string, context string, response string, category string, "
    "source_file string, line_number long"
)
KINDS = ("case", "whitespace", "punctuation", "words_1", "words_2", "words_3", "reorder", "mixed")
TUNABLE = (
    "threshold",
    "lsh_recall",
    "ngram",
    "num_perm",
    "shingle",
    "fields",
    "max_edit_rate",
    "min_edits",
    "exact_below_tokens",
    "short_field_words",
)
EDITED_FIELD_WORDS = 9  # fields under exact_below_tokens (8) must match: the copies edit longer ones
FIELD_BINS = ((10, 30), (31, 99), (100, 149), (150, 10_000))  # response tokens of field_<bin> copies
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


def _has_word(w: str) -> bool:
    return any(ch.isalnum() for ch in w)


def _edit_one_word(rng: random.Random, text: str, word: str) -> str:
    """One substitution, insertion or deletion of a word (never a punctuation-only token)."""
    words = text.split()  # whitespace is collapsed by the normalisation anyway
    where = [i for i, w in enumerate(words) if _has_word(w)]
    i = rng.choice(where)
    op = rng.choice(("sub", "ins", "del")) if len(where) > 3 else "sub"
    if op == "sub":
        words[i] = word
    elif op == "ins":
        words.insert(i, word)
    else:
        del words[i]
    return " ".join(words)


def plant_field_edits(records: list[dict], n_per_bin: int, seed: int, taken: set[str]):
    """``field_<lo>_<hi>`` copies: one word edited in every field of ``EDITED_FIELD_WORDS`` words or
    more (a different replacement word per field: the same one in two fields is a slot change)."""
    rng = random.Random(seed + 2)
    variants, pairs = [], []
    for lo, hi in FIELD_BINS:
        kind = f"field_{lo}_{hi if hi < 10_000 else 'up'}"
        pool = [
            r
            for r in records
            if r["record_id"] not in taken
            and lo <= len(_words(r["response"])) <= hi
            and len([w for w in _words(r["instruction"]) if _has_word(w)]) >= EDITED_FIELD_WORDS
        ]
        for rec in rng.sample(pool, min(n_per_bin, len(pool))):
            new = dict(rec)
            replacements = iter(rng.sample(SUBSTITUTES, 3))
            for f in ("instruction", "context", "response"):
                if len([w for w in _words(rec[f]) if _has_word(w)]) >= EDITED_FIELD_WORDS:
                    new[f] = _edit_one_word(rng, rec[f], next(replacements))
            vid = f"{rec['record_id']}-{kind}"
            variants.append({**new, "record_id": vid})
            pairs.append((rec["record_id"], vid, kind))
            taken.add(rec["record_id"])
    return variants, pairs


LIST_QUESTIONS = (
    ("Tell me whether each of these is {0}:", "Tell me whether each of these is {1}:"),
    ("Classify each of the following as {0} or not:", "Classify each of the following as {1} or not:"),
    ("Which of these are {0}? Answer for each:", "Which of these are {1}? Answer for each:"),
)


def plant_list_near_misses(records: list[dict], seed: int) -> list[dict]:
    """Two different questions over one shared list (20 to 150 items drawn from the sample's
    words), answered item by item, the answers differing for a tenth of the items."""
    rng = random.Random(seed + 4)
    vocab = sorted({w for r in records for w in _words(r["response"]) if w.isalpha() and len(w) > 4})
    out = []
    for f, n_items in enumerate((20, 30, 40, 60, 80, 100, 150, 20, 40, 80)):
        items = rng.sample(vocab, n_items)
        qa, qb = rng.choice(LIST_QUESTIONS)
        a_word, b_word = rng.sample(SUBSTITUTES, 2)
        labels = [rng.choice(("yes", "no")) for _ in items]
        flip = set(rng.sample(range(n_items), max(2, n_items // 10)))
        other = [("no" if x == "yes" else "yes") if j in flip else x for j, x in enumerate(labels)]
        for side, (q, lab) in enumerate(((qa.format(a_word, b_word), labels), (qb.format(a_word, b_word), other))):
            out.append(
                {
                    "record_id": f"l{f:02d}-{side}-near_miss_list",
                    "instruction": f"{q} {', '.join(items)}",
                    "context": "",
                    "response": "\n".join(f"{i}: {x}" for i, x in zip(items, lab)),
                    "category": "classification",
                    "source_file": "lists",
                    "line_number": 0,
                }
            )
    return out


def plant_context_near_misses(records: list[dict], n: int, seed: int, taken: set[str]) -> list[dict]:
    """The same context, one word of the question changed, and a tenth of the answer's words
    (at least two) changed: a different question over a shared passage."""
    rng = random.Random(seed + 5)
    pool = [
        r
        for r in records
        if r["record_id"] not in taken and len(_words(r["context"])) >= 40 and len(_words(r["response"])) >= 10
    ]
    out = []
    for rec in rng.sample(pool, min(n, len(pool))):
        ins, touched = _substitute(rng, rec["instruction"])
        words = rec["response"].split(" ")
        for i in rng.sample(range(len(words)), max(2, len(words) // 10)):
            words[i] = rng.choice([w for w in SUBSTITUTES if w not in touched])
        out.append(
            {
                **rec,
                "record_id": f"{rec['record_id']}-near_miss_context",
                "instruction": ins,
                "response": " ".join(words),
            }
        )
    return out


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


def oracle_pairs(texts: dict[str, list[str]], cfg: DedupConfig) -> list[tuple[str, str]]:
    """The exact decision on every pair: ``texts`` maps record_id -> normalised counted fields.

    A pair whose field lengths differ by more than that field's budget cannot be within it (each
    inserted or deleted token is an edit), so numpy drops those; the rest get the full decision.
    """
    ids = sorted(texts)
    toks = [[tokens(f) for f in texts[i]] for i in ids]
    lens = np.array([[len(t) for t in ts] for ts in toks], dtype=np.int64)
    out = []
    for i in range(len(ids) - 1):
        other = lens[i + 1 :]
        longer = np.maximum(lens[i], other)
        budget = np.where(
            longer < cfg.exact_below_tokens, 0, np.maximum(cfg.min_edits, np.floor(longer * cfg.max_edit_rate + 1e-9))
        )
        for j in np.flatnonzero((np.abs(other - lens[i]) <= budget).all(axis=1)) + i + 1:
            a, b = texts[ids[i]], texts[ids[j]]
            if near_duplicate(a, b, cfg.min_edits, cfg.max_edit_rate, cfg.exact_below_tokens):
                out.append((ids[i], ids[j]))
    return out


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


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--planted", type=int, default=400)
    p.add_argument("--field-planted", type=int, default=25, help="one-word-per-field copies per length bin")
    p.add_argument("--near-misses", type=int, default=100, help="real records turned into other questions")
    p.add_argument("--seed", type=int, default=7)
    for f in fields(DedupConfig):
        if f.name in TUNABLE:
            kind = (lambda v: v.lower() in ("1", "true", "yes")) if isinstance(f.default, bool) else type(f.default)
            p.add_argument("--" + f.name.replace("_", "-"), dest=f.name, type=kind, default=f.default)
    return p.parse_args(argv)


def build(base: list[dict], args) -> tuple[list[dict], list[tuple[str, str, str]], list[dict]]:
    """The planted variants, the planted (original, variant, kind) pairs and the near misses."""
    variants, planted = plant(base, args.planted, args.seed)
    taken = {a for a, _, _ in planted}
    field_variants, field_pairs = plant_field_edits(base, args.field_planted, args.seed, taken)
    near = plant_near_misses(base, args.near_misses, args.seed, set(taken))
    near += plant_list_near_misses(base, args.seed)
    near += plant_context_near_misses(base, args.near_misses // 2, args.seed, taken)
    return variants + field_variants + near, planted + field_pairs, near


def same_group_pairs(group: dict[str, str]) -> set[tuple[str, str]]:
    members = defaultdict(list)
    for rid, kept in group.items():
        members[kept].append(rid)
    return {tuple(sorted(pq)) for g in members.values() for pq in itertools.combinations(g, 2)}


def report(cfg, result, seconds, n_base, variants, planted, near, oracle, texts, shingles, found_group) -> bool:
    """Prints the scores; True when recall and precision against the oracle are both >= 0.99."""
    truth = components(oracle)

    def found(a, b):
        return found_group.get(a, a) == found_group.get(b, b)

    found_pairs = same_group_pairs(found_group)
    recall = sum(found(a, b) for a, b in oracle) / max(len(oracle), 1)
    correct = [pq for pq in found_pairs if truth.get(pq[0], pq[0]) == truth.get(pq[1], pq[1])]
    precision = len(correct) / max(len(found_pairs), 1)
    methods = Counter(r["method"] for r in result.duplicates.collect())
    print(f"bands x rows: {result.stats['bands']} x {result.stats['rows']} (threshold {cfg.threshold})")
    print(f"records: {n_base} real + {len(variants)} planted; dedup took {seconds:.1f}s")
    print(
        f"removed: {dict(methods)}  candidate pairs: {result.stats['candidate_pairs']}  "
        f"verified: {result.stats['verified_pairs']}"
    )
    print(f"oracle: {len(oracle)} near-duplicate pairs among all {len(texts)} records (exact decision, all pairs)")
    print(f"recall vs oracle: {recall:.4f}  precision vs oracle: {precision:.4f}  ({len(correct)}/{len(found_pairs)})")
    long_j = [
        len(shingles[a] & shingles[b]) / len(shingles[a] | shingles[b])
        for a, b in oracle
        if max(len(tokens(f)) for f in texts[a] + texts[b]) > cfg.short_field_words
    ]
    if long_j:
        print(
            f"oracle pairs with a field over {cfg.short_field_words} tokens: {len(long_j)}, "
            f"lowest whole-text Jaccard {min(long_j):.3f} (LSH target {cfg.threshold})"
        )
    oracle_set = set(oracle) | {(b, a) for a, b in oracle}
    print(f"{'kind':<16}{'planted':>8}{'oracle':>8}{'found':>8}")
    by_kind = defaultdict(lambda: [0, 0, 0])
    for a, b, k in planted:
        by_kind[k][0] += 1
        by_kind[k][1] += (a, b) in oracle_set or truth.get(a, a) == truth.get(b, b)
        by_kind[k][2] += found(a, b)
    for k, (n, w, f) in by_kind.items():
        print(f"{k:<16}{n:>8}{w:>8}{f:>8}")
    near_ids = {r["record_id"] for r in near}
    near_kinds = Counter(r["record_id"].rsplit("-", 1)[-1] for r in near)
    merged = [pq for pq in found_pairs if pq[0] in near_ids or pq[1] in near_ids]
    print(f"near misses planted: {dict(near_kinds)}; pairs touching them merged: {len(merged)}")
    if merged:
        print("merged near misses (check against the oracle):", sorted(merged)[:10])
    missed = [(a, b) for a, b in oracle if not found(a, b)]
    if missed:
        print("oracle pairs the pipeline missed:", missed[:10])
    return recall >= 0.99 and precision >= 0.99


def main(argv=None) -> int:
    args = parse_args(argv)
    cfg = replace(DedupConfig(), **{k: getattr(args, k) for k in TUNABLE})

    from dolly_spark.ops.session import get_spark

    spark = get_spark("dedup_planted")
    base = load_records(Path(args.data), args.n, args.seed)
    variants, planted, near = build(base, args)
    all_df = spark.createDataFrame(base + variants, SILVER_SCHEMA)

    # The normalised fields and shingles exactly as the pipeline computes them.
    cols = field_text_columns(cfg)
    rows = (
        all_df.transform(lambda d: normalize_for_matching(d, cfg))
        .transform(lambda d: add_shingles(d, cfg))
        .select("record_id", "shingles", *cols)
        .collect()
    )
    texts = {r["record_id"]: [r[c] for c in cols] for r in rows}
    shingles = {r["record_id"]: set(r["shingles"]) for r in rows}
    t0 = time.perf_counter()
    oracle = oracle_pairs(texts, cfg)
    print(f"config: {cfg}")
    print(f"oracle over {len(texts) * (len(texts) - 1) // 2:,} pairs took {time.perf_counter() - t0:.1f}s")

    t0 = time.perf_counter()
    result = deduplicate(all_df, cfg)
    found_group = groups_of(result.duplicates.collect())
    seconds = time.perf_counter() - t0
    ok = report(cfg, result, seconds, len(base), variants, planted, near, oracle, texts, shingles, found_group)
    result.cleanup()
    print("targets (recall >= 0.99, precision >= 0.99 against the oracle):", "met" if ok else "NOT met")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
