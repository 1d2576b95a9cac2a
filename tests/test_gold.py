import random

import pytest
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from dolly_spark.ops import schemas, tables
from dolly_spark.prep import gold, gold_stats, packing
from dolly_spark.text import prompts
from dolly_spark.text.tokenizer import load_fast_tokenizer
from tests.shared_data import DOLLY_JSONL, TOKENIZER_DIR

CANDIDATE_SCHEMA = (
    "record_id string, instruction string, context string, response string, category string, "
    "source_file string, line_number long"
)
END_ID, INSTRUCTION_ID, RESPONSE_ID, NEWLINE_ID = 50277, 50278, 50279, 187


def cfg(**kw):
    return gold.GoldConfig(tokenizer=str(TOKENIZER_DIR), **kw)


def candidates(spark, rows):
    full = [(r[0], r[1], r[2], r[3], r[4] if len(r) > 4 else "open_qa", "f.jsonl", i) for i, r in enumerate(rows)]
    return spark.createDataFrame(full, CANDIDATE_SCHEMA)


@pytest.fixture(scope="module")
def tok():
    return load_fast_tokenizer(str(TOKENIZER_DIR))


# ---- 1. prompt format --------------------------------------------------------------------------

WITH_CONTEXT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n"
    "\n"
    "### Instruction:\n"
    "Who wrote it?\n"
    "\n"
    "Input:\n"
    "Hamlet is a play.\n"
    "\n"
    "### Response:\n"
    "Shakespeare.\n"
    "\n"
    "### End"
)
WITHOUT_CONTEXT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n"
    "\n"
    "### Instruction:\n"
    "Name a colour.\n"
    "\n"
    "### Response:\n"
    "Blue.\n"
    "\n"
    "### End"
)


def test_formatted_text_is_byte_identical_to_dolly():
    assert prompts.format_text("Who wrote it?", "Hamlet is a play.", "Shakespeare.").encode() == WITH_CONTEXT.encode()
    assert prompts.format_text("Name a colour.", "", "Blue.").encode() == WITHOUT_CONTEXT.encode()
    assert prompts.format_text("Name a colour.", None, "Blue.").encode() == WITHOUT_CONTEXT.encode()
    assert prompts.format_prompt("Name a colour.") == WITHOUT_CONTEXT[: WITHOUT_CONTEXT.index("Blue.")]
    assert prompts.format_prompt("Name a colour.").endswith("### Response:\n")


def test_format_prompts_on_frame(spark):
    df = candidates(
        spark, [("a", "Who wrote it?", "Hamlet is a play.", "Shakespeare."), ("b", "Name a colour.", "", "Blue.")]
    )
    out = df.transform(gold.format_prompts).select("record_id", "prompt", "text")
    expected = [
        ("a", WITH_CONTEXT[: WITH_CONTEXT.index("Shakespeare.")], WITH_CONTEXT),
        ("b", WITHOUT_CONTEXT[: WITHOUT_CONTEXT.index("Blue.")], WITHOUT_CONTEXT),
    ]
    assertDataFrameEqual(out, spark.createDataFrame(expected, "record_id string, prompt string, text string"))


# ---- 2. tokens ---------------------------------------------------------------------------------


def test_response_key_is_one_special_token_then_newline(tok):
    assert tok.encode("### Response:\n", add_special_tokens=False).ids == [RESPONSE_ID, NEWLINE_ID]
    assert tok.encode("### End", add_special_tokens=False).ids == [END_ID]
    assert tok.encode("### Instruction:", add_special_tokens=False).ids == [INSTRUCTION_ID]
    assert gold.response_boundary_ids(tok) == (RESPONSE_ID, NEWLINE_ID)


def test_tokenize_on_frame_matches_the_tokenizer(spark, tok):
    df = candidates(
        spark, [("a", "Who wrote it?", "Hamlet is a play.", "Shakespeare."), ("b", "Name a colour.", "", "Blue.")]
    )
    out = df.transform(lambda d: gold.tokenize_records(d, cfg())).transform(gold.format_prompts)
    out = out.orderBy("record_id").collect()
    for row, text in zip(out, (WITH_CONTEXT, WITHOUT_CONTEXT)):
        ids = tok.encode(text, add_special_tokens=False).ids
        assert row.input_ids == ids
        assert row.seq_len == len(ids)
        assert ids[-1] == END_ID  # no EOS or pad appended
        assert row.input_ids[row.prompt_len - 2 : row.prompt_len] == [RESPONSE_ID, NEWLINE_ID]
        assert row.input_ids[: row.prompt_len] == tok.encode(row.prompt, add_special_tokens=False).ids


def test_tokenize_texts_marks_missing_response_key(tok):
    _, prompt_lens = gold.tokenize_texts(tok, ["no template here", prompts.format_text("Q", "", "A")])
    assert prompt_lens[0] is None and prompt_lens[1] is not None


