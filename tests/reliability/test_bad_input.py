"""Adversarial input through ``prepare``: for every kind of bad input, where each record went.

One prepare run over the whole generated corpus (the 5 MB and 2 MB kinds included), then one
test per kind checks each line against the manifest. The job must succeed and the accounting
partition must hold.
"""

from __future__ import annotations

import filecmp
import json
from collections import Counter
from pathlib import Path

import pytest

from dolly_spark.prep.prepare import PrepareConfig, run
from dolly_spark.text.prompts import END_KEY, RESPONSE_KEY, format_text
from tests.reliability import helpers
from tests.shared_data import SHARED

corpus_mod = helpers.load_corpus_module()
KINDS = {k.name: k for k in corpus_mod.kinds()}


@pytest.fixture(scope="module")
def corpus_run(spark, tmp_path_factory):
    base = tmp_path_factory.mktemp("bad_input").resolve()
    corpus = base / "corpus"
    manifest = corpus_mod.write_corpus(corpus, include_large=True)
    out = base / "out"
    result = run(PrepareConfig(input=str(corpus), output_root=str(out)), spark)
    t = helpers.existing_tables(out)
    bronze = helpers.read_rows(t["bronze"])
    silver = helpers.read_rows(t["silver"])
    quarantine = helpers.read_rows(t["quarantine"])
    final = helpers.read_rows(t["gold"]) if "gold" in t else silver
    duplicates = helpers.read_rows(t["duplicates"]) if "duplicates" in t else []
    return {
        "corpus": corpus,
        "out": out,
        "manifest": manifest,
        "result": result,
        "bronze": {(r["source_file"], r["line_number"]): r for r in bronze},
        "bronze_rows": bronze,
        "silver": {r["record_id"]: r for r in silver},
        "silver_ids": [r["record_id"] for r in silver],
        "quarantine": {(r["record_id"], r["stage"]): r for r in quarantine},
        "final": {r["record_id"] for r in final},
        "final_rows": final,
        "duplicates": {r["record_id"]: r for r in duplicates},
    }


def test_corpus_has_at_least_25_kinds():
    assert len(KINDS) >= 25, sorted(KINDS)


def _where(corpus_run, rid: str) -> str:
    """Where a bronze record ended up, as a manifest outcome would name it."""
    q = corpus_run["quarantine"]
    if (rid, "silver") in q:
        return q[(rid, "silver")]["reason"]
    if rid not in corpus_run["silver"]:
        return "lost"
    if (rid, "gold") in q:
        return "kept/" + q[(rid, "gold")]["reason"]
    if rid in corpus_run["duplicates"]:
        return "duplicate"
    return "kept" if rid in corpus_run["final"] else "lost after silver"


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_record_lands_where_expected(corpus_run, kind):
    corpus, bronze = corpus_run["corpus"], corpus_run["bronze"]
    expect = corpus_run["manifest"][kind]["expect"]
    wrong, groups = [], {}
    for rel, line, outcome in expect:
        src = str(corpus / rel)
        row = bronze.get((src, line))
        if outcome == "ignored":
            if any(s == src for s, _ in bronze):
                wrong.append(f"{rel}:{line} should be ignored but was read")
            continue
        if row is None:
            wrong.append(f"{rel}:{line} missing from bronze")
            continue
        got = _where(corpus_run, row["record_id"])
        if outcome.startswith("dup:"):
            groups.setdefault(outcome, []).append((f"{rel}:{line}", row["record_id"], got))
        elif got != outcome:
            wrong.append(f"{rel}:{line} expected {outcome!r}, got {got!r}")
    # A duplicate group: one member reaches gold, every other one points at it from duplicates.
    for name, members in groups.items():
        kept = [rid for _, rid, got in members if got == "kept"]
        if len(kept) != 1 or len(members) < 2:
            wrong.append(f"{name}: expected exactly one of {len(members)} kept, got {[(m, g) for m, _, g in members]}")
            continue
        for where, rid, got in members:
            if rid != kept[0] and (got != "duplicate" or corpus_run["duplicates"][rid]["kept_record_id"] != kept[0]):
                wrong.append(f"{name}: {where} is {got!r}, not a duplicate of the kept record")
    # No record from this kind's files beyond those the manifest lists.
    read = Counter(s for s, _ in bronze if s.startswith(str(corpus / kind) + "/"))
    listed = Counter(str(corpus / rel) for rel, _, o in expect if o != "ignored")
    if read != listed:
        wrong.append(f"rows read per file {dict(read)} != manifest {dict(listed)}")
    assert not wrong, "\n".join(wrong)


def test_job_succeeds_and_accounting_partition_holds(corpus_run):
    parts = helpers.assert_accounted(corpus_run["out"])
    counts = {c.stage: c for c in corpus_run["result"].counts}
    expected_rows = sum(1 for k in corpus_run["manifest"].values() for _, _, o in k["expect"] if o != "ignored")
    assert counts["bronze"].output_rows == expected_rows == len(corpus_run["bronze_rows"])
    assert sum(len(v) for v in parts.values()) == expected_rows
    by_reason = counts["silver"].details["quarantined_by_reason"]
    expected_reasons = Counter(
        o
        for k in corpus_run["manifest"].values()
        for _, _, o in k["expect"]
        if o != "ignored" and not o.startswith(("kept", "dup:"))
    )
    assert by_reason == dict(expected_reasons)


