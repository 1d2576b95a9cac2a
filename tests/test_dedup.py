import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from dolly_spark.ops.workdir import WorkDir
from dolly_spark.prep.dedup import (
    DUPLICATES_COLUMNS,
    DedupConfig,
    add_shingles,
    add_signatures,
    band_buckets,
    band_hashes,
    bands_rows_for_recall,
    candidate_pairs,
    capped_bucket_stats,
    dedup_metrics,
    deduplicate,
    exact_duplicates,
    exact_groups,
    lsh_candidate_pairs,
    near_duplicate_clusters,
    normalize_for_matching,
    optimal_bands_rows,
    removed_records,
    shared_buckets,
    shingle_hashes,
    shingle_survivors,
    verified_edges,
    verify_pairs,
    with_lineage,
)
from dolly_spark.prep.dedup_clusters import clusters, clusters_label_propagation, clusters_union_find
from dolly_spark.prep.dedup_lsh import add_sketches
from dolly_spark.prep.dedup_short import short_record_buckets
from dolly_spark.prep.minhash import (
    collision_probability,
    false_negative_probability,
    false_positive_probability,
    minhash_signatures,
    permutations,
    rminhash_signatures,
)
from tests.shared_data import DOLLY_JSONL

SILVER_SCHEMA = (
    "record_id string, instruction string, context string, response string, category string, "
    "source_file string, line_number long"
)


def silver(spark, rows):
    """rows: (record_id, instruction, context, response[, category])."""
    full = [(r[0], r[1], r[2], r[3], r[4] if len(r) > 4 else "open_qa", "f.jsonl", i + 1) for i, r in enumerate(rows)]
    return spark.createDataFrame(full, SILVER_SCHEMA)


# --- parameter derivation ---------------------------------------------------------------------


