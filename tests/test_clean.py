import unicodedata

from hypothesis import given, settings
from hypothesis import strategies as st
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from dolly_spark.prep import clean

SCHEMA = (
    "record_id string, instruction string, context string, response string, category string, "
    "ingest_error string, field_errors array<string>"
)


def frame(spark, rows):
    full = [
        (
            r.get("id", "r"),
            r.get("i", "Q?"),
            r.get("c", ""),
            r.get("r", "A."),
            r.get("cat", "open_qa"),
            r.get("err"),
            r.get("fe", []),
        )
        for r in rows
    ]
    return spark.createDataFrame(full, SCHEMA)


def reasons_of(df):
    return df.transform(clean.collect_reasons).select("record_id", "reasons")


def test_normalize_text_value_rules():
    f = clean.normalize_text_value
    assert f("Cafe\u0301") == "Caf\u00e9"  # NFC
    assert f("  a \t  b\r\nc  ") == "a b\nc"
    assert f("x\n\n\n\ny") == "x\n\ny"
    assert f("Paris is big.[1] It rains[citation needed].") == "Paris is big. It rains."
    assert f("see [note 3] here") == "see here"
    assert f("a [x] list[2]", strip_citations=False) == "a [x] list[2]"
    assert f(None) is None


def _normalize_every_step(s: str, strip_citations: bool) -> str:
    """normalize_text_value with every step run unconditionally: the reference its shortcuts keep."""
    s = unicodedata.normalize("NFC", s).replace("\r\n", "\n").replace("\r", "\n")
    if strip_citations:
        s = clean._SPACE_BEFORE_PUNCT.sub(r"\1", clean._CITATION.sub("", s))
    s = clean._SPACES_TO_ONE.sub(" ", s)
    s = clean._MANY_NEWLINES.sub("\n\n", "\n".join(line.strip() for line in s.split("\n"))).strip()
    return "" if all(ch.isspace() or unicodedata.category(ch) == "Cf" for ch in s) else s


PIECES = [" ", "  ", "\n", "\t", "\r", "\r\n", "\x0b", "\x0c", "\x1c", "\x1f", "\xa0", "\u2003", "\u200b"]
PIECES += ["\ufeff", "a", "Z", ".", ",", "!", "[1]", "[a]", "\u00e9", "e\u0301", "\n\n\n", " .", "x y"]


@settings(max_examples=3000, deadline=None)
@given(st.lists(st.sampled_from(PIECES), max_size=14).map("".join), st.booleans())
def test_normalize_shortcuts_give_what_every_step_gives(s, strip_citations):
    assert clean.normalize_text_value(s, strip_citations) == _normalize_every_step(s, strip_citations)


def test_normalize_text_on_frame(spark):
    df = frame(spark, [{"id": "1", "i": " Hi  there ", "c": None, "r": "Yes.[12]"}])
    out = clean.normalize_text(df).select("record_id", "instruction", "context", "response")
    assertDataFrameEqual(
        out,
        spark.createDataFrame(
            [("1", "Hi there", "", "Yes.")], "record_id string, instruction string, context string, response string"
        ),
    )


def test_flag_ingest_errors_and_wrong_types(spark):
    df = frame(spark, [{"id": "1"}, {"id": "2", "err": "malformed_json"}, {"id": "3", "fe": ["wrong_type:context"]}])
    out = reasons_of(df.transform(clean.flag_ingest_errors).transform(clean.flag_wrong_types))
    assertDataFrameEqual(
        out,
        spark.createDataFrame(
            [("1", []), ("2", ["malformed_json"]), ("3", ["wrong_type"])], "record_id string, reasons array<string>"
        ),
    )


def test_flag_missing_fields(spark):
    df = frame(
        spark, [{"id": "1"}, {"id": "2", "i": None}, {"id": "3", "r": None, "c": None}, {"id": "4", "cat": None}]
    )
    out = reasons_of(df.transform(clean.flag_missing_fields))
    expected = [("1", []), ("2", ["missing_field"]), ("3", ["missing_field"]), ("4", ["missing_field"])]
    assertDataFrameEqual(out, spark.createDataFrame(expected, "record_id string, reasons array<string>"))


def test_flag_control_characters(spark):
    df = frame(
        spark, [{"id": "1", "i": "tab\tand\nnewline ok"}, {"id": "2", "r": "nul\x00"}, {"id": "3", "c": "bell\x07"}]
    )
    out = reasons_of(df.transform(clean.flag_control_characters))
    expected = [("1", []), ("2", ["control_characters"]), ("3", ["control_characters"])]
    assertDataFrameEqual(out, spark.createDataFrame(expected, "record_id string, reasons array<string>"))


def test_empty_fields_and_category(spark):
    df = frame(
        spark,
        [
            {"id": "1", "r": "   "},
            {"id": "2", "i": "\n\t"},
            {"id": "3", "cat": " Open_QA "},
            {"id": "4", "cat": "poetry"},
        ],
    )
    out = reasons_of(
        df.transform(clean.normalize_text)
        .transform(clean.normalize_category)
        .transform(clean.flag_empty_fields)
        .transform(clean.flag_unknown_category)
    )
    expected = [("1", ["empty_response"]), ("2", ["empty_instruction"]), ("3", []), ("4", ["unknown_category"])]
    assertDataFrameEqual(out, spark.createDataFrame(expected, "record_id string, reasons array<string>"))


def test_length_limits_and_template_keys(spark):
    cfg = clean.CleanConfig(max_instruction_chars=5, max_context_chars=5, max_response_chars=5)
    df = frame(
        spark,
        [
            {"id": "1", "i": "Q?", "r": "ok"},
            {"id": "2", "c": "x" * 6, "r": "ok"},
            {"id": "3", "i": "Q?", "r": "## a ### End"},
        ],
    )
    out = reasons_of(df.transform(lambda d: clean.flag_too_many_chars(d, cfg)).transform(clean.flag_template_keys))
    expected = [("1", []), ("2", ["context_too_long"]), ("3", ["response_too_long", "template_key_in_text"])]
    assertDataFrameEqual(out, spark.createDataFrame(expected, "record_id string, reasons array<string>"))


def test_validate_keeps_first_reason_and_all_reasons(spark):
    df = frame(spark, [{"id": "1"}, {"id": "2", "r": "", "cat": "poetry"}])
    df = df.withColumn("source_file", F.lit("a.jsonl")).withColumn("line_number", F.lit(1).cast("long"))
    out = clean.validate(df).select("record_id", "reason", "reasons")
    expected = [("1", None, []), ("2", "empty_response", ["empty_response", "unknown_category"])]
    assertDataFrameEqual(out, spark.createDataFrame(expected, "record_id string, reason string, reasons array<string>"))
    assert clean.silver_rows(clean.validate(df)).count() == 1
    q = clean.quarantine_rows(clean.validate(df), "silver").select("record_id", "stage", "reason")
    assertDataFrameEqual(
        q, spark.createDataFrame([("2", "silver", "empty_response")], "record_id string, stage string, reason string")
    )