def test_too_long_goes_to_quarantine_untruncated(spark):
    long_response = "word " * 200
    df = candidates(spark, [("short", "Q?", "", "A."), ("long", "Q?", "", long_response)])
    built = gold.build_gold(df, cfg(max_record_tokens=64), silver_version=3)
    assert [r.record_id for r in gold.gold_rows(built).collect()] == ["short"]
    q = gold.gold_quarantine_rows(built)
    assertDataFrameEqual(
        q.select("record_id", "stage", "reason", "reasons"),
        spark.createDataFrame(
            [("long", "gold", "too_long", ["too_long"])],
            "record_id string, stage string, reason string, reasons array<string>",
        ),
    )
    assert q.columns == list(gold.QUARANTINE_SCHEMA.replace(",", "").split()[::2])
    long_row = built.where("record_id = 'long'").first()
    assert long_row.seq_len > 64 and len(long_row.input_ids) == long_row.seq_len and long_row.pack_id is None


def test_separator_tokens_count_against_max_record_tokens(spark, tok):
    text = prompts.format_text("Q?", "", "A.")
    n = len(tok.encode(text, add_special_tokens=False).ids)
    df = candidates(spark, [("r", "Q?", "", "A.")])
    assert gold.gold_rows(gold.build_gold(df, cfg(max_record_tokens=n), None)).count() == 1
    assert gold.gold_rows(gold.build_gold(df, cfg(max_record_tokens=n, pack_separator_tokens=1), None)).count() == 0


# ---- 3. split ----------------------------------------------------------------------------------


def test_split_hash_matches_python_and_depends_on_seed(spark):
    ids = [f"rec{i}" for i in range(50)]
    df = spark.createDataFrame([(i,) for i in ids], "record_id string")
    got = {r.record_id: r.u for r in df.select("record_id", gold.split_unit_col(7).alias("u")).collect()}
    assert all(abs(got[i] - gold.split_unit(i, 7)) < 1e-15 for i in ids)
    assert any(abs(gold.split_unit(i, 7) - gold.split_unit(i, 8)) > 0.01 for i in ids)


def test_assign_split_is_stable_when_records_are_added(spark):
    c = cfg(eval_size=200, eval_reference_rows=1000)
    first = spark.createDataFrame([(f"a{i}", "open_qa") for i in range(400)], "record_id string, category string")
    more = spark.createDataFrame([(f"b{i}", "closed_qa") for i in range(400)], "record_id string, category string")
    before = first.transform(lambda d: gold.assign_split(d, c))
    after = (
        first.unionByName(more).transform(lambda d: gold.assign_split(d, c)).where(F.col("record_id").startswith("a"))
    )
    assertDataFrameEqual(before, after)
    expected_eval = {r for r in (f"a{i}" for i in range(400)) if gold.split_unit(r, c.split_seed) < 0.2}
    assert {r.record_id for r in before.where("split = 'eval'").collect()} == expected_eval
    assert 40 <= len(expected_eval) <= 120  # 20% of 400, binomial spread


def test_gold_config_validation():
    assert cfg().eval_fraction == pytest.approx(200 / 15011)  # Dolly's train_dolly.py: --test-size 200
    with pytest.raises(ValueError):
        cfg(eval_size=0)
    with pytest.raises(ValueError):
        cfg(eval_size=20, eval_reference_rows=10)
    with pytest.raises(ValueError):
        cfg(pack_separator_tokens=-1)


def test_tokenizer_default_comes_from_environment(monkeypatch):
    monkeypatch.setenv("DOLLY_TOKENIZER", "/some/dir")
    assert gold.GoldConfig().tokenizer == "/some/dir"


# ---- 5. packing --------------------------------------------------------------------------------


