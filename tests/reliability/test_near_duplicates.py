"""Near duplicates in short records: one substituted word in a 9-word instruction and one in its
response is a copy (one token edit per field, within the budget; word-bigram Jaccard only 0.6 per
field), while short questions that differ in their subject and answer are different records."""

from __future__ import annotations

from dolly_spark.prep.dedup import DedupConfig, deduplicate

SCHEMA = "record_id string, instruction string, context string, response string, category string"

ORIGINAL = (
    "Which river flows through the middle of old Budapest?",
    "The Danube river flows through the middle of Budapest.",
)
COPY = (
    "Which river flows through the centre of old Budapest?",  # middle -> centre
    "The Danube river runs through the middle of Budapest.",  # flows -> runs
)
DIFFERENT = [
    # from dolly-15k: the slot changes in the question and in the answer
    ("Is it safe for dogs to eat chocolate?", "No, chocolate is considered dangerous for dogs to consume."),
    ("Is it safe for dogs to eat avocado?", "No, avocado is considered dangerous for dogs to consume."),
    ("What is the capital of France?", "Paris"),
    ("What is the capital of Spain?", "Madrid"),
    ("What is the capital of France?", "The capital of France is Paris."),
    ("What is the capital of Spain?", "The capital of Spain is Madrid."),
    ("Who was the first president of the United States?", "George Washington was the first president."),
    ("Who was the second president of the United States?", "John Adams was the second president."),
    (
        "What is the boiling point of water in degrees Celsius?",
        "Water boils at 100 degrees Celsius at sea level.",
    ),
    (
        "What is the boiling point of water in degrees Fahrenheit?",
        "Water boils at 212 degrees Fahrenheit at sea level.",
    ),
]


def _rows():
    rows = [("a_orig", *ORIGINAL), ("b_copy", *COPY)]
    rows += [(f"d{i}", ins, resp) for i, (ins, resp) in enumerate(DIFFERENT)]
    return [(rid, ins, "", resp, "open_qa") for rid, ins, resp in rows]


def test_one_word_substitutions_in_a_short_record_are_found_and_near_misses_are_kept(spark, tmp_path):
    df = spark.createDataFrame(_rows(), SCHEMA)
    result = deduplicate(df, DedupConfig(work_dir=str(tmp_path)))
    try:
        removed = {r["record_id"]: r["kept_record_id"] for r in result.duplicates.collect()}
        kept = sorted(r["record_id"] for r in result.kept.collect())
    finally:
        result.cleanup()
    assert removed == {"b_copy": "a_orig"}, removed
    assert kept == ["a_orig"] + [f"d{i}" for i in range(len(DIFFERENT))]


def test_the_decision_respects_its_edit_budget(spark, tmp_path):
    df = spark.createDataFrame(_rows(), SCHEMA)
    # min_edits 0: a 9-word field gets floor(0.02 * 9) = 0 edits, so the copy is no longer one.
    result = deduplicate(df, DedupConfig(work_dir=str(tmp_path), min_edits=0))
    try:
        assert result.duplicates.count() == 0
    finally:
        result.cleanup()
