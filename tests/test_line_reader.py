"""Line-based ingest split across tasks: byte ranges read every line exactly once,
with the same text, errors and line numbers as one reader over the whole file."""

from __future__ import annotations

import gzip
import io
import json
import random
import tracemalloc

import pytest
from pyspark.testing import assertDataFrameEqual

from dolly_spark.prep import ingest
from dolly_spark.prep.line_reader import (
    DEFAULT_MAX_LINE_BYTES,
    LINE_TOO_LONG,
    Chunk,
    check_max_line_bytes,
    chunk_lines,
    count_line_starts,
    plan_chunks,
    with_first_lines,
)

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


def _counted_ranges(spark, monkeypatch, chunks) -> list:
    """The ranges ``number_chunks`` sends to the counting pass (the real pass still runs)."""
    sent = []

    def spy(session, ranges):
        sent.extend(ranges)
        return real(session, ranges)

    real = ingest.count_ranges
    monkeypatch.setattr(ingest, "count_ranges", spy)
    numbered = ingest.number_chunks(spark, chunks)
    monkeypatch.setattr(ingest, "count_ranges", real)
    return sent, numbered


def test_counting_pass_runs_only_for_split_files(spark, tmp_path, monkeypatch):
    p, big = tmp_path / "a.jsonl", tmp_path / "big.jsonl"
    p.write_bytes(json.dumps(GOOD).encode() + b"\n")
    line = json.dumps(GOOD).encode() + b"\n"
    big.write_bytes(line * 100)
    sent, numbered = _counted_ranges(spark, monkeypatch, plan_chunks([str(p)]))
    assert numbered == [Chunk(str(p), "text", 0, p.stat().st_size, 1)] and sent == []
    # A split file is counted, and only its own ranges are.
    sent, numbered = _counted_ranges(spark, monkeypatch, plan_chunks([str(p), str(big)], chunk_bytes=1000))
    assert sent and {c.path for c in sent} == {str(big)}
    starts = [c.start for c in numbered if c.path == str(big)]
    assert [c.first_line for c in numbered if c.path == str(big)] == [1 + -(-s // len(line)) for s in starts]
    # The check sees a counting pass over an unsplit file: with the selector mutated to count every
    # text file, the first assertion above would fail.
    monkeypatch.setattr(ingest, "ranges_to_count", lambda chunks: [c for c in chunks if c.kind == "text"])
    sent, _ = _counted_ranges(spark, monkeypatch, plan_chunks([str(p)]))
    assert sent == plan_chunks([str(p)])


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


# --- overlong lines ---------------------------------------------------------------------------

CAP = 1024


def _read(content: bytes, kind: str = "text", cap: int = CAP) -> list[tuple]:
    return list(chunk_lines(lambda: io.BytesIO(content), kind, 0, len(content), max_line_bytes=cap))


@pytest.mark.parametrize("ending", [b"\n", b""], ids=["newline", "at_eof"])
def test_a_line_exactly_at_the_cap_is_kept_one_byte_more_is_quarantined(ending):
    at_cap, over = b"a" * CAP, b"b" * (CAP + 1)
    got = _read(at_cap + b"\n" + over + ending)
    assert got[0] == (at_cap, at_cap.decode(), None)
    assert got[1] == (over, None, LINE_TOO_LONG)  # the kept prefix: at most cap + 1 bytes were read
    got = _read(b"\xef\xbb\xbf" + b"c" * (CAP - 3) + b"\n")
    assert got == [(b"c" * (CAP - 3), "c" * (CAP - 3), None)]  # a BOM counts toward the cap


@pytest.mark.parametrize("kind", ["text", "gzip", "utf16"])
def test_an_overlong_line_is_one_row_with_a_prefix_and_the_lines_around_it_are_kept(kind):
    good = json.dumps(GOOD)
    body = "\n".join([good, "x" * (50 * CAP), good]) + "\n"
    content = {"text": body.encode(), "gzip": gzip.compress(body.encode()), "utf16": body.encode("utf-16")}[kind]
    got = _read(content, kind)
    assert [err for _, _, err in got] == [None, LINE_TOO_LONG, None]
    assert got[1][0] == b"x" * min(len(got[1][0]), 4096) and CAP < len(got[1][0]) <= 4096
    assert got[0][1] == got[2][1] == good


@pytest.mark.parametrize("seed", range(20))
def test_byte_ranges_agree_with_one_reader_when_lines_are_overlong(seed):
    rng = random.Random(seed)
    lines = [rng.choice([b"short", b"y" * rng.randint(CAP - 2, 3 * CAP), b""]) for _ in range(rng.randint(1, 8))]
    content = b"\n".join(lines) + rng.choice([b"\n", b""])
    whole = list(enumerate(_read(content), start=1))
    assert len(whole) == len(content.split(b"\n")) - (1 if content.endswith(b"\n") else 0)
    for chunk in (1, 7, 500, CAP, 2 * CAP + 3):
        got = []
        opener = lambda: io.BytesIO(content)  # noqa: E731
        ranges = [Chunk("f", "text", s, min(s + chunk, len(content))) for s in range(0, len(content), chunk)]
        counts = {("f", c.start): count_line_starts(opener, c.start, c.end) for c in ranges}
        for c in with_first_lines(ranges, counts):
            part = list(chunk_lines(opener, "text", c.start, c.end, max_line_bytes=CAP))
            got += [(c.first_line + i, line) for i, line in enumerate(part)]
        assert got == whole, (seed, chunk)


def test_the_cap_must_be_at_least_a_kibibyte():
    with pytest.raises(ValueError, match="max_line_bytes"):
        check_max_line_bytes(1023)
    assert check_max_line_bytes(1024) == 1024


def _peak_bytes_reading(path, cap: int) -> tuple[int, list]:
    """Peak Python memory while reading a file's lines (prefixes and errors kept, text dropped)."""
    tracemalloc.start()
    try:
        out = [(len(raw), err) for raw, _, err in chunk_lines(lambda: open(path, "rb"), "gzip", max_line_bytes=cap)]
        return tracemalloc.get_traced_memory()[1], out
    finally:
        tracemalloc.stop()


def test_a_200_mb_gzip_line_is_read_in_bounded_memory(tmp_path):
    path = tmp_path / "huge.jsonl.gz"
    good = json.dumps(GOOD).encode()
    with gzip.open(path, "wb", compresslevel=1) as g:
        g.write(good + b'\n{"instruction": "')
        block = b"z" * (1 << 20)
        for _ in range(200):
            g.write(block)
        g.write(b'", "response": "r", "category": "open_qa"}\n' + good + b"\n")
    assert path.stat().st_size < 2 * 1024 * 1024  # a small file on disk
    peak, got = _peak_bytes_reading(path, DEFAULT_MAX_LINE_BYTES)
    assert got == [(len(good), None), (4096, LINE_TOO_LONG), (len(good), None)]
    assert peak < 4 * DEFAULT_MAX_LINE_BYTES, peak  # never the 200 MB line
    # The bound means something: with a cap above the line the reader holds it whole.
    peak_whole, got = _peak_bytes_reading(path, 300 * 1024 * 1024)
    assert got[1][1] is None and peak_whole > 200 * 1024 * 1024 > 4 * DEFAULT_MAX_LINE_BYTES