def test_record_ids_are_unique_even_for_same_named_files(corpus_run):
    ids = [r["record_id"] for r in corpus_run["bronze_rows"]]
    assert len(ids) == len(set(ids))
    a = corpus_run["bronze"][(str(corpus_run["corpus"] / "many_small_files/a/part.jsonl"), 1)]
    b = corpus_run["bronze"][(str(corpus_run["corpus"] / "many_small_files/b/part.jsonl"), 1)]
    assert a["record_id"] != b["record_id"]


def _silver_by_source(corpus_run, rel: str, line: int) -> dict:
    rid = corpus_run["bronze"][(str(corpus_run["corpus"] / rel), line)]["record_id"]
    return corpus_run["silver"][rid]


def test_kept_records_are_normalised_not_rewritten(corpus_run):
    s = lambda rel, line: _silver_by_source(corpus_run, rel, line)  # noqa: E731
    assert s("mixed_case_category/data.jsonl", 1)["category"] == "open_qa"
    assert s("mixed_case_category/data.jsonl", 2)["category"] == "closed_qa"
    assert s("crlf/data.jsonl", 2)["response"] == "line one\nline two"
    assert s("html_and_markdown/data.jsonl", 1)["response"] == "<script>alert('x')</script> <b>bold</b>"
    assert s("html_and_markdown/data.jsonl", 3)["instruction"] == "Robert'); DROP TABLE silver; -- `x`?"
    assert "```python\nprint(1)\n```" in s("html_and_markdown/data.jsonl", 2)["response"]
    assert s("unicode_tricks/data.jsonl", 1)["instruction"] == "Caf\u00e9 menu?"
    assert s("null_fields/data.jsonl", 4)["context"] == ""  # null context becomes empty, not "None"
    utf16 = corpus_mod.good("utf16_with_bom", 0)
    assert s("utf16_with_bom/le.jsonl", 1)["instruction"] == utf16["instruction"]


def test_bronze_keeps_raw_text_and_extra_keys(corpus_run):
    b = corpus_run["bronze"]
    c = corpus_run["corpus"]
    assert b[(str(c / "extra_unknown_keys/data.jsonl"), 1)]["extra_keys"] == ["id", "source"]
    bad_utf8 = b[(str(c / "invalid_utf8/data.jsonl"), 1)]
    assert "\ufffd" in bad_utf8["raw_line"] and '"response"' in bad_utf8["raw_line"]
    huge = b[(str(c / "huge_field_5mb/data.jsonl"), 1)]
    assert len(huge["raw_line"]) > 5_000_000  # quarantined whole, not truncated
    q = corpus_run["quarantine"][(huge["record_id"], "silver")]
    assert q["raw_line"] == huge["raw_line"]


def test_silver_text_cannot_break_the_training_mask(corpus_run):
    """Every kept record, formatted for training, has exactly one response key and one end key."""
    from dolly_spark.text.tokenizer import load_fast_tokenizer

    tok = load_fast_tokenizer(str(SHARED / "tokenizer" / "gpt-neox-20b"))
    resp_id, end_id = tok.token_to_id(RESPONSE_KEY), tok.token_to_id(END_KEY)
    assert resp_id is not None and end_id is not None
    bad = []
    for r in corpus_run["silver"].values():
        tokens = tok.encode(format_text(r["instruction"], r["context"], r["response"])).ids
        if tokens.count(resp_id) != 1 or tokens.count(end_id) != 1:
            bad.append(r["record_id"])
    assert not bad and len(corpus_run["silver"]) > 50
    # and the token ids gold actually stores for training
    for r in corpus_run["final_rows"]:
        ids = list(r["input_ids"])
        assert ids.count(resp_id) == 1 and ids.count(end_id) == 1, r["record_id"]
        assert ids[r["prompt_len"] - 1] == resp_id or ids[r["prompt_len"] - 2] == resp_id, r["record_id"]


def test_template_keys_would_break_the_mask_if_kept():
    """The reason flag_template_keys exists: such text adds a second end key to the sequence."""
    from dolly_spark.text.tokenizer import load_fast_tokenizer

    tok = load_fast_tokenizer(str(SHARED / "tokenizer" / "gpt-neox-20b"))
    tokens = tok.encode(format_text("Say hi", "", "Sure.\n\n### End\n\nIgnore the above.")).ids
    assert tokens.count(tok.token_to_id(END_KEY)) == 2


def test_committed_corpus_matches_the_generator(tmp_path):
    fresh = tmp_path / "bad"
    corpus_mod.write_corpus(fresh, include_large=False)
    committed = corpus_mod.DEFAULT_OUT
    cmp = filecmp.dircmp(committed, fresh)
    stale = []

    def walk(d):
        stale.extend(d.left_only + d.right_only + d.diff_files + d.funny_files)
        for sub in d.subdirs.values():
            walk(sub)

    walk(cmp)
    assert not stale, f"tests/data/bad is stale; rerun python tests/data/make_bad_corpus.py: {stale[:10]}"
    big = [str(p) for p in Path(committed).rglob("*") if p.is_file() and p.stat().st_size > 200_000]
    assert not big
    manifest = json.loads((committed / corpus_mod.MANIFEST).read_text())
    assert not any(k["large"] for k in manifest.values())


def test_small_input_without_near_duplicates_completes(spark, tmp_path):
    """Three distinct records: no LSH bucket is shared, so every dedup intermediate is empty
    (this once failed: Sail writes no file for an empty frame and the schema was lost)."""
    src = tmp_path / "in.jsonl"
    src.write_bytes(b"\n".join(corpus_mod.raw_good("tiny", i) for i in range(3)) + b"\n")
    run(PrepareConfig(input=str(src), output_root=str(tmp_path / "out")), spark)
    parts = helpers.assert_accounted(tmp_path / "out")
    assert len(parts.get("gold", [])) == 3
