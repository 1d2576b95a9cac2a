"""Text that must never reach gold: tokenizer control strings, invisible-only fields, C1 controls,
and categories padded with tabs or no-break spaces.

Each case runs the real rules (``clean.validate`` on bronze rows from ``ingest.split_file``, and
``gold.build_gold`` with the shared GPT-NeoX tokenizer), not a copy of their logic.
"""

from __future__ import annotations

import json

import pandas as pd
import pytest
from pyspark.sql import functions as F

from dolly_spark.ops.schemas import BRONZE_SCHEMA
from dolly_spark.prep import clean, gold
from dolly_spark.prep.ingest import split_file
from tests.shared_data import TOKENIZER_DIR

GOOD = {"instruction": "What is the capital of France?", "context": "", "response": "Paris.", "category": "open_qa"}


def bronze(spark, records: list[dict]):
    lines = b"\n".join(json.dumps(r).encode() for r in records) + b"\n"
    return spark.createDataFrame(pd.DataFrame(split_file("/in/a.jsonl", lines)), BRONZE_SCHEMA)


def reasons_by_line(spark, records: list[dict]) -> dict[int, list[str]]:
    rows = bronze(spark, records).transform(clean.validate).select("line_number", "reasons").collect()
    return {r["line_number"]: list(r["reasons"]) for r in rows}


@pytest.mark.parametrize(
    "field, value, reason",
    [
        ("instruction", "\u200b\u200c\u200d", "empty_instruction"),
        ("instruction", "\u2060 \ufeff", "empty_instruction"),
        ("response", "\u200e\u200f", "empty_response"),
        ("response", "\u00ad\u2061", "empty_response"),  # other Cf: soft hyphen, function application
        ("instruction", "What\u0085 is it?", "control_characters"),
        ("response", "Paris\u009b.", "control_characters"),
        ("response", "x\u0080", "control_characters"),
    ],
)
def test_invisible_only_fields_and_c1_controls_are_quarantined(spark, field, value, reason):
    got = reasons_by_line(spark, [GOOD, {**GOOD, field: value}])
    assert got[1] == []
    assert reason in got[2], got[2]


def test_visible_text_with_format_characters_is_kept(spark):
    # A zero-width joiner inside an emoji sequence or a soft hyphen inside a word is real text.
    got = reasons_by_line(spark, [{**GOOD, "response": "Family: \U0001f468\u200d\U0001f469"}])
    assert got[1] == []


@pytest.mark.parametrize("category", ["\topen_qa", "open_qa\u00a0", "\u2003open_qa\u3000", " \u2009Open_QA\t "])
def test_category_whitespace_is_normalised_fully(spark, category):
    df = bronze(spark, [{**GOOD, "category": category}]).transform(clean.validate)
    row = df.select("category", "reasons").first()
    assert (row["category"], list(row["reasons"])) == ("open_qa", [])


def test_special_tokens_come_from_the_tokenizer_in_use():
    specials = gold.special_token_strings(str(TOKENIZER_DIR))
    assert {"<|endoftext|>", "<|padding|>"} <= specials
    # Plain added tokens (GPT-NeoX's runs of spaces) are not special and stay allowed.
    assert all(s.strip() for s in specials)


@pytest.mark.parametrize(
    "field, text",
    [
        ("response", "Paris.<|endoftext|>"),
        ("response", "x <|padding|> y"),
        ("instruction", "<|endoftext|>What?"),
        ("context", "see <|padding|>"),
    ],
)
def test_special_token_strings_in_user_text_are_quarantined_at_gold(spark, field, text):
    cands = spark.createDataFrame(
        [
            ("ok", GOOD["instruction"], "", GOOD["response"], "open_qa", "/in/a.jsonl", 1),
            (
                "bad",
                *[text if f == field else GOOD[f] for f in ("instruction", "context", "response")],
                "open_qa",
                "/in/a.jsonl",
                2,
            ),
        ],
        "record_id string, instruction string, context string, response string, category string, "
        "source_file string, line_number long",
    )
    out = gold.build_gold(cands, gold.GoldConfig(tokenizer=str(TOKENIZER_DIR)), None)
    got = {
        r["record_id"]: (r["reason"], r["input_ids"]) for r in out.select("record_id", "reason", "input_ids").collect()
    }
    assert got["ok"][0] is None
    assert got["bad"][0] == "special_token_in_text"
    kept_ids = out.where(F.col("reason").isNull()).select(F.explode("input_ids").alias("t")).distinct()
    assert kept_ids.where(F.col("t").isin(0, 1)).count() == 0
