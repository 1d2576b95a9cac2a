"""Benchmark decontamination: lm-eval's normalisation and 13-grams, the Spark overlap join, and
prepare end to end (overlapping train records quarantined, accounted for, reported)."""

from __future__ import annotations

import json

import deltalake
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from dolly_spark.commands.prepare import format_summary, preflight
from dolly_spark.ops.config import ConfigError, parse_config
from dolly_spark.prep import decontam
from dolly_spark.prep.decontam import BenchmarkError, BenchmarkSet, DecontamConfig, ngrams, normalize, overlap_pairs
from dolly_spark.prep.gold import GoldConfig, split_unit
from dolly_spark.prep.ingest import content_key
from dolly_spark.prep.prepare import PrepareConfig, run
from tests.shared_data import DOLLY_JSONL

WORDS = "alpha bravo charlie delta echo foxtrot golf hotel india juliett kilo lima mike november oscar papa".split()
OTHER = "one two three four five six seven eight nine ten eleven twelve thirteen fourteen".split()

# --- normalisation and n-grams, as lm-eval's janitor -----------------------------------------------


def test_normalisation_is_lm_evals_ascii_case_fold_and_punctuation_deletion():
    # lm-eval: str.maketrans(ascii lower + upper, ascii lower * 2, string.punctuation)
    assert normalize("Don't STOP, believing!") == "dont stop believing"
    assert normalize("e-mail: a@b.com (x) [y] {z} ~_^`|\\") == "email abcom x y z "
    # Only ASCII letters fold and only ASCII punctuation goes, as in lm-eval's table.
    assert normalize("ÉCOLE — “Straße”") == "École — “straße”"


def test_ngrams_are_13_word_windows_of_the_normalised_text():
    text = "Alpha, BRAVO charlie delta\techo foxtrot golf hotel\nindia juliett kilo lima mike november oscar."
    assert ngrams(text) == [
        " ".join(WORDS[0:13]),
        " ".join(WORDS[1:14]),
        " ".join(WORDS[2:15]),
    ]
    assert ngrams("a b c d", n=3) == ["a b c", "b c d"]
    # Fewer than n words: one gram of them all (lm-eval yields none); nothing at all: no gram.
    assert ngrams("Hello, World!") == ["hello world"]
    assert ngrams(" ".join(WORDS[:12])) == [" ".join(WORDS[:12])]
    assert ngrams("") == ngrams("  !!! ... ") == ngrams(None) == []


# --- the overlap join on literal frames -----------------------------------------------------------

RECORDS = [
    ("r_copy", "Intro words first. " + " ".join(WORDS[:13]).upper() + "!"),  # 13 words shared, other case
    ("r_twelve", " ".join(WORDS[:12]) + " zulu " + " ".join(WORDS[12:])),  # 12 in a row at most
    ("r_short", "What is 2+2?"),  # whole text equals a short row
    ("r_short_in_long", "what is 22 " + " ".join(OTHER)),  # a short row inside a long text: no gram
    ("r_empty", "..."),
]
BENCH = [
    ("quiz", 1, " ".join(WORDS[:13])),
    ("quiz", 2, "WHAT is 22"),
    ("quiz", 3, " ".join(WORDS[:12])),
    ("exam", 1, "noise words " + " ".join(WORDS[:13])),
    ("exam", 2, "!!!"),
]


def _frames(spark):
    records = spark.createDataFrame(RECORDS, "record_id string, text string")
    bench = spark.createDataFrame(BENCH, "benchmark string, row_id long, text string")
    return records, bench


def _expected(spark):
    rows = [("r_copy", "quiz", 1), ("r_copy", "exam", 1), ("r_short", "quiz", 2)]
    return spark.createDataFrame(rows, "record_id string, benchmark string, row_id long")


def test_overlap_pairs_are_the_records_and_rows_sharing_a_gram(spark):
    records, bench = _frames(spark)
    assertDataFrameEqual(overlap_pairs(records, bench), _expected(spark))


