"""Ingest contract: exactly the named files are read, unsupported
compressions get a clear reason, and record ids (hence the train/eval split) depend on a record's
content, not on where it sits.
"""

from __future__ import annotations

import bz2
import gzip
import json

import pytest

from dolly_spark.prep import ingest
from dolly_spark.prep.gold import GoldConfig, split_unit

RECORDS = [
    {"instruction": f"Question number {i}?", "context": "", "response": f"Answer {i}.", "category": "open_qa"}
    for i in range(12)
]


def jsonl(records, extra_lines: list[bytes] = ()) -> bytes:
    return b"\n".join([*(json.dumps(r).encode() for r in records), *extra_lines]) + b"\n"


def bronze_rows(spark, path) -> list[dict]:
    return [r.asDict() for r in ingest.read_bronze(spark, str(path)).drop("ingested_at").collect()]


def ids_by_content(rows) -> dict:
    """record content (or raw line) -> sorted ids: exact duplicates keep several ids."""
    out: dict = {}
    for r in rows:
        key = r["raw_line"] if r["ingest_error"] else (r["instruction"], r["context"], r["response"], r["category"])
        out.setdefault(key, []).append(r["record_id"])
    return {k: sorted(v) for k, v in out.items()}


# -- 1. a named file is read whatever its name --------------------------------------------


@pytest.mark.parametrize("name", ["_part.jsonl", ".hidden.jsonl", "_SUCCESS"])
def test_a_named_file_is_read_whatever_its_name(spark, tmp_path, name):
    p = tmp_path / name
    p.write_bytes(jsonl(RECORDS[:3]))
    rows = bronze_rows(spark, p)
    assert sorted(r["line_number"] for r in rows) == [1, 2, 3]
    assert {r["source_file"] for r in rows} == {str(p)}


def test_a_named_file_inside_a_hidden_folder_is_read(spark, tmp_path):
    p = tmp_path / ".cache" / "part.jsonl"
    p.parent.mkdir()
    p.write_bytes(jsonl(RECORDS[:2]))
    assert len(bronze_rows(spark, p)) == 2


def test_folders_still_skip_hidden_and_underscore_files_with_a_warning(spark, tmp_path, caplog):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "part.jsonl").write_bytes(jsonl(RECORDS[:2]))
    (tmp_path / "in" / "_SUCCESS").write_bytes(b"")
    (tmp_path / "in" / ".part.jsonl.crc").write_bytes(b"\x00\x01")
    with caplog.at_level("WARNING"):
        rows = bronze_rows(spark, tmp_path / "in")
    assert len(rows) == 2
    assert "ignoring 2 hidden or '_'-prefixed file(s)" in caplog.text


# -- 8. unsupported compressions ------------------------------------------------------------


@pytest.mark.parametrize(
    "kind, wrap",
    [
        ("bz2", lambda b: bz2.compress(b)),
        ("gzip inside gzip", lambda b: gzip.compress(gzip.compress(b))),
        ("xz", lambda b: __import__("lzma").compress(b)),
        ("zstd", lambda b: b"\x28\xb5\x2f\xfd" + b),
        ("zip", lambda b: b"PK\x03\x04" + b),
    ],
)
def test_a_named_file_in_an_unsupported_compression_is_a_clear_error(spark, tmp_path, kind, wrap):
    p = tmp_path / "data.jsonl"
    p.write_bytes(wrap(jsonl(RECORDS[:3])))
    with pytest.raises(ingest.UnsupportedInputError, match=rf"{p}.*{kind.split()[0]}.*only plain or gzip"):
        ingest.check_input(str(p))
    with pytest.raises(ingest.UnsupportedInputError):
        ingest.read_bronze(spark, str(p))