def test_optimal_bands_rows_matches_quadrature_search():
    quad = pytest.importorskip("scipy.integrate").quad

    def error(t, b, r, wfp, wfn):
        fp = quad(lambda s: 1 - (1 - s**r) ** b, 0, t)[0]
        fn = quad(lambda s: 1 - (1 - (1 - s**r) ** b), t, 1)[0]
        return wfp * fp + wfn * fn

    for t, n, wfp, wfn in [(0.5, 32, 0.5, 0.5), (0.8, 32, 0.5, 0.5), (0.7, 48, 0.2, 0.8)]:
        grid = {(b, r): error(t, b, r, wfp, wfn) for b in range(1, n + 1) for r in range(1, n // b + 1)}
        assert grid[optimal_bands_rows(t, n, wfp, wfn)] == pytest.approx(min(grid.values()), abs=1e-9)


def test_optimal_bands_rows_properties():
    b, r = optimal_bands_rows(0.7, 128, 0.2, 0.8)
    assert b * r <= 128
    # A higher threshold needs more rows per band (stricter buckets).
    assert optimal_bands_rows(0.9, 128)[1] > optimal_bands_rows(0.5, 128)[1]

    # Weighting false negatives more raises the candidate probability at the threshold.
    def p_at(t, br):
        return 1 - (1 - t ** br[1]) ** br[0]

    assert p_at(0.7, optimal_bands_rows(0.7, 128, 0.1, 0.9)) > p_at(0.7, optimal_bands_rows(0.7, 128, 0.9, 0.1))
    assert false_positive_probability(0.5, 1, 1) == pytest.approx(0.125)  # integral of s on [0, .5]
    assert false_negative_probability(0.5, 1, 1) == pytest.approx(0.125)  # integral of 1-s on [.5, 1]


# --- exact stage ------------------------------------------------------------------------------


def test_exact_groups_ignore_case_whitespace_and_punctuation(spark):
    df = silver(
        spark,
        [
            ("a", "What is  Spark?", "", "x"),
            ("b", "what is spark", "", "y"),
            ("c", "What, is SPARK!!", " ", "z"),
            ("d", "What is Delta?", "", "w"),
        ],
    )
    cfg = DedupConfig(fields="instruction_context")
    out = df.transform(lambda d: normalize_for_matching(d, cfg)).transform(lambda d: exact_groups(d, cfg))
    got = out.select("record_id", "exact_rep", "exact_group_size")
    assertDataFrameEqual(got, [("a", "a", 3), ("b", "a", 3), ("c", "a", 3), ("d", "d", 1)])


def test_normalisation_flags_are_respected(spark):
    df = silver(spark, [("a", "Hello world", "", "x"), ("b", "hello world!", "", "y")])
    cfg = DedupConfig(lowercase=False, strip_punctuation=False)
    out = df.transform(lambda d: normalize_for_matching(d, cfg)).transform(lambda d: exact_groups(d, cfg))
    assert [r["exact_group_size"] for r in out.collect()] == [1, 1]
    cfg = DedupConfig(fields="instruction_context")
    texts = {r["record_id"]: r["dedup_text"] for r in df.transform(lambda d: normalize_for_matching(d, cfg)).collect()}
    assert texts["a"] == texts["b"] == "hello world \u241e"  # empty context still leaves its separator


def test_keep_rule_longest_response(spark):
    df = silver(spark, [("a", "Same prompt", "", "short"), ("b", "same prompt", "", "a much longer response")])
    for keep, expected in [("lowest_record_id", "a"), ("longest_response", "b")]:
        cfg = DedupConfig(fields="instruction_context", keep=keep)
        out = df.transform(lambda d: normalize_for_matching(d, cfg)).transform(lambda d: exact_groups(d, cfg))
        assert {r["exact_rep"] for r in out.collect()} == {expected}


def test_fields_option_decides_whether_response_counts(spark):
    df = silver(spark, [("a", "Name a colour", "", "red"), ("b", "Name a colour", "", "blue")])
    sizes = {}
    for fields in ("instruction_context", "all"):
        cfg = DedupConfig(fields=fields)
        out = df.transform(lambda d: normalize_for_matching(d, cfg)).transform(lambda d: exact_groups(d, cfg))
        sizes[fields] = sorted(r["exact_group_size"] for r in out.collect())
    assert sizes == {"instruction_context": [2, 2], "all": [1, 1]}


# --- shingles and signatures ------------------------------------------------------------------


def test_shingle_hashes_word_and_char():
    word = shingle_hashes(["a b c a b", "x"], "word", 2)
    assert len(word[0]) == 3  # {a b, b c, c a}: the repeated "a b" counted once
    assert (word[0][1:] > word[0][:-1]).all()  # sorted, distinct
    assert len(word[1]) == 1  # shorter than one n-gram: the text itself
    char = shingle_hashes(["abcab"], "char", 3)
    assert len(char[0]) == 3  # abc, bca, cab
    assert shingle_hashes(["a b c"], "word", 2)[0].tolist() == shingle_hashes(["a b c"], "word", 2)[0].tolist()


def test_add_shingles_in_spark_matches_python(spark):
    df = spark.createDataFrame([("a", "the cat sat on the mat"), ("b", "hi")], "record_id string, dedup_text string")
    for shingle, k in (("word", 2), ("char", 4)):
        cfg = DedupConfig(shingle=shingle, ngram=k)
        got = {r["record_id"]: r["shingles"] for r in df.transform(lambda d: add_shingles(d, cfg)).collect()}
        want = shingle_hashes(["the cat sat on the mat", "hi"], shingle, k)
        assert got == {"a": want[0].tolist(), "b": want[1].tolist()}


def test_minhash_estimates_jaccard():
    a, b = permutations(256, 1)
    x = np.arange(0, 300, dtype=np.int64)
    y = np.arange(100, 400, dtype=np.int64)  # Jaccard = 200 / 400 = 0.5
    sig = minhash_signatures([x, y, x.copy(), np.array([], dtype=np.int64)], a, b)
    assert sig.shape == (4, 256)
    assert np.array_equal(sig[0], sig[2])
    assert abs((sig[0] == sig[1]).mean() - 0.5) < 0.1
    assert (sig[3] == 0xFFFFFFFF).all()
    # Chunking must not change the result: one row at a time gives the same signatures.
    assert np.array_equal(np.vstack([minhash_signatures([s], a, b) for s in (x, y)]), sig[:2])


def test_minhash_signatures_match_brute_force_across_chunks():
    """Rows spanning several chunks, and one row longer than a chunk, against the formula itself."""
    a, b = permutations(8, 5)
    rng = np.random.default_rng(0)
    sets = [rng.integers(-(1 << 62), 1 << 62, size=n) for n in (300, 0, 5000, 1, 700, 900, 250)]
    x = [(s.view(np.uint64) & np.uint64(0xFFFFFFFF))[:, None] for s in sets]
    with np.errstate(over="ignore"):
        want = [((v * a + b) >> np.uint64(32)).min(axis=0) if len(v) else np.full(8, 0xFFFFFFFF) for v in x]
    assert np.array_equal(minhash_signatures(sets, a, b), np.vstack(want).astype(np.uint32))


def test_add_signatures_in_spark_matches_rensa(spark):
    cfg = DedupConfig(num_perm=16, seed=3)
    df = spark.createDataFrame([("a", [1, 2, 3]), ("b", [5, -7])], "record_id string, shingles array<long>")
    got = {r["record_id"]: r["signature"] for r in df.transform(lambda d: add_signatures(d, cfg)).collect()}
    want = rminhash_signatures([np.array([1, 2, 3]), np.array([5, -7])], 16, 3).view(np.int32)
    assert got == {"a": want[0].tolist(), "b": want[1].tolist()}


def test_rminhash_slots_agree_with_probability_the_jaccard():
    """R-MinHash (rensa) keeps the MinHash property LSH's band choice assumes: each slot of two sets
    agrees with probability their Jaccard, and bands collide as 1 - (1 - J^r)^b, like the classic
    minhash_signatures, from short to long sets."""
    rng = np.random.default_rng(7)
    a, b = permutations(128, 42)
    for n, k in [(12, 9), (60, 51), (400, 356)]:  # |A| = |B| = n, |A & B| = k
        jac = k / (2 * n - k)
        left, right = [], []
        for _ in range(1500):
            u = np.sort(rng.integers(1, 1 << 62, size=2 * n - k, dtype=np.int64))
            left.append(u[:n])
            right.append(u[n - k :])
        for sig in (rminhash_signatures(left + right, 128, 42), minhash_signatures(left + right, a, b)):
            top, bottom = sig[:1500], sig[1500:]
            assert abs((top == bottom).mean() - jac) < 0.01
            collide = (band_hashes(top, 21, 6) == band_hashes(bottom, 21, 6)).any(axis=1).mean()
            assert abs(collide - collision_probability(jac, 21, 6)) < 0.03


def test_rminhash_is_a_set_function_and_empty_input_is_empty():
    sets = [np.array([5, 1, 9], dtype=np.int64), np.array([9, 5, 1, 1], dtype=np.int64)]
    sig = rminhash_signatures(sets, 32, 1)
    assert sig.shape == (2, 32) and sig.dtype == np.uint32 and np.array_equal(sig[0], sig[1])
    assert rminhash_signatures([], 32, 1).shape == (0, 32)


def test_sketch_pass_matches_the_separate_building_blocks(spark):
    """``add_sketches`` (one mapInArrow) gives what ``add_shingles`` -> ``add_signatures`` ->
    ``band_buckets`` and ``short_record_buckets`` give, row for row."""
    cfg = DedupConfig(num_perm=32, short_field_words=20, exact_below_tokens=3)
    texts = ["the cat sat on the mat", "the cat sat on a mat", "w " * 30, "", "hello world again"]
    rows = [(f"r{i}", t, t, f"answer {i} is here") for i, t in enumerate(texts)]
    df = spark.createDataFrame(rows, "record_id string, dedup_text string, norm_a string, norm_b string")
    b, r = bands_rows_for_recall(cfg.threshold, cfg.num_perm, cfg.lsh_recall)
    got = {x["record_id"]: x for x in add_sketches(df, "dedup_text", ["norm_a", "norm_b"], cfg, b, r).collect()}
    shingled = df.transform(lambda d: add_shingles(d, cfg))
    want_sh = {x["record_id"]: x["shingles"] for x in shingled.collect()}
    bands = shingled.transform(lambda d: add_signatures(d, cfg)).transform(lambda d: band_buckets(d, b, r))
    want_bands: dict = {}
    for x in sorted(bands.collect(), key=lambda x: x["band"]):
        want_bands.setdefault(x["record_id"], []).append(x["bucket"])
    keys = short_record_buckets(df, ["norm_a", "norm_b"], 20, cfg.min_edits, cfg.max_edit_rate, 3).collect()
    want_keys: dict = {}
    for x in keys:
        want_keys.setdefault(x["record_id"], []).append(x["bucket"])
    assert {k: v["shingles"] for k, v in got.items()} == want_sh
    assert {k: v["bands"] for k, v in got.items()} == want_bands
    assert {k: sorted(v["short_keys"]) for k, v in got.items() if v["short_keys"]} == {
        k: sorted(v) for k, v in want_keys.items()
    }
    assert got["r2"]["short_keys"] == [] and len(want_keys) == 4  # the 30-word record has none


# --- LSH: buckets, candidates, verification ---------------------------------------------------


def test_band_buckets_one_row_per_band_and_equal_bands_collide(spark):
    s1 = list(range(12))
    s2 = list(range(6)) + [99] * 6  # same first two bands (rows=3), different last two
    df = spark.createDataFrame([("a", s1), ("b", s2)], "record_id string, signature array<int>")
    rows = band_buckets(df, bands=4, rows=3).collect()
    assert len(rows) == 8
    bucket = {(r["record_id"], r["band"]): r["bucket"] for r in rows}
    assert [bucket[("a", i)] == bucket[("b", i)] for i in range(4)] == [True, True, False, False]
    assert band_hashes(np.array([s1], dtype=np.uint32), 4, 3).shape == (1, 4)


def test_candidate_pairs_from_shared_buckets_with_cap(spark):
    buckets = spark.createDataFrame(
        [("a", 0, 1), ("b", 0, 1), ("c", 0, 1), ("d", 0, 2), ("a", 1, 5), ("d", 1, 5), ("e", 1, 6)],
        "record_id string, band int, bucket long",
    )
    shared = shared_buckets(buckets)
    assertDataFrameEqual(candidate_pairs(shared, 10), [("a", "b"), ("a", "c"), ("b", "c"), ("a", "d")])
    # Cap 2: only the two lowest ids of the 3-member bucket pair up; one bucket, one member capped.
    assertDataFrameEqual(candidate_pairs(shared, 2), [("a", "b"), ("a", "d")])
    assert capped_bucket_stats(shared, 2) == {"capped_buckets": 1, "capped_members": 1}


def test_verify_pairs_decides_by_edit_distance_per_field(spark):
    shingled = spark.createDataFrame(
        [
            ("a", [1, 2, 3, 4], "name three primary colours", "red yellow blue"),
            ("b", [1, 2, 3, 5], "name three primary colors", "red yellow blue"),  # one substitution
            ("c", [1, 2, 3, 6], "name three primary colors", "red green blue"),  # and one in the answer
            ("d", [7, 8], "name three secondary colors", "orange green purple"),
        ],
        "record_id string, shingles array<long>, norm_instruction string, norm_response string",
    )
    pairs = spark.createDataFrame([("a", "b"), ("a", "c"), ("a", "d"), ("b", "d")], "id_a string, id_b string")
    cols = ["norm_instruction", "norm_response"]
    assertDataFrameEqual(verify_pairs(pairs, shingled, cols, exact_below=3), [("a", "b", 0.6), ("a", "c", 0.6)])
    # The default: fields under 8 tokens must match exactly; min_edits 0 leaves floor(0.02 n) = 0.
    assert verify_pairs(pairs, shingled, cols).count() == 0
    assert verify_pairs(pairs, shingled, cols, min_edits=0, exact_below=3).count() == 0
    # Only the instruction counted: b and d differ by one word there.
    assert {(r["id_a"], r["id_b"]) for r in verify_pairs(pairs, shingled, cols[:1], exact_below=3).collect()} == {
        ("a", "b"),
        ("a", "c"),
        ("b", "d"),
    }


PASSAGE = (
    "Violet Constance Jessop was an Argentine born Irish ocean liner stewardess memoirist and nurse in the "
    "early 20th century who survived the sinking of both the RMS Titanic in 1912 and of her sister ship "
    "HMHS Britannic in 1916 and was on board the RMS Olympic when it collided with a warship in 1911"
)


def test_different_questions_about_one_passage_are_kept_by_default(spark):
    df = silver(
        spark,
        [
            ("q1", "Which ships did Violet Jessop survive in the early twentieth century?", PASSAGE, "a"),
            ("q2", "What was Violet Jessop's job?", PASSAGE, "b"),
        ],
    )
    copy = silver(
        spark, [("q3", "Which ships did Violet Jessop survive on in the early twentieth century?", PASSAGE, "c")]
    )
    result = deduplicate(df.unionByName(copy), DedupConfig(fields="instruction_context"))
    try:  # the shared passage does not make two questions one; one inserted word does
        assert [(r["record_id"], r["kept_record_id"]) for r in result.duplicates.collect()] == [("q3", "q1")]
    finally:
        result.cleanup()


def _words(prefix, n):
    return " ".join(f"{prefix}{j}" for j in range(n))


def _edit(text, op, pos, word):
    w = text.split(" ")
    if op == "sub":
        w[pos] = word
    elif op == "ins":
        w.insert(pos, word)
    else:
        del w[pos]
    return " ".join(w)


def test_planted_edits_are_found_and_tasks_over_a_shared_list_are_kept(spark):
    """One edit per field (substitution, insertion or deletion) at several field lengths is a
    copy (different words: the same word replaced in two fields would be a slot change); two different questions over one list whose answers differ for a tenth are not."""
    rows, copies = [], {}
    for n, (n_ins, n_resp) in enumerate(((9, 10), (12, 40), (30, 90), (30, 149), (60, 300))):
        for op in ("sub", "ins", "del"):
            rid = f"o{n}{op}"
            ins, resp = _words(f"w{n}{op}i", n_ins), _words(f"w{n}{op}r", n_resp)
            rows += [
                (rid, ins, "", resp),
                (rid + "c", _edit(ins, op, n_ins // 2, "new"), "", _edit(resp, "sub", 1, "other")),
            ]
            copies[rid + "c"] = rid
    items = [f"item{j}" for j in range(40)]
    answer = [f"{i} {'yes' if j % 3 else 'no'}" for j, i in enumerate(items)]
    other = [a.replace("yes", "no") if j % 10 == 0 else a for j, a in enumerate(answer)]
    rows += [
        ("s1", "Which of these are fruits?", ", ".join(items), " ".join(answer)),
        ("s2", "Which of these grow in Spain?", ", ".join(items), " ".join(other)),
    ]
    result = deduplicate(silver(spark, rows), DedupConfig())
    try:
        assert {r["record_id"]: r["kept_record_id"] for r in result.duplicates.collect()} == copies
    finally:
        result.cleanup()


# --- connected components ---------------------------------------------------------------------

# Two components: a long chain (needs several propagation rounds) and a star; labels are min ids.
EDGES = [
    ("n05", "n06"),
    ("n04", "n05"),
    ("n03", "n04"),
    ("n02", "n03"),
    ("n01", "n02"),
    ("n07", "n06"),
    ("x3", "x1"),
    ("x3", "x2"),
    ("x9", "x3"),
]


def test_union_find_and_label_propagation_give_identical_clusters(spark, tmp_path):
    edges = spark.createDataFrame(EDGES, "id_a string, id_b string")
    uf = clusters_union_find(edges)
    lp = clusters_label_propagation(edges, 50, WorkDir(str(tmp_path)))
    expected = [(f"n0{i}", "n01") for i in range(1, 8)] + [(x, "x1") for x in ("x1", "x2", "x3", "x9")]
    assertDataFrameEqual(uf, expected)
    assertDataFrameEqual(lp, expected)


def test_clusters_chooses_by_edge_count(spark, tmp_path):
    edges = spark.createDataFrame(EDGES, "id_a string, id_b string")
    _, small = clusters(edges, 100, 50, WorkDir(str(tmp_path)))
    _, large = clusters(edges, 3, 50, WorkDir(str(tmp_path)))
    assert (small, large) == ("union_find", "label_propagation")


def test_label_propagation_raises_when_not_converged(spark, tmp_path):
    edges = spark.createDataFrame(EDGES, "id_a string, id_b string")
    with pytest.raises(RuntimeError, match="did not converge"):
        clusters_label_propagation(edges, 1, WorkDir(str(tmp_path)))


# --- end to end -------------------------------------------------------------------------------

ROWS = [
    ("r1", "Who wrote the novel War and Peace and when was it first published", "", "Tolstoy", "open_qa"),
    ("r2", "who wrote the novel war and peace, and when was it first published?", "", "Leo Tolstoy", "open_qa"),
    ("r3", "Who wrote the famous novel War and Peace and when was it first published", "", "Tolstoy.", "general_qa"),
    ("r4", "Name three primary colours used in painting", "", "red, yellow, blue", "brainstorming"),
    ("r5", "Explain how a bicycle gear works to a child", "", "gears...", "open_qa"),
    ("r6", "name three primary colours used in painting", "", "RYB", "classification"),
]


def test_deduplicate_partitions_rows_with_lineage(spark):
    df = silver(spark, ROWS)
    result = deduplicate(df, DedupConfig(fields="instruction_context"))
    try:
        assert result.kept.columns == df.columns
        assert tuple(result.duplicates.columns) == DUPLICATES_COLUMNS
        assert [f.dataType.simpleString() for f in result.duplicates.schema.fields] == [
            "string",
            "string",
            "string",
            "string",
            "double",
            "string",
            "string",
            "string",
        ]
        kept = {r["record_id"] for r in result.kept.collect()}
        dups = {r["record_id"]: r for r in result.duplicates.collect()}
        assert kept | set(dups) == {r[0] for r in ROWS} and not kept & set(dups)
        assert kept == {"r1", "r4", "r5"}
        assert dups["r2"]["method"] == "exact" and dups["r2"]["jaccard"] == 1.0
        assert dups["r6"]["kept_record_id"] == "r4" and dups["r6"]["method"] == "exact"
        assert dups["r3"]["method"] == "minhash" and dups["r3"]["kept_record_id"] == "r1"
        assert 0.7 <= dups["r3"]["jaccard"] < 1.0  # one inserted word: the jaccard column is lineage only
        assert dups["r3"]["category"] == "general_qa"
        m = dedup_metrics(result)
        json.dumps(m)
        assert m["removed_by_method"] == {"exact": 2, "minhash": 1}
        assert m["removed_by_category"] == {"classification": 1, "general_qa": 1, "open_qa": 1}
        assert (m["exact_groups"], m["near_clusters"]) == (2, 1)
        assert m["bands"] * m["rows"] <= 128 and m["candidate_pairs"] >= m["verified_pairs"] >= 1
    finally:
        result.cleanup()


def test_the_stages_of_deduplicate_one_by_one(spark, tmp_path):
    """What each stage hands the next: exact groups, one survivor per group, candidate pairs,
    verified edges, near-duplicate representatives, then the removed rows with their lineage."""
    cfg, df, work = DedupConfig(fields="instruction_context"), silver(spark, ROWS), WorkDir(str(tmp_path))
    exact = exact_duplicates(df, cfg, work)
    assert {r["record_id"]: r["exact_rep"] for r in exact.collect()} == {
        "r1": "r1",
        "r2": "r1",
        "r3": "r3",
        "r4": "r4",
        "r5": "r5",
        "r6": "r4",
    }
    shingled = shingle_survivors(exact, cfg, work)
    assert sorted(r["record_id"] for r in shingled.collect()) == ["r1", "r3", "r4", "r5"]
    pairs, pair_stats = lsh_candidate_pairs(shingled, cfg, work)
    assert ("r1", "r3") in {(r["id_a"], r["id_b"]) for r in pairs.collect()}
    assert pair_stats["candidate_pairs"] == pairs.count() and pair_stats["capped_buckets"] == 0
    edges, edge_stats = verified_edges(pairs, shingled, cfg, work)
    assert [(r["id_a"], r["id_b"]) for r in edges.collect()] == [("r1", "r3")] and edge_stats == {"verified_pairs": 1}
    near, cluster_stats = near_duplicate_clusters(edges, shingled, cfg, work)
    assert {r["record_id"]: r["near_rep"] for r in near.collect()} == {"r1": "r1", "r3": "r1"}
    assert cluster_stats == {"components_method": "union_find"}
    removed = removed_records(exact, near, shingled, cfg, work)
    assert {r["record_id"]: (r["kept_record_id"], r["method"]) for r in removed.collect()} == {
        "r2": ("r1", "exact"),
        "r3": ("r1", "minhash"),
        "r6": ("r4", "exact"),
    }
    lineage = {r["record_id"]: r for r in with_lineage(removed, df).collect()}
    assert lineage["r3"]["category"] == "general_qa" and set(lineage) == {"r2", "r3", "r6"}


def test_default_counts_the_answer_too(spark):
    """Default fields="all": a repeated prompt with a different answer is kept; with the same
    answer it is removed."""
    rows = ROWS[:2] + [("r7", ROWS[0][1] + "!", "", "Tolstoy", "open_qa")]
    result = deduplicate(silver(spark, rows), DedupConfig())
    try:
        assert [(r["record_id"], r["kept_record_id"]) for r in result.duplicates.collect()] == [("r7", "r1")]
    finally:
        result.cleanup()


def test_exact_duplicate_of_a_near_duplicate_points_at_the_final_survivor(spark):
    rows = ROWS[:3] + [("r0", "Who wrote the famous novel war and peace and when was it first published!", "", "x")]
    result = deduplicate(silver(spark, rows), DedupConfig(fields="instruction_context", keep="lowest_record_id"))
    try:
        dups = {r["record_id"]: r for r in result.duplicates.collect()}
        kept = [r["record_id"] for r in result.kept.collect()]
        # r3 is an exact duplicate of r0, r2 of r1; r1 is a near duplicate of r0, kept as lowest id.
        assert kept == ["r0"]
        assert {k: (d["method"], d["kept_record_id"]) for k, d in dups.items()} == {
            "r1": ("minhash", "r0"),
            "r2": ("exact", "r0"),
            "r3": ("exact", "r0"),
        }
    finally:
        result.cleanup()


def test_deduplicate_is_deterministic(spark):
    df = silver(spark, ROWS)
    cfg = DedupConfig(fields="instruction_context", keep="longest_response")
    a, b = deduplicate(df, cfg), deduplicate(df, cfg)
    try:
        assertDataFrameEqual(a.duplicates, b.duplicates)
        assertDataFrameEqual(a.kept, b.kept)
        assert {r["record_id"] for r in a.kept.collect()} == {"r2", "r4", "r5"}  # longest responses
    finally:
        a.cleanup()
        b.cleanup()


WORDS = st.sampled_from("alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split())
TEXTS = st.lists(WORDS, min_size=1, max_size=12).map(" ".join)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    texts=st.lists(TEXTS, min_size=1, max_size=5, unique=True),
    copies=st.lists(st.integers(1, 4), min_size=5, max_size=5),
)
def test_identical_texts_always_share_a_minhash_cluster(spark, texts, copies):
    """Through the MinHash stages alone (no exact stage): copies of a text share every bucket."""
    cfg = DedupConfig(num_perm=32)
    rows = [(f"t{i}c{c}", t) for i, t in enumerate(texts) for c in range(copies[i])]
    df = spark.createDataFrame(rows, "record_id string, dedup_text string")
    b, r = bands_rows_for_recall(cfg.threshold, cfg.num_perm, cfg.lsh_recall)
    shingled = df.transform(lambda d: add_shingles(d, cfg))
    shared = shingled.transform(lambda d: add_signatures(d, cfg)).transform(lambda d: band_buckets(d, b, r))
    edges = verify_pairs(candidate_pairs(shared_buckets(shared), cfg.max_bucket_size), shingled, ["dedup_text"])
    label = {row["record_id"]: row["cluster"] for row in clusters_union_find(edges).collect()}
    for i, t in enumerate(texts):
        ids = [f"t{i}c{c}" for c in range(copies[i])]
        if len(ids) > 1:
            assert len({label.get(x) for x in ids}) == 1 and None not in {label.get(x) for x in ids}


@pytest.mark.skipif(not DOLLY_JSONL.exists(), reason="real dolly-15k not available")
def test_real_dolly_sample_accounting(spark):
    lines = DOLLY_JSONL.read_text().splitlines()[:2000]
    rows = []
    for i, line in enumerate(lines):
        r = json.loads(line)
        rows.append((f"l{i:05d}", r["instruction"], r["context"], r["response"], r["category"]))
    df = silver(spark, rows)
    result = deduplicate(df, DedupConfig(fields="instruction_context"))  # the first 2k have repeated prompts
    try:
        n_kept, n_dup = result.kept.count(), result.duplicates.count()
        assert n_kept + n_dup == 2000 and n_dup > 0
        # Every duplicate points at a record that was kept.
        orphans = result.duplicates.join(
            result.kept.select(F.col("record_id").alias("kept_record_id")), "kept_record_id", "left_anti"
        )
        assert orphans.count() == 0
        m = dedup_metrics(result)
        assert sum(m["removed_by_method"].values()) == n_dup == sum(m["removed_by_category"].values())
    finally:
        result.cleanup()


def test_an_empty_arrow_batch_sketches_to_an_empty_batch():
    """An engine may hand a UDF an empty batch: every sketch column must have zero rows too (one
    empty piece per column made the batch's columns of unequal length)."""
    import pyarrow as pa

    from dolly_spark.prep.dedup_lsh import _sketch_batch

    batch = pa.RecordBatch.from_arrays([pa.array([], pa.string())] * 2, names=["dedup_text", "norm_a"])
    params = {"kind": "word", "ngram": 2, "num_perm": 16, "seed": 1, "bands": 4, "rows": 4}
    params.update({"short_words": 99, "min_edits": 1, "rate": 0.02, "exact_below": 8})
    out = _sketch_batch(batch, "dedup_text", ["norm_a"], params)
    assert out.num_rows == 0 and out.schema.names[-3:] == ["shingles", "bands", "short_keys"]
