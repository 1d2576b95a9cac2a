"""Line-based ingest split across tasks (issue 16): byte ranges read every line exactly once,
with the same text, errors and line numbers as one reader over the whole file."""

from __future__ import annotations

import gzip
import io
import json
import random

import pytest
from pyspark.testing import assertDataFrameEqual

from dolly_spark.prep import ingest, line_reader
from dolly_spark.prep.line_reader import Chunk, chunk_lines, count_line_starts, plan_chunks, with_first_lines

GOOD = {"instruction": "Q?", "context": "", "response": "A.", "category": "open_qa"}


def _lines_by_ranges(content: bytes, chunk: int) -> list[tuple[int, tuple]]:
    """(line number, line) of every range of ``content``, as the tasks and the counting pass see them."""
    opener = lambda: io.BytesIO(content)  # noqa: E731
    ranges = [Chunk("f", "text", s, min(s + chunk, len(content))) for s in range(0, max(len(content), 1), chunk)]
    counts = {("f", c.start): count_line_starts(opener, c.start, c.end) for c in ranges}
    out = []
    for c in with_first_lines(ranges, counts):
        got = list(chunk_lines(opener, "text", c.start, c.end))
        assert len(got) == counts[("f", c.start)], (c, got)
        out += [(c.first_line + i, line) for i, line in enumerate(got)]
    return out


def _random_file(rng: random.Random) -> bytes:
    pieces = []
    for _ in range(rng.randint(0, 12)):
        kind = rng.choice(["json", "long", "blank", "crlf", "bad_utf8", "empty"])
        if kind == "json":
            pieces.append(json.dumps({**GOOD, "response": "é" * rng.randint(0, 5)}).encode() + b"\n")
        elif kind == "long":
            pieces.append(json.dumps({**GOOD, "context": "x" * rng.randint(20, 90)}).encode() + b"\n")
        elif kind == "blank":
            pieces.append(b"   \n")
        elif kind == "crlf":
            pieces.append(json.dumps(GOOD).encode() + b"\r\n")
        elif kind == "bad_utf8":
            pieces.append(b'{"instruction": "\xff"}\n')
        else:
            pieces.append(b"\n")
    body = b"".join(pieces)
    if body and rng.random() < 0.5:
        body = body[:-1]  # no final newline
    if rng.random() < 0.3:
        body = b"\xef\xbb\xbf" + body
    return body


@pytest.mark.parametrize("seed", range(40))
def test_byte_ranges_read_every_line_once_with_its_number(seed):
    rng = random.Random(seed)
    content = _random_file(rng)
    whole = list(enumerate(chunk_lines(lambda: io.BytesIO(content), "text", 0, len(content)), start=1))
    for chunk in (1, 2, 3, 7, 16, 61, 200, 10_000):
        assert _lines_by_ranges(content, chunk) == whole, (seed, chunk)


def test_whole_file_reader_matches_splitting_in_memory():
    content = b"\xef\xbb\xbfa\r\n\nb\n\xff\nlast"
    got = list(chunk_lines(lambda: io.BytesIO(content), "text", 0, len(content)))
    assert got == [(b"a", "a", None), (b"", "", None), (b"b", "b", None), (b"\xff", None, "invalid_utf8"),
                   (b"last", "last", None)]  # fmt: skip


def test_truncated_gzip_is_one_row_not_a_partial_file():
    body = b"\n".join(json.dumps({**GOOD, "instruction": f"q{i}"}).encode() for i in range(2000)) + b"\n"
    whole = gzip.compress(body)
    assert len(list(chunk_lines(lambda: io.BytesIO(whole), "gzip"))) == 2000
    got = list(chunk_lines(lambda: io.BytesIO(whole[: len(whole) // 2]), "gzip"))
    assert [err for _, _, err in got] == ["corrupt_gzip"]


def test_plan_splits_only_plain_text(tmp_path):
    plain, packed = tmp_path / "a.jsonl", tmp_path / "b.jsonl.gz"
    body = b"".join(json.dumps(GOOD).encode() + b"\n" for _ in range(50))
    plain.write_bytes(body)
    packed.write_bytes(gzip.compress(body))
    chunks = plan_chunks([str(plain), str(packed)], chunk_bytes=1000)
    assert [(c.kind, c.start) for c in chunks if c.path == str(packed)] == [("gzip", 0)]
    spans = [(c.start, c.end) for c in chunks if c.path == str(plain)]
    assert spans[0][0] == 0 and spans[-1][1] == len(body) and len(spans) == -(-len(body) // 1000)
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
    with pytest.raises(ValueError, match="chunk_bytes"):
        plan_chunks([str(plain)], chunk_bytes=0)


def test_bronze_is_the_same_whatever_the_chunk_size(spark, tmp_path):
    rng = random.Random(7)
    lines = []
    for i in range(300):
        rec = {**GOOD, "instruction": f"Question {i}?", "context": "c" * rng.randint(0, 400)}
        lines.append(json.dumps(rec).encode())
        if i % 37 == 0:
            lines.append(b'{"instruction": "broken')
        if i % 53 == 0:
            lines.append(json.dumps(GOOD).encode())  # exact duplicates: the tiebreak must not move
    d = tmp_path / "in"
    d.mkdir()
    (d / "big.jsonl").write_bytes(b"\r\n".join(lines) + b"\r\n")
    (d / "small.jsonl.gz").write_bytes(gzip.compress(b"\n".join(lines[:20])))
    (d / "_skipped.jsonl").write_bytes(lines[0])
    assert len(plan_chunks([str(d / "big.jsonl")], chunk_bytes=4096)) > 10
    one = ingest.read_bronze(spark, str(d)).drop("ingested_at")
    many = ingest.read_bronze(spark, str(d), chunk_bytes=4096).drop("ingested_at")
    assertDataFrameEqual(many, one)
    rows = many.where("source_file like '%big.jsonl'").select("line_number").collect()
    assert sorted(r.line_number for r in rows) == list(range(1, len(lines) + 1))
    assert many.where("source_file like '%_skipped%'").count() == 0


def test_counting_pass_runs_only_for_split_files(spark, tmp_path, monkeypatch):
    p = tmp_path / "a.jsonl"
    p.write_bytes(json.dumps(GOOD).encode() + b"\n")
    calls = []
    monkeypatch.setattr(line_reader, "count_line_starts", lambda *a: calls.append(a) or 0)
    chunks = ingest.number_chunks(spark, plan_chunks([str(p)]))
    assert chunks == [Chunk(str(p), "text", 0, p.stat().st_size, 1)] and not calls


def test_the_dolly_column_check_peeks_at_a_gzip_head_without_reading_it_through(tmp_path):
    body = b"\n".join(json.dumps({**GOOD, "instruction": f"q{i}"}).encode() for i in range(2000)) + b"\n"
    whole = gzip.compress(body)
    cut = tmp_path / "cut.jsonl.gz"
    cut.write_bytes(whole[: len(whole) // 2])  # truncated: ingest makes it one corrupt_gzip row
    assert ingest.sample_keys([str(cut)]) == set(GOOD)
    assert ingest.sample_keys([str(cut)], lines_per_file=10**6) == set(GOOD)  # the cut ends the peek, no error
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"instruction": "Q\n[1, 2]\n')
    assert ingest.sample_keys([str(bad)]) is None