def test_an_unsupported_compression_inside_a_folder_is_one_quarantined_row_per_file(spark, tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    (d / "a.jsonl").write_bytes(jsonl(RECORDS[:2]))
    (d / "b.jsonl.bz2").write_bytes(bz2.compress(jsonl(RECORDS[2:5])))
    (d / "c.jsonl.gz").write_bytes(gzip.compress(gzip.compress(jsonl(RECORDS[5:8]))))
    rows = bronze_rows(spark, d)
    errors = sorted((r["source_file"].rsplit("/", 1)[1], r["ingest_error"]) for r in rows if r["ingest_error"])
    assert errors == [("b.jsonl.bz2", "unsupported_compression"), ("c.jsonl.gz", "unsupported_compression")]
    assert not any(r["ingest_error"] == "invalid_utf8" for r in rows)
    assert sum(1 for r in rows if not r["ingest_error"]) == 2


# -- 4. content-addressed record ids: the split never moves --------------------------------


def test_record_ids_and_split_survive_rename_reorder_and_insertion(spark, tmp_path):
    malformed = b'{"instruction": "broken'
    first = tmp_path / "v1" / "dolly.jsonl"
    first.parent.mkdir()
    first.write_bytes(jsonl(RECORDS[:8], [malformed]))
    before = ids_by_content(bronze_rows(spark, first))

    # Renamed, moved into a folder, lines reordered, new records inserted before and between.
    second = tmp_path / "v2" / "sub" / "renamed-export.jsonl"
    second.parent.mkdir(parents=True)
    new = [{**RECORDS[0], "instruction": "A brand new question?"}, RECORDS[9], RECORDS[10]]
    reordered = [new[0], *RECORDS[7::-1][:4], new[1], *RECORDS[3::-1], new[2]]
    second.write_bytes(jsonl(reordered[:5], [malformed]) + jsonl(reordered[5:]))
    (tmp_path / "v2" / "other.jsonl").write_bytes(jsonl(RECORDS[10:12]))
    after = ids_by_content(bronze_rows(spark, tmp_path / "v2"))

    assert before.items() <= after.items()
    cfg = GoldConfig(tokenizer="unused")
    split = lambda rid: "eval" if split_unit(rid, cfg.split_seed) < cfg.eval_fraction else "train"  # noqa: E731
    assert {k: [split(i) for i in v] for k, v in before.items()} == {k: [split(i) for i in after[k]] for k in before}


def test_exact_duplicates_get_distinct_ids_that_do_not_depend_on_order(spark, tmp_path):
    a = tmp_path / "a.jsonl"
    a.write_bytes(jsonl([RECORDS[0], RECORDS[1], RECORDS[0], RECORDS[0]]))
    b = tmp_path / "b" / "zz.jsonl"
    b.parent.mkdir()
    b.write_bytes(jsonl([RECORDS[0], RECORDS[0], RECORDS[2], RECORDS[0], RECORDS[1]]))
    ra, rb = bronze_rows(spark, a), bronze_rows(spark, b)
    assert len({r["record_id"] for r in ra}) == 4
    key = (RECORDS[0]["instruction"], "", RECORDS[0]["response"], "open_qa")
    assert ids_by_content(ra)[key] == ids_by_content(rb)[key]
    assert (
        ids_by_content(ra)[(RECORDS[1]["instruction"], "", RECORDS[1]["response"], "open_qa")]
        == ids_by_content(rb)[(RECORDS[1]["instruction"], "", RECORDS[1]["response"], "open_qa")]
    )


def test_record_id_ignores_json_formatting_and_line_endings(spark, tmp_path):
    a = tmp_path / "a.jsonl"
    a.write_bytes(json.dumps(RECORDS[0]).encode() + b"\n")
    b = tmp_path / "b.jsonl.gz"
    reordered_keys = {k: RECORDS[0][k] for k in reversed(list(RECORDS[0]))}
    b.write_bytes(
        gzip.compress(
            b"\xef\xbb\xbf" + json.dumps(reordered_keys, indent=None, separators=(",", ":")).encode() + b"\r\n"
        )
    )
    assert bronze_rows(spark, a)[0]["record_id"] == bronze_rows(spark, b)[0]["record_id"]


def test_lineage_columns_stay(spark, tmp_path):
    p = tmp_path / "x.jsonl"
    p.write_bytes(jsonl(RECORDS[:2]))
    rows = sorted(bronze_rows(spark, p), key=lambda r: r["line_number"])
    assert [(r["source_file"], r["line_number"]) for r in rows] == [(str(p), 1), (str(p), 2)]


# -- 4. an overlong line is one quarantined row, whatever the split ------------------------


@pytest.mark.parametrize("chunk_mb", [None, "split"])
def test_the_configured_line_cap_reaches_the_line_ingest_and_quarantine(spark, tmp_path, chunk_mb):
    from dolly_spark.prep.prepare import PrepareConfig, run
    from tests.reliability import helpers

    long = json.dumps({**RECORDS[0], "context": "c" * 3000}).encode()  # 3 KB: over a 2 KiB cap
    path = tmp_path / "in.jsonl"
    path.write_bytes(jsonl(RECORDS[:6], [long]) + jsonl(RECORDS[6:]))
    rows = ingest.read_bronze(spark, str(path), chunk_bytes=700 if chunk_mb else 1 << 27, max_line_bytes=2048)
    got = sorted((r["line_number"], r["ingest_error"], len(r["raw_line"])) for r in rows.collect() if r["ingest_error"])
    assert got == [(7, "line_too_long", 2049)]  # the cap plus the one byte that showed it was over
    assert rows.count() == len(RECORDS) + 1
    out = tmp_path / "out"
    run(PrepareConfig(input=str(path), output_root=str(out), max_line_bytes=2048, until="silver"), spark)
    quarantine = helpers.read_rows(helpers.existing_tables(out)["quarantine"])
    assert [(q["reason"], q["line_number"]) for q in quarantine] == [("line_too_long", 7)]
    helpers.assert_accounted(out)
    with pytest.raises(ValueError, match="max_line_bytes"):
        PrepareConfig(input=str(path), output_root=str(out), max_line_bytes=1023)
