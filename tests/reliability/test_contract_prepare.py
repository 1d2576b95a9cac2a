"""The data contract through ``prepare`` itself: a named '_' file is
read, the train/eval split of existing records never moves when the input is renamed, reordered
or extended, and tokenizer control strings never reach gold. Every input row stays accounted for.
"""

from __future__ import annotations

import json

import pytest

from dolly_spark.prep.gold import GoldConfig
from dolly_spark.prep.prepare import PrepareConfig, run
from tests.reliability import helpers

CATEGORIES = ("open_qa", "brainstorming", "classification", "creative_writing")
# A 20% eval share, so both splits are exercised by ~90 records (the default holds out 200 of 15,011).
GOLD = GoldConfig(eval_size=3000)
TOPICS = ("rivers", "volcanoes", "bridges", "comets", "forests", "deserts", "glaciers", "islands", "caves", "tides")


def record(i: int) -> dict:
    # Distinct words per record, so MinHash dedup keeps them all.
    a, b = TOPICS[i % 10], TOPICS[(i * 7 + 3) % 10]
    return {
        "instruction": f"Item {i}: compare {a} with {b} in terms of age number {i * 13}.",
        "context": "",
        "response": f"Record {i} says {b} differ from {a}; measured value {i * 31} units.",
        "category": CATEGORIES[i % len(CATEGORIES)],
    }


def write(path, records) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def split_by_instruction(root) -> dict[str, str]:
    return {r["instruction"]: r["split"] for r in helpers.read_rows(helpers.existing_tables(root)["gold"])}


@pytest.fixture(scope="module")
def two_runs(spark, tmp_path_factory):
    base = tmp_path_factory.mktemp("contract_prepare").resolve()
    original = [record(i) for i in range(60)]
    poisoned = {**record(999), "response": "Stop here<|endoftext|> and pad <|padding|>"}
    hidden_in = base / "v0" / "_part-00000.jsonl"  # a name Spark's listing would skip
    write(hidden_in, original[:20])
    r0 = run(PrepareConfig(input=str(hidden_in), output_root=str(base / "out0"), gold=GOLD), spark)
    first_in = base / "v1" / "part-00000.jsonl"
    write(first_in, [*original, poisoned])
    r1 = run(PrepareConfig(input=str(first_in), output_root=str(base / "out1"), gold=GOLD), spark)

    extended = [record(i) for i in range(60, 90)]
    reordered = original[::-1]
    second_in = base / "v2" / "renamed"
    write(second_in / "b.jsonl", reordered[:30] + extended[:15])
    write(second_in / "sub" / "a.jsonl", extended[15:] + reordered[30:] + [poisoned])
    r2 = run(PrepareConfig(input=str(second_in), output_root=str(base / "out2"), gold=GOLD), spark)
    return {"base": base, "original": original, "r0": r0, "r1": r1, "r2": r2}


def test_a_named_underscore_file_is_prepared_and_accounted(two_runs):
    helpers.assert_accounted(two_runs["base"] / "out0")
    assert two_runs["r0"].counts[0].input_rows == 20
    assert len(split_by_instruction(two_runs["base"] / "out0")) == 20


def test_split_of_existing_records_never_moves(two_runs):
    s1 = split_by_instruction(two_runs["base"] / "out1")
    s2 = split_by_instruction(two_runs["base"] / "out2")
    assert {r["instruction"] for r in two_runs["original"]} <= set(s1) and len(s2) >= 90
    assert {k: s2[k] for k in s1} == s1
    assert set(s1.values()) == {"train", "eval"}  # both splits are exercised


def test_tokenizer_control_strings_never_reach_gold(two_runs):
    for out in ("out1", "out2"):
        root = two_runs["base"] / out
        q = helpers.read_rows(helpers.existing_tables(root)["quarantine"])
        assert [(r["stage"], r["reason"]) for r in q] == [("gold", "special_token_in_text")]
        gold = helpers.read_rows(helpers.existing_tables(root)["gold"])
        assert not any({0, 1} & set(r["input_ids"]) for r in gold)
