"""The near-duplicate decision and the short-record keys, in plain Python (docs/dedup.md)."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dolly_spark.prep.dedup import DedupConfig
from dolly_spark.prep.dedup_edit import edit_budget, is_slot_change, levenshtein_within, near_duplicate
from dolly_spark.prep.dedup_short import _field_key_sets, field_keys, record_keys, records_keys

TOKENS = st.lists(st.sampled_from("a b c d".split()), max_size=12)


def full_levenshtein(a, b):
    d = [[i + j if i * j == 0 else 0 for j in range(len(b) + 1)] for i in range(len(a) + 1)]
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            d[i][j] = min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (a[i - 1] != b[j - 1]))
    return d[-1][-1]


@settings(max_examples=400, deadline=None)
@given(a=TOKENS, b=TOKENS, k=st.integers(0, 5))
def test_banded_levenshtein_matches_the_full_dp(a, b, k):
    assert levenshtein_within(a, b, k) == min(full_levenshtein(a, b), k + 1)


def test_banded_levenshtein_counts_substitutions_inserts_and_deletes():
    s = "the quick brown fox jumps over the lazy dog".split()
    assert levenshtein_within(s, s, 0) == 0
    assert levenshtein_within(s, s[:4] + ["red"] + s[5:], 2) == 1
    assert levenshtein_within(s, s[:4] + ["red"] + s[4:], 2) == 1
    assert levenshtein_within(s, s[:4] + s[5:], 2) == 1
    assert levenshtein_within(s, list(reversed(s)), 2) == 3  # over budget: k + 1
    assert levenshtein_within([], ["a", "b"], 1) == 2 and levenshtein_within([], [], 0) == 0


def test_edit_budget():
    assert [edit_budget(n, 1, 0.02, 3) for n in (0, 2, 3, 49, 99, 100, 149, 150, 500)] == [0, 0, 1, 1, 1, 2, 2, 3, 10]
    assert edit_budget(50, 0, 0.02, 3) == 1 and edit_budget(49, 0, 0.02, 3) == 0


def _pair(a, b):
    return near_duplicate(a, b, 1, 0.02, 3)


def test_one_word_per_field_is_a_copy_at_several_lengths():
    for n_ins, n_resp in ((9, 10), (20, 60), (30, 149)):
        ins = [f"i{j}" for j in range(n_ins)]
        resp = [f"r{j}" for j in range(n_resp)]
        copy_ins, copy_resp = list(ins), list(resp)
        copy_ins[n_ins // 2] = "changed"
        del copy_resp[n_resp // 3]  # a deletion in the answer
        assert _pair([" ".join(ins), " ".join(resp)], [" ".join(copy_ins), " ".join(copy_resp)])
        copy_resp[0] = "other"  # a second edit in a short answer is over budget
        assert _pair([" ".join(ins), " ".join(resp)], [" ".join(copy_ins), " ".join(copy_resp)]) is (n_resp >= 100)


def test_different_tasks_over_a_shared_list_are_not_copies():
    items = [f"item{j}" for j in range(40)]
    labels = ["yes" if j % 3 else "no" for j in range(40)]
    flipped = [("no" if lab == "yes" else "yes") if j % 10 == 0 else lab for j, lab in enumerate(labels)]
    a = [
        "tell me which of these are fruits " + " ".join(items),
        " ".join(f"{i} {lab}" for i, lab in zip(items, labels)),
    ]
    b = [
        "tell me which of these grow in spain " + " ".join(items),
        " ".join(f"{i} {lab}" for i, lab in zip(items, flipped)),
    ]
    assert not _pair(a, b)
    assert not _pair(a[:1], b[:1])  # the questions alone differ by more than the budget too


def test_slot_change_and_short_answers_are_not_copies():
    chocolate = ["is it safe for dogs to eat chocolate", "no chocolate is considered dangerous for dogs"]
    avocado = ["is it safe for dogs to eat avocado", "no avocado is considered dangerous for dogs"]
    assert not _pair(chocolate, avocado)
    assert not _pair(["what is the capital of france", "paris"], ["what is the capital of spain", "madrid"])
    assert not _pair(["melting point of magnesium", "650 c"], ["boiling point of magnesium", "1090 c"])
    assert _pair(["what is the capital of france", "paris"], ["what is the capital of france please", "paris"])
    assert _pair(["", ""], ["", ""]) and not _pair(["a b c", ""], ["a b c", "x"])
    assert is_slot_change([[("chocolate", "avacado")], [("chocolate", "avocado")]])
    assert is_slot_change([[("chocolat", "avocado")], [("chocolate", "avocado")]])
    assert not is_slot_change([[("middle", "centre")], [("flows", "runs")]])
    assert not is_slot_change([[("for", "music")], [("for", "winter")]])  # unrelated new words: an edit
    assert _pair(
        ["a list of okrs for sales", "okrs for sales are"], ["a list of river for sales", "winter for sales are"]
    )


@settings(max_examples=300, deadline=None)
@given(a=st.lists(st.lists(st.sampled_from("a b c d e".split()), max_size=9), min_size=1, max_size=3), data=st.data())
def test_short_record_keys_are_shared_by_every_pair_within_one_edit_per_field(a, data):
    b = []
    for field in a:
        f = list(field)
        op = data.draw(st.sampled_from(("none", "sub", "ins", "del")))
        pos = data.draw(st.integers(0, max(len(f) - 1, 0)))
        if op == "sub" and f:
            f[pos] = "z"
        elif op == "ins":
            f.insert(pos, "z")
        elif op == "del" and f:
            del f[pos]
        b.append(f)
    texts_a, texts_b = [" ".join(f) for f in a], [" ".join(f) for f in b]
    if _pair(texts_a, texts_b):
        assert set(record_keys(texts_a, 99, 1, 0.02, 3)) & set(record_keys(texts_b, 99, 1, 0.02, 3))


@settings(max_examples=200, deadline=None)
@given(n=st.integers(29, 37), op=st.sampled_from(("sub", "ins", "del")), data=st.data())
def test_short_record_keys_across_the_neighbourhood_switch(n, op, data):
    """First fields around NEIGHBOURHOOD_WORDS (32) tokens switch key kinds: pairs still meet."""
    a = [f"w{j}" for j in range(n)]
    b = list(a)
    pos = data.draw(st.integers(0, n - 1))
    if op == "sub":
        b[pos] = "z"
    elif op == "ins":
        b.insert(pos, "z")
    else:
        del b[pos]
    ka, kb = record_keys([" ".join(a), "x y"], 99, 1, 0.02, 8), record_keys([" ".join(b), "x y"], 99, 1, 0.02, 8)
    assert set(ka) & set(kb)


def test_short_record_keys_skip_long_records_and_bound_their_count():
    assert record_keys(["w " * 100, "x"], 99, 1, 0.02, 3) == []
    assert len(record_keys(["a b c d", "e f g h", "i j k l"], 99, 1, 0.02, 3)) <= 5 * 4 * 4
    keys = record_keys(["the the cat sat on the mat today", ""], 99, 1, 0.02, 8)
    assert len(keys) == len(set(keys))  # a repeated token: one key, or the record pairs with itself
    assert field_keys([], 1, 0.02, 3) == ["="] and field_keys(["paris"], 1, 0.02, 3) == ["=paris"]


def test_records_keys_are_one_hash_per_combination_of_field_keys():
    """Batch keys equal one-record keys, and two records share a key exactly when they share a
    combination of field keys (no combination lost or merged by the hashing)."""
    import itertools

    records = [
        ["the cat sat on the mat", "a b c d e f g h i", "p q r s"],
        ["w " * 120, "x", "y"],  # a long field: no keys
        ["the cat sat on a mat", "a b c d e f g h", "p q r s"],
        ["", "", ""],
        ["the dog sat on the mat", "a b c d e f g h i", "p q r t"],
    ]
    batch = records_keys(records, 99, 1, 0.02, 3)
    assert [k.tolist() for k in batch] == [record_keys(r, 99, 1, 0.02, 3) for r in records]
    combos = []
    for r in records:
        sets = _field_key_sets(r, 99, 1, 0.02, 3)
        combos.append(set(itertools.product(*sets)) if sets else set())
    assert [len(k) for k in batch] == [len(c) for c in combos]
    for i, j in itertools.combinations(range(len(records)), 2):
        assert len(set(batch[i]) & set(batch[j])) == len(combos[i] & combos[j])


@settings(max_examples=150, deadline=None)
@given(
    records=st.lists(
        st.tuples(
            st.lists(st.sampled_from("a b c d".split()), max_size=40),
            st.lists(st.sampled_from("a b c d".split()), max_size=12),
            st.lists(st.sampled_from("a b".split()), max_size=3),
        ),
        min_size=1,
        max_size=8,
    ),
    exact_below=st.sampled_from([1, 3, 8]),
)
def test_hashed_keys_share_exactly_what_the_key_strings_share(records, exact_below):
    """The numpy keys (token-hash polynomials) against the key strings they stand for: per record
    as many keys as combinations, and every two records share as many keys as combinations."""
    import itertools

    texts = [[" ".join(f) for f in r] for r in records]
    batch = records_keys(texts, 35, 1, 0.02, exact_below)
    combos = []
    for r in texts:
        sets = _field_key_sets(r, 35, 1, 0.02, exact_below)
        combos.append(set(itertools.product(*sets)) if sets else set())
    assert [len(k) for k in batch] == [len(c) for c in combos]
    for a, b in itertools.combinations(range(len(texts)), 2):
        assert len(set(batch[a]) & set(batch[b])) == len(combos[a] & combos[b])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"max_edit_rate": 0.6}, "max_edit_rate"),
        ({"min_edits": -1}, "min_edits"),
        ({"short_field_words": 100}, "short_field_words=100 allows 2 edits"),
        ({"min_edits": 2}, "short_field_words=99 allows 2 edits"),
        ({"lsh_recall": 1.0}, "lsh_recall"),
    ],
)
def test_config_errors_are_one_line(kwargs, message):
    with pytest.raises(ValueError, match=message) as err:
        DedupConfig(**kwargs)
    assert "\n" not in str(err.value)


def test_min_edits_two_works_without_short_keys():
    cfg = DedupConfig(min_edits=2, short_field_words=0)
    assert cfg.field_budget(10) == 2
