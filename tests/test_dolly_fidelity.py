"""``--preset dolly`` against Dolly's own logic on the real dolly-15k.

Dolly's preprocessing is reimplemented here from databrickslabs/dolly (``training/consts.py``,
``training/trainer.py`` and ``train_dolly.py``), never by calling our code: its prompt
templates, its tokenizer set-up (``### Response:\\n`` added as one special token), its
``tokenizer(text, max_length, truncation=True)`` then ``len(input_ids) < max_length`` filter, its
collator's labels (-100 through the first response-key token) and its schedule (test size 200,
batch 6 per A100, HF Trainer step arithmetic). Then our gold table, built by ``prepare --preset
dolly`` with a tokenizer saved the way Dolly's code saves it, is compared record by record.
"""

import json
import math

import pytest

from dolly_spark.ops import tables
from dolly_spark.ops.config import parse_config
from dolly_spark.prep.prepare import PrepareConfig, run
from dolly_spark.train.config import TrainConfig
from dolly_spark.train.data import record_labels
from tests.shared_data import DOLLY_JSONL, SHARED, TOKENIZER_DIR

# ---- databrickslabs/dolly training/consts.py, verbatim
INTRO_BLURB = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request."
)
INSTRUCTION_KEY = "### Instruction:"
INPUT_KEY = "Input:"
RESPONSE_KEY = "### Response:"
END_KEY = "### End"
RESPONSE_KEY_NL = f"{RESPONSE_KEY}\n"
DEFAULT_SEED = 42
PROMPT_NO_INPUT_FORMAT = """{intro}

{instruction_key}
{instruction}

{response_key}
{response}

{end_key}""".format(
    intro=INTRO_BLURB,
    instruction_key=INSTRUCTION_KEY,
    instruction="{instruction}",
    response_key=RESPONSE_KEY,
    response="{response}",
    end_key=END_KEY,
)
PROMPT_WITH_INPUT_FORMAT = """{intro}

{instruction_key}
{instruction}

{input_key}
{input}

{response_key}
{response}

{end_key}""".format(
    intro=INTRO_BLURB,
    instruction_key=INSTRUCTION_KEY,
    instruction="{instruction}",
    input_key=INPUT_KEY,
    input="{input}",
    response_key=RESPONSE_KEY,
    response="{response}",
    end_key=END_KEY,
)
# ---- train_dolly.py: --test-size 200, batch 6 on A100, 8 GPUs on the reference cluster
TEST_SIZE, A100_BATCH, GPUS = 200, 6, 8
MAX_LENGTH = 2048  # pythia's max_position_embeddings, as trainer.py reads it


def dolly_text(rec: dict) -> str:
    """trainer.load_training_dataset._add_text."""
    context = rec.get("context")
    if context:
        return PROMPT_WITH_INPUT_FORMAT.format(instruction=rec["instruction"], response=rec["response"], input=context)
    return PROMPT_NO_INPUT_FORMAT.format(instruction=rec["instruction"], response=rec["response"])


def dolly_labels(input_ids: list[int], response_token_ids: list[int]) -> list[int]:
    """DataCollatorForCompletionOnlyLM for one unpadded record (pad = EOS never occurs in the text)."""
    labels = list(input_ids)
    start = next(i for i, t in enumerate(input_ids) if t == response_token_ids[0])
    labels[: start + 1] = [-100] * (start + 1)
    return labels


def dolly_steps_per_epoch(train_rows: int, batch: int = A100_BATCH, gpus: int = GPUS) -> int:
    """HF Trainer: each rank iterates ceil(rows / gpus) records in batches; one optimizer step per batch."""
    return math.ceil(math.ceil(train_rows / gpus) / batch)