def test_best_fit_decreasing_packs_within_budget_deterministically():
    rng = random.Random(0)
    ids = [f"r{i}" for i in range(300)]
    lengths = [rng.randint(1, 100) for _ in ids]
    packs = packing.best_fit_decreasing(ids, lengths, budget=100, separator=1)
    totals: dict[int, int] = {}
    for p, n in zip(packs, lengths):
        totals[p] = totals.get(p, 0) + n + 1
    assert max(totals.values()) <= 100
    assert sorted(totals) == list(range(len(totals)))  # dense pack numbers
    lower_bound = -(-sum(n + 1 for n in lengths) // 100)
    assert len(totals) <= lower_bound * 11 // 9 + 1
    shuffled = list(zip(ids, lengths))
    rng.shuffle(shuffled)
    again = dict(
        zip(
            [i for i, _ in shuffled],
            packing.best_fit_decreasing([i for i, _ in shuffled], [n for _, n in shuffled], 100, 1),
        )
    )
    assert again == dict(zip(ids, packs))  # input order does not matter


def test_best_fit_decreasing_known_case_and_oversize():
    assert packing.best_fit_decreasing(["a", "b", "c", "d"], [6, 4, 5, 5], 10) == [0, 0, 1, 1]
    with pytest.raises(ValueError):
        packing.best_fit_decreasing(["a"], [11], 10)


def test_plan_packing_per_split_skips_rejected(spark):
    rows = [("a", "train", 6, None), ("b", "train", 4, None), ("c", "eval", 5, None), ("d", "train", 9, "too_long")]
    df = spark.createDataFrame(rows, "record_id string, split string, seq_len int, reason string")
    out = packing.plan_packing(df, cfg(max_record_tokens=10)).select("record_id", "pack_id")
    assertDataFrameEqual(
        out, spark.createDataFrame([("a", 0), ("b", 0), ("c", 0), ("d", None)], "record_id string, pack_id long")
    )


# ---- 4. assembly and stats ---------------------------------------------------------------------


def test_build_gold_schema_and_version(spark):
    df = candidates(spark, [("a", "Who wrote it?", "Hamlet is a play.", "Shakespeare.", "closed_qa")])
    g = gold.gold_rows(gold.build_gold(df, cfg(), silver_version=5))
    contract = spark.createDataFrame([], schemas.GOLD_SCHEMA).schema
    assert [(f.name, f.dataType) for f in g.schema.fields] == [(f.name, f.dataType) for f in contract.fields]
    assert schemas.GOLD_SCHEMA.startswith("record_id string, category string, split string")
    row = g.first()
    assert (row.record_id, row.category, row.silver_version, row.pack_id, row.context) == (
        "a",
        "closed_qa",
        5,
        0,
        "Hamlet is a play.",
    )
    assert row.text == WITH_CONTEXT and row.split in gold.SPLITS


def test_length_stats_on_literal_frame(spark):
    rows = [
        ("a", "train", "x", 10, 4, 0),
        ("b", "train", "x", 30, 6, 0),
        ("c", "train", "y", 20, 5, 1),
        ("d", "eval", "x", 8, 3, 0),
    ]
    g = spark.createDataFrame(
        rows, "record_id string, split string, category string, seq_len int, prompt_len int, pack_id long"
    )
    out = gold_stats.length_stats(g, pack_budget=40).select(
        "split", "category", "records", "tokens", "min_seq_len", "max_seq_len", "packs", "packing_efficiency"
    )
    expected = [
        ("train", "x", 2, 40, 10, 30, 1, None),
        ("train", "y", 1, 20, 20, 20, 1, None),
        ("eval", "x", 1, 8, 8, 8, 1, None),
        ("train", "*", 3, 60, 10, 30, 2, 60 / 80),
        ("eval", "*", 1, 8, 8, 8, 1, 8 / 40),
    ]
    schema = "split string, category string, records long, tokens long, min_seq_len int, max_seq_len int, packs long, packing_efficiency double"
    assertDataFrameEqual(out, spark.createDataFrame(expected, schema))


def test_write_gold_keeps_other_stages_and_is_idempotent(spark, tmp_path):
    names = tables.TableNames(root=str(tmp_path))
    silver_reject = spark.createDataFrame(
        [("bad", "silver", "empty_response", ["empty_response"], "f.jsonl", 9, '{"x": 1}', "open_qa", None)],
        gold.QUARANTINE_SCHEMA,
    )
    tables.write_table(spark, silver_reject, names.quarantine)
    df = candidates(spark, [("short", "Q?", "", "A."), ("long", "Q?", "", "word " * 200)])
    for _ in range(2):  # a re-run replaces its own rejects
        result = gold.write_gold(spark, names, df, cfg(max_record_tokens=64), silver_version=1)
    assert (result["gold_rows"], result["quarantined_rows"], result["quarantined_by_reason"]) == (1, 1, {"too_long": 1})
    q = tables.read_table(spark, names.quarantine).select("record_id", "stage", "reason", "line_number")
    assertDataFrameEqual(
        q,
        spark.createDataFrame(
            [("bad", "silver", "empty_response", 9), ("long", "gold", "too_long", 1)],
            "record_id string, stage string, reason string, line_number long",
        ),
    )
    stats = tables.read_table(spark, names.gold_stats).where("category = '*'").first()
    assert (stats.records, stats.pack_budget) == (1, 64)


# ---- real dolly-15k ----------------------------------------------------------------------------


_REAL_GOLD: dict = {}


@pytest.fixture(scope="session")
def real_gold(spark, tmp_path_factory):
    """dolly-15k prepared to silver, then gold written: (TableNames, write_gold result).

    Memoised in the module so test_report (which imports this fixture) reuses the same build.
    """
    if "built" not in _REAL_GOLD:
        from dolly_spark.prep.prepare import PrepareConfig, run

        root = tmp_path_factory.mktemp("gold_real")
        run(PrepareConfig(input=str(DOLLY_JSONL), output_root=str(root), until="silver"), spark)
        names = tables.TableNames(root=str(root))
        silver = tables.read_table(spark, names.silver)
        result = gold.write_gold(spark, names, silver, cfg(), tables.table_version(spark, names.silver))
        # Readers see what a prepare run committed: commit this hand-built set as prepare would.
        from dolly_spark.ops import manifest
        from dolly_spark.ops.schemas import DUPLICATES_SCHEMA

        # No dedup ran: an empty duplicates table, so every view has its sources.
        tables.write_table(spark, spark.createDataFrame([], DUPLICATES_SCHEMA), names.duplicates)
        versions = {
            t: tables.table_version(spark, names.ref(t)) for t in ("bronze", "silver", "quarantine", "duplicates")
        }
        manifest.commit(spark, names, "real_gold_fixture", "gold", {**versions, **result["versions"]})
        _REAL_GOLD["built"] = (names, result)
    return _REAL_GOLD["built"]


def test_real_gold_counts_split_and_packing(spark, real_gold, tok):
    names, result = real_gold
    silver_n = tables.read_table(spark, names.silver).count()
    assert result["input_rows"] == silver_n == result["gold_rows"] + result["quarantined_rows"]
    assert set(result["quarantined_by_reason"]) <= {"too_long", "response_key_missing"}
    g = tables.read_table(spark, names.gold)
    assert g.where(F.col("silver_version") != tables.table_version(spark, names.silver)).count() == 0

    # Per split and category: every category in both splits, each near the configured eval share.
    counts = {(r.split, r.category): r["count"] for r in g.groupBy("split", "category").count().collect()}
    cats = {c for _, c in counts}
    assert len(cats) == 8
    for c in cats:
        share = counts[("eval", c)] / (counts[("eval", c)] + counts[("train", c)])
        assert 0.003 < share < 0.035, (c, share)
    assert 150 < result["by_split"]["eval"] < 260

    # Rejected rows really are longer than max_record_tokens (not truncated: their text is intact).
    q = tables.read_table(spark, names.quarantine).where("stage = 'gold'").select("record_id")
    long_texts = [
        r.text for r in gold.format_prompts(tables.read_table(spark, names.silver).join(q, "record_id")).collect()
    ]
    assert len(long_texts) == result["quarantined_rows"]
    assert all(len(tok.encode(t, add_special_tokens=False).ids) > 2048 for t in long_texts)

    # Packing plan: no pack over budget; the padding target (<= 5% pad tokens) is met.
    packs = (
        g.groupBy("split", "pack_id").agg(F.sum("seq_len").alias("n")).agg(F.max("n"), F.sum("n"), F.count("*")).first()
    )
    assert packs[0] <= 2048
    assert 1 - packs[1] / (packs[2] * 2048) <= 0.05


def test_real_gold_tokens_match_prompts(spark, real_gold, tok):
    names, _ = real_gold
    sample = tables.read_table(spark, names.gold).orderBy("record_id").limit(1500).collect()
    for r in sample:
        assert r.seq_len == len(r.input_ids) <= 2048 and r.input_ids[-1] == END_ID
        assert r.input_ids[r.prompt_len - 2 : r.prompt_len] == [RESPONSE_ID, NEWLINE_ID]
        assert r.input_ids[: r.prompt_len] == tok.encode(r.prompt, add_special_tokens=False).ids
        assert r.text == prompts.format_text(r.instruction, r.context, r.response)


def _prompt_len_by_loop(seq: list[int], boundary: list[int]) -> int | None:
    # The rule as Dolly's collator applies it: the first response key, then the rest of the boundary.
    try:
        at = seq.index(boundary[0])
    except ValueError:
        return None
    end = at + len(boundary)
    return end if seq[at:end] == boundary else None


@pytest.mark.parametrize("boundary", [(7, 3), (7,)])
def test_prompt_lengths_equal_the_per_row_rule(boundary):
    import random

    import pyarrow as pa

    rng = random.Random(0)
    rows = [[], [7], [3, 7], [7, 3], [1, 7, 2, 7, 3], [7, 7, 3], [1, 2, 3]]
    rows += [[rng.choice([1, 3, 7]) for _ in range(rng.randint(0, 12))] for _ in range(500)]
    ids = pa.array(rows, pa.list_(pa.int32()))
    want = [_prompt_len_by_loop(r, list(boundary)) for r in rows]
    assert gold.prompt_lengths(ids, boundary).to_pylist() == want
    assert gold.prompt_lengths(ids.slice(3), boundary).to_pylist() == want[3:]  # offsets not from 0
    assert None in want and any(w is not None for w in want)
