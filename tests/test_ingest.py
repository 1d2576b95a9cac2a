import gzip
import json

import pytest

from dolly_spark.prep.ingest import record_id_for, resolve_input, split_file

GOOD = {"instruction": "Q?", "context": "", "response": "A.", "category": "open_qa"}


def line(obj=GOOD):
    return json.dumps(obj).encode()


def test_split_file_parses_and_numbers_lines():
    cols = split_file("/d/a.jsonl", line() + b"\n" + line() + b"\n")
    assert cols["line_number"] == [1, 2]
    assert cols["instruction"] == ["Q?", "Q?"] and cols["ingest_error"] == [None, None]
    assert cols["record_id"][0] != cols["record_id"][1]  # same text, different position
    assert cols["record_id"][0] == record_id_for("a.jsonl", 1, line())


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


def test_record_ids_use_the_path_below_the_input_root():
    from dolly_spark.prep.ingest import source_name

    a = split_file("/in/a/part.jsonl", line(), root="/in")
    b = split_file("/in/b/part.jsonl", line(), root="/in")
    assert a["record_id"] != b["record_id"]
    assert a["record_id"] == [record_id_for("a/part.jsonl", 1, line())]
    # a single-file input keeps the base name, wherever the file lives
    assert split_file("/x/y/a.jsonl", line())["record_id"] == [record_id_for("a.jsonl", 1, line())]
    assert source_name("dbfs:/Volumes/c/s/v/in/a.jsonl", "/Volumes/c/s/v/in") == "a.jsonl"
    assert source_name("file:///in/sub/a.jsonl", "/in") == "sub/a.jsonl"


def test_skipped_files_lists_hidden_and_underscore_files(tmp_path):
    from dolly_spark.prep.ingest import skipped_files

    for rel in ("_SUCCESS", ".x.crc", "_tmp/p.jsonl", "ok/p.jsonl"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("{}\n")
    assert skipped_files(str(tmp_path)) == [".x.crc", "_SUCCESS", "_tmp/p.jsonl"]
