import gzip
import json

import pytest

from dolly_spark.prep.ingest import content_key, resolve_input, split_file

GOOD = {"instruction": "Q?", "context": "", "response": "A.", "category": "open_qa"}


def line(obj=GOOD):
    return json.dumps(obj).encode()


def test_split_file_parses_and_numbers_lines():
    cols = split_file("/d/a.jsonl", line() + b"\n" + line() + b"\n")
    assert cols["line_number"] == [1, 2]
    assert cols["instruction"] == ["Q?", "Q?"] and cols["ingest_error"] == [None, None]
    # Content-addressed: the same record has the same key anywhere (read_bronze adds the tiebreak).
    assert (
        cols["record_id"][0]
        == cols["record_id"][1]
        == content_key(json.dumps(GOOD, sort_keys=True, separators=(",", ":")), b"")
    )


@pytest.mark.parametrize(
    "payload, error",
    [
        (b'{"instruction": "Q?", "resp', "malformed_json"),
        (b"[1, 2]", "not_an_object"),
        (b'{"instruction": "a", "instruction": "b", "response": "x", "category": "open_qa"}', "duplicate_key"),
        (b'{"instruction": "\xff\xfe", "response": "x", "category": "open_qa"}', "invalid_utf8"),
        (b"   ", "blank_line"),
    ],
)
def test_line_level_errors(payload, error):
    cols = split_file("a.jsonl", line() + b"\n" + payload + b"\n")
    assert cols["ingest_error"] == [None, error]
    assert cols["raw_line"][1]  # the corrupt text is kept


def test_wrong_types_extra_keys_and_nulls():
    obj = {"instruction": "Q?", "context": {"nested": 1}, "response": 42, "category": None, "extra": 1}
    cols = split_file("a.jsonl", line(obj))
    assert cols["field_errors"] == [["wrong_type:context", "wrong_type:response"]]
    assert cols["extra_keys"] == [["extra"]] and cols["category"] == [None]


def test_bom_crlf_gzip_utf16_and_no_final_newline():
    body = line() + b"\r\n" + line()
    for content in (b"\xef\xbb\xbf" + body, gzip.compress(body), body.decode().encode("utf-16")):
        cols = split_file("a.jsonl", content)
        assert cols["ingest_error"] == [None, None], content[:8]
        assert cols["instruction"] == ["Q?", "Q?"]


def test_resolve_input_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_input(str(tmp_path / "missing.jsonl"))
    with pytest.raises(FileNotFoundError, match="no files"):
        resolve_input(str(tmp_path))


def test_hub_download_offline_names_the_input_option(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RuntimeError, match="--input"):
        resolve_input("databricks/databricks-dolly-15k")


def test_lone_surrogate_escape_is_an_ingest_error_not_a_crash():
    import pyarrow as pa

    from dolly_spark.prep.ingest import _ARROW_SCHEMA

    bad = b'{"instruction": "\\ud800", "response": "x", "category": "open_qa", "\\udc00k": 1}'
    cols = split_file("a.jsonl", line() + b"\n" + bad + b"\n")
    assert cols["ingest_error"] == [None, "lone_surrogate"]
    pa.RecordBatch.from_pydict(cols, schema=_ARROW_SCHEMA)  # encodable: the job would not crash
    pair = split_file("a.jsonl", b'{"instruction": "\\ud83d\\ude00", "response": "x", "category": "open_qa"}')
    assert pair["instruction"] == ["\U0001f600"] and pair["ingest_error"] == [None]


def test_content_keys_ignore_file_names_and_positions():
    a = split_file("/in/a/part.jsonl", line())
    b = split_file("/elsewhere/b.jsonl", b"\n".join([line({**GOOD, "response": "B."}), line()]))
    assert a["record_id"] == [b["record_id"][1]] and b["record_id"][0] != a["record_id"][0]
    malformed = split_file("/in/x.jsonl", b'{"instruction": "Q')
    assert malformed["record_id"] == [content_key(None, b'{"instruction": "Q')]