@pytest.fixture(scope="module")
def dolly_tokenizer(tmp_path_factory):
    """trainer.load_tokenizer on gpt-neox-20b, saved: ``### Response:\\n`` is one token (50279)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(TOKENIZER_DIR))
    tok.pad_token = tok.eos_token
    tok.add_special_tokens({"additional_special_tokens": [END_KEY, INSTRUCTION_KEY, RESPONSE_KEY_NL]})
    path = tmp_path_factory.mktemp("dolly_tokenizer")
    tok.save_pretrained(str(path))
    return tok, path


@pytest.fixture(scope="module")
def dolly_reference(dolly_tokenizer):
    """line number -> (text, input_ids, labels) for the records Dolly keeps."""
    tok, _ = dolly_tokenizer
    recs = [json.loads(line) for line in DOLLY_JSONL.open()]
    texts = [dolly_text(r) for r in recs]
    ids = tok(texts, max_length=MAX_LENGTH, truncation=True)["input_ids"]
    response_ids = tok.encode(RESPONSE_KEY_NL)
    assert response_ids == [50279]
    return {
        line: (texts[line - 1], seq, dolly_labels(seq, response_ids))
        for line, seq in enumerate(ids, start=1)
        if len(seq) < MAX_LENGTH
    }


@pytest.fixture(scope="module")
def preset_gold(spark, dolly_tokenizer, tmp_path_factory):
    _, tok_path = dolly_tokenizer
    root = tmp_path_factory.mktemp("preset_dolly")
    cfg = parse_config(
        PrepareConfig,
        ["--preset", "dolly", "--input", str(DOLLY_JSONL), "--output-root", str(root), "--tokenizer", str(tok_path)],
        prog="t",
    )
    assert cfg.clean.raw_text and cfg.gold.eval_size == TEST_SIZE and cfg.gold.split_seed == DEFAULT_SEED
    run(cfg, spark)
    names = cfg.table_names()
    gold = tables.read_table(spark, names.gold).select("record_id", "split", "text", "input_ids", "prompt_len")
    lines = tables.read_table(spark, names.bronze).select("record_id", "line_number")
    return [r.asDict() for r in gold.join(lines, "record_id").collect()], root


def test_preset_gold_matches_dollys_prompt_bytes_token_ids_and_labels(preset_gold, dolly_reference):
    rows, _ = preset_gold
    assert len(rows) > 14_900
    for r in rows:
        text, ids, labels = dolly_reference[r["line_number"]]  # KeyError: a record Dolly drops
        assert r["text"].encode() == text.encode(), r["record_id"]
        assert list(r["input_ids"]) == ids, r["record_id"]
        assert record_labels(list(r["input_ids"]), r["prompt_len"]) == labels, r["record_id"]
    # Dolly's records we do not train on are the duplicates dedup removes (raw text keeps all others).
    assert len(dolly_reference) - len(rows) <= 30


def test_preset_steps_per_epoch_equal_dollys(preset_gold, dolly_reference):
    from dolly_spark.launch.planning import resolve_plan

    rows, root = preset_gold
    train = sum(r["split"] == "train" for r in rows)
    dolly = dolly_steps_per_epoch(len(dolly_reference) - TEST_SIZE)
    assert dolly == 308
    cfg = parse_config(
        TrainConfig,
        [
            "--preset",
            "dolly",
            "--output-root",
            str(root),
            "--base-model",
            str(SHARED / "models" / "pythia-12b" / "config.json"),
        ],
        prog="t",
    )
    plan = resolve_plan(cfg, "a100", GPUS, train, train, 80.0)
    assert plan["records_per_step"] == A100_BATCH * GPUS
    assert plan["steps_per_epoch"] == dolly


def test_released_dolly_v2_tokenizer_gives_dollys_ids_and_masks_the_newline_too():
    """The released dolly-v2 tokenizer has ``### Response:`` (50279) then a newline (187): the ids
    equal Dolly's; our mask also covers the newline, which Dolly's collator leaves as a label."""
    from transformers import AutoTokenizer

    from dolly_spark.prep.gold import tokenize_texts
    from dolly_spark.text.tokenizer import load_fast_tokenizer

    released = SHARED / "tokenizer" / "dolly-v2-3b"
    tok = AutoTokenizer.from_pretrained(str(released))
    recs = [json.loads(line) for _, line in zip(range(2000), DOLLY_JSONL.open())]
    texts = [dolly_text(r) for r in recs]
    ref = tok(texts)["input_ids"]
    ids, prompt_lens = tokenize_texts(load_fast_tokenizer(str(released)), texts)
    response_ids = tok.encode(RESPONSE_KEY_NL)
    assert response_ids == [50279, 187]
    for mine, plen, theirs in zip(ids, prompt_lens, ref):
        assert mine == theirs
        ours, dollys = record_labels(mine, plen), dolly_labels(theirs, response_ids)
        diff = [i for i, (a, b) in enumerate(zip(ours, dollys)) if a != b]
        assert diff == [plen - 1] and theirs[plen - 1] == 187