def test_a_hash_collision_never_counts_as_an_overlap(spark, monkeypatch):
    records, bench = _frames(spark)
    # Every gram hashed to 0: the hash join alone pairs every record with every row ...
    monkeypatch.setattr(decontam, "_gram_hash", lambda c: F.lit(0).cast("long"))
    hashed = decontam.gram_hashes(bench, ["benchmark", "row_id"], 13).join(
        decontam.gram_hashes(records, ["record_id"], 13), "h"
    )
    assert hashed.select("record_id", "benchmark", "row_id").distinct().count() > 3
    # ... and comparing the gram strings leaves the true pairs only.
    assertDataFrameEqual(overlap_pairs(records, bench), _expected(spark))


def test_each_record_goes_under_its_first_benchmark_in_config_order(spark):
    pairs = spark.createDataFrame(
        [("a", "exam", 1), ("a", "quiz", 2), ("b", "exam", 3)], "record_id string, benchmark string, row_id long"
    )
    assertDataFrameEqual(
        decontam.first_benchmark(pairs, ["quiz", "exam"]),
        spark.createDataFrame(
            [("a", "benchmark_overlap:quiz"), ("b", "benchmark_overlap:exam")], "record_id string, reason string"
        ),
    )


def test_benchmark_text_is_every_top_level_string_column(spark):
    df = spark.createDataFrame([("Q one", 7, "A one", None)], "question string, id long, answer string, note string")
    rows = decontam.benchmark_rows(df, "quiz").collect()
    assert [(r["benchmark"], r["text"]) for r in rows] == [("quiz", "Q one A one")]
    with pytest.raises(BenchmarkError, match=r"benchmark nums: no string column to take text from"):
        decontam.benchmark_rows(spark.createDataFrame([(1, 2.0)], "a long, b double"), "nums")


def test_sets_are_read_as_sources_are_delta_through_the_tables_layer(spark, tmp_path):
    deltalake.write_deltalake(str(tmp_path / "arc"), pa.table({"q": ["Delta row"], "n": [1]}))
    (tmp_path / "array.json").write_text(json.dumps([{"q": "First", "a": "One"}, {"q": "Second", "a": "Two"}]))
    texts = {
        name: sorted(r["text"] for r in decontam.benchmark_rows(decontam.read_benchmark(spark, b), b.name).collect())
        for name, b in [
            ("arc", BenchmarkSet(str(tmp_path / "arc"))),
            ("array", BenchmarkSet(str(tmp_path / "array.json"))),
        ]
    }
    assert texts == {
        "arc": ["Delta row"],
        "array": ["One First", "Two Second"],
    }  # a JSON array (columns a, q), not dolly lines


# --- config -------------------------------------------------------------------------------------


def test_flags_and_yaml_give_the_benchmark_sets(tmp_path):
    cfg = parse_config(
        PrepareConfig,
        ["--decontaminate", "mmlu=/b/mmlu.jsonl", "main.evals.arc", "--decontaminate", "/d/k=v/x.parquet"],
        prog="prepare",
    )
    assert cfg.decontam.decontaminate == (
        BenchmarkSet("/b/mmlu.jsonl", "mmlu"),
        BenchmarkSet("main.evals.arc", "arc"),  # named as a source would be
        BenchmarkSet("/d/k=v/x.parquet", "x"),  # '=' inside a path is no NAME=
    )
    assert cfg.decontam.decontam_ngram == 13
    yaml_file = tmp_path / "p.yaml"
    yaml_file.write_text(
        "decontam:\n  decontaminate:\n    - q=/b/q.jsonl\n    - {name: e, uri: /b/e, format: delta}\n"
        "  decontam_ngram: 8\n"
    )
    cfg = parse_config(PrepareConfig, ["--config", str(yaml_file)], prog="prepare")
    assert cfg.decontam == DecontamConfig((BenchmarkSet("/b/q.jsonl", "q"), BenchmarkSet("/b/e", "e", "delta")), 8)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--decontaminate", "a=/x.jsonl", "a=/y.jsonl"], "same name 'a'"),
        (["--decontaminate", "b@d=/x.jsonl"], "name 'b@d' may hold only"),
        (["--decontaminate", "q="], "expected NAME=PATH_OR_TABLE"),
        (["--decontam-ngram", "0"], "decontam_ngram must be at least 1"),
    ],
)
def test_bad_benchmark_flags_are_one_line_usage_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        parse_config(PrepareConfig, argv, prog="prepare")
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_a_yaml_set_with_an_unknown_key_is_refused():
    with pytest.raises(ValueError, match=r"unknown keys \['path'\]"):
        DecontamConfig(({"path": "/b/x.jsonl"},))


# --- prepare end to end ---------------------------------------------------------------------------


def _id(record: dict) -> str:
    """The record_id the line ingest gives a unique line: its content key."""
    return content_key(json.dumps(record, sort_keys=True, ensure_ascii=True, separators=(",", ":")), b"")


def _split(record: dict) -> str:
    return "eval" if split_unit(_id(record), 42) < GoldConfig().eval_fraction else "train"


def _records(n: int = 300) -> list[dict]:
    with open(DOLLY_JSONL) as f:
        return [json.loads(next(f)) for _ in range(n)]


def _pick(records, split: str, k: int) -> list[dict]:
    long = [r for r in records if _split(r) == split and len(r["response"].split()) >= 30]
    assert len(long) >= k, f"the fixture needs {k} long {split} records"
    return long[:k]


def _garbled(text: str) -> str:
    """Other case, punctuation added inside and between words: the same text to lm-eval."""
    return " ,".join(w[:1] + "'" + w[1:] for w in text.swapcase().split())


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """300 dolly records; a JSONL set copying two train records (one whole, garbled; one by a
    20-word piece) and an eval record; a Parquet set copying another train record and the first."""
    root = tmp_path_factory.mktemp("decontam")
    records = _records()
    (root / "dolly.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    whole, piece, other = _pick(records, "train", 3)
    (evald,) = _pick(records, "eval", 1)
    quiz = [
        {
            "id": 1,
            "question": _garbled(whole["instruction"]),
            "passage": _garbled(whole["context"]),
            "answer": _garbled(whole["response"]),
        },
        {"id": 2, "question": "Quote it:", "passage": "", "answer": " ".join(piece["response"].split()[5:25])},
        {"id": 3, "question": evald["instruction"], "passage": evald["context"], "answer": evald["response"].upper()},
        {"id": 4, "question": "Zebras zigzag quietly.", "passage": "", "answer": "Nothing in dolly says this."},
    ]
    (root / "quiz.jsonl").write_text("".join(json.dumps(r) + "\n" for r in quiz))
    exam = pa.table(
        {
            "prompt": [other["instruction"] + " " + other["context"], whole["instruction"]],
            "target": [other["response"], whole["response"]],
            "score": [1.0, 0.5],
        }
    )
    pq.write_table(exam, root / "exam.parquet")
    return root, {"whole": _id(whole), "piece": _id(piece), "other": _id(other), "eval": _id(evald)}


def _table(root, name):
    return deltalake.DeltaTable(str(root / "out" / "tables" / name)).to_pyarrow_table()


def test_prepare_quarantines_train_records_overlapping_a_benchmark(spark, planted):
    root, ids = planted
    sets = (f"quiz={root / 'quiz.jsonl'}", str(root / "exam.parquet"))
    cfg = PrepareConfig(input=str(root / "dolly.jsonl"), output_root=str(root / "out"), decontam=DecontamConfig(sets))
    result = run(cfg, spark)

    gold, quarantine = _table(root, "gold"), _table(root, "quarantine")
    train = {r for r, s in zip(gold["record_id"].to_pylist(), gold["split"].to_pylist()) if s == "train"}
    assert not train & {ids["whole"], ids["piece"], ids["other"]}
    reasons = dict(
        zip(quarantine["record_id"].to_pylist(), zip(quarantine["stage"].to_pylist(), quarantine["reason"].to_pylist()))
    )
    # ``whole`` is in both sets: it goes under the first one listed.
    assert reasons[ids["whole"]] == reasons[ids["piece"]] == ("gold", "benchmark_overlap:quiz")
    assert reasons[ids["other"]] == ("gold", "benchmark_overlap:exam")
    # An eval record in a benchmark stays in eval; the report names it.
    assert dict(zip(gold["record_id"].to_pylist(), gold["split"].to_pylist()))[ids["eval"]] == "eval"

    acct = result.details["accounting"]
    assert acct["raw"] == 300 == acct["gold"] + acct["quarantine"] + acct["duplicates"]
    assert acct["gold"] == gold.num_rows and acct["quarantine"] == quarantine.num_rows
    report = result.details["decontamination"]
    assert report["benchmarks"] == {
        "quiz": {"rows": 4, "rows_overlapping_train": 2, "train_removed": 2, "eval_records_overlapping": 1},
        "exam": {"rows": 2, "rows_overlapping_train": 2, "train_removed": 1, "eval_records_overlapping": 0},
    }
    own = report["eval_train_overlap"]
    assert own["eval_records"] == result.counts[-1].details["split_counts"]["eval"]
    assert own["fraction"] == own["eval_records_overlapping"] / own["eval_records"]
    gold_count = result.counts[-1]
    assert gold_count.details["quarantined_by_reason"]["benchmark_overlap:quiz"] == 2
    assert gold_count.details["decontam.exam.train_removed"] == 1  # a flat number: logged to MLflow
    metrics = spark.sql(f"SELECT details FROM metrics WHERE run_id = '{result.run_id}' AND stage = 'gold'").first()
    assert json.loads(metrics["details"])["decontam.quiz.rows_overlapping_train"] == 2
    assert (
        "decontamination (13-grams): quiz: rows 4, overlapping train 2, train removed 2, eval overlapping (kept) 1; exam"
        in format_summary(result)
    )


def test_without_sets_nothing_is_removed_for_overlap(spark, planted, tmp_path):
    root, ids = planted
    result = run(PrepareConfig(input=str(root / "dolly.jsonl"), output_root=str(tmp_path)), spark)
    gold = deltalake.DeltaTable(str(tmp_path / "tables" / "gold")).to_pyarrow_table()
    assert {ids["whole"], ids["piece"], ids["other"]} <= set(gold["record_id"].to_pylist())
    assert "decontamination" not in result.details


# --- a bad set fails before any write -----------------------------------------------------------


def test_a_bad_benchmark_set_fails_before_anything_is_written(spark, planted, tmp_path):
    root, _ = planted
    (tmp_path / "nums.jsonl").write_text('{"a": 1, "b": 2.5}\n')
    out = tmp_path / "out"

    def cfg(*sets):
        return PrepareConfig(input=str(root / "dolly.jsonl"), output_root=str(out), decontam=DecontamConfig(sets))

    with pytest.raises(BenchmarkError, match=r"^benchmark gone: .*gone\.jsonl matches no files$"):
        run(cfg(f"gone={tmp_path / 'gone.jsonl'}"), spark)
    with pytest.raises(BenchmarkError, match=r"^benchmark nums: no string column to take text from"):
        run(cfg(str(root / "quiz.jsonl"), str(tmp_path / "nums.jsonl")), spark)
    with pytest.raises(BenchmarkError, match=r"^benchmark missing: .*main\.evals\.missing"):
        run(cfg("missing=main.evals.missing"), spark)
    assert not out.exists()  # no table, no lock, no work dir
    # The command finds a missing set before it opens a session or an MLflow store.
    with pytest.raises(ConfigError, match=r"^benchmark gone: .*matches no files"):
        preflight(cfg(f"gone={tmp_path / 'gone.jsonl'}"))
