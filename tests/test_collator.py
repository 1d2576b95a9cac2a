"""Completion-only labels, packing and the collator (no DeepSpeed, no Spark)."""

import pytest
import torch

from dolly_spark.text.prompts import RESPONSE_KEY
from dolly_spark.train.data import IGNORE_INDEX, PackedCollator, build_examples, packed_attention_mask, record_labels
from tests.shared_data import DOLLY_JSONL, TOKENIZER_DIR
from tests.train_fixtures import gold_rows


@pytest.fixture(scope="module")
def rows():
    return gold_rows(DOLLY_JSONL, TOKENIZER_DIR, n=40, max_tokens=160, max_seq_len=400)


@pytest.fixture(scope="module")
def tiny_model():
    from transformers import AutoModelForCausalLM

    from dolly_spark.train.model import tiny_config

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_config(50280, 512))
    model.config.use_cache = False
    return model.eval()


def test_labels_mask_exactly_the_prompt_from_prompt_len(rows):
    from dolly_spark.text.tokenizer import load_fast_tokenizer

    tok = load_fast_tokenizer(str(TOKENIZER_DIR))
    response_key_id = tok.token_to_id(RESPONSE_KEY)
    r = rows[0]
    labels = record_labels(r["input_ids"], r["prompt_len"])
    first_label = next(i for i, t in enumerate(labels) if t != IGNORE_INDEX)
    assert first_label == r["prompt_len"]
    # prompt_len ends right after "### Response:" + newline: the special token is 2 back
    assert r["input_ids"][first_label - 2] == response_key_id
    assert labels[first_label:] == r["input_ids"][first_label:]


def test_first_token_is_never_labelled_even_with_prompt_len_zero():
    assert record_labels([5, 6, 7], 0) == [IGNORE_INDEX, 6, 7]


def test_packing_follows_pack_id_and_resets_positions(rows):
    train = [r for r in rows if r["split"] == "train"]
    examples, stats = build_examples(train, pack=True, max_seq_len=400)
    assert stats.examples_out == len({r["pack_id"] for r in train}) < len(train)
    by_id = {r["record_id"]: r for r in train}
    for ex in examples:
        members = [by_id[i] for i in ex["record_ids"]]
        assert len({m["pack_id"] for m in members}) == 1
        assert ex["input_ids"] == [t for m in members for t in m["input_ids"]]
        assert ex["position_ids"] == [p for m in members for p in range(m["seq_len"])]
        assert len(ex["input_ids"]) <= 400


def test_oversized_pack_is_split_and_long_record_truncated():
    recs = [
        {"record_id": f"x{i}", "category": "c", "input_ids": list(range(1, 101)), "prompt_len": 10, "pack_id": 0}
        for i in range(3)
    ]
    examples, stats = build_examples(recs, pack=True, max_seq_len=250)
    assert [len(e["record_ids"]) for e in examples] == [2, 1]
    assert stats.split_packs == 1
    examples, stats = build_examples(recs[:1], pack=False, max_seq_len=50)
    assert len(examples[0]["input_ids"]) == 50 and stats.truncated_records == 1


def test_record_without_response_tokens_is_counted_not_silently_dropped():
    recs = [
        {"record_id": "a", "category": "c", "input_ids": [1, 2, 3], "prompt_len": 3, "pack_id": 0},
        {"record_id": "b", "category": "c", "input_ids": [1, 2, 3, 4], "prompt_len": 2, "pack_id": 0},
    ]
    examples, stats = build_examples(recs, pack=True, max_seq_len=100)
    assert stats.dropped == {"no_response_tokens": 1}
    assert examples[0]["record_ids"] == ["b"]


def test_collator_pads_with_ignored_labels_and_a_separate_position_run():
    batch = PackedCollator(pad_token_id=0)(
        [
            {"input_ids": [5, 6, 7, 8], "labels": [-100, 6, 7, 8], "position_ids": [0, 1, 0, 1], "sample_index": 3},
            {"input_ids": [9, 10], "labels": [-100, 10], "position_ids": [0, 1], "sample_index": 4},
        ]
    )
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8], [9, 10, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7, 8], [-100, 10, -100, -100]]
    assert batch["position_ids"].tolist() == [[0, 1, 0, 1], [0, 1, 0, 1]]
    assert batch["num_real_tokens"].tolist() == [4, 2]
    assert batch["sample_index"].tolist() == [3, 4]


def _model_inputs(batch, keys=("input_ids", "position_ids")):
    """What the trainer gives the model: the batch plus the packed block-diagonal mask."""
    inputs = {k: batch[k] for k in keys}
    inputs["attention_mask"] = packed_attention_mask(batch["position_ids"], torch.float32)
    return inputs


def _token_loss_sum(model, batch, mask=True):
    """Sum of per-token cross-entropy over labelled tokens, and their count."""
    with torch.no_grad():
        inputs = _model_inputs(batch) if mask else {k: batch[k] for k in ("input_ids", "position_ids")}
        logits = model(**inputs).logits
    shift_logits = logits[:, :-1].reshape(-1, logits.shape[-1]).float()
    shift_labels = batch["labels"][:, 1:].reshape(-1)
    loss = torch.nn.functional.cross_entropy(shift_logits, shift_labels, ignore_index=IGNORE_INDEX, reduction="sum")
    return loss.item(), int((shift_labels != IGNORE_INDEX).sum())


def test_packed_batch_loss_equals_the_unpacked_records(rows, tiny_model):
    train = [r for r in rows if r["split"] == "train"]
    packed, _ = build_examples(train, pack=True, max_seq_len=400)
    multi = [e for e in packed if len(e["record_ids"]) >= 3][:2]
    assert multi, "fixture should produce packs of several records"
    ids = {i for e in multi for i in e["record_ids"]}
    singles, _ = build_examples([r for r in train if r["record_id"] in ids], pack=False, max_seq_len=400)
    collate = PackedCollator(pad_token_id=0)

    packed_sum, packed_n = _token_loss_sum(tiny_model, collate(multi))
    single_sum, single_n = 0.0, 0
    for ex in singles:  # one record per forward pass: nothing else to attend to
        s, n = _token_loss_sum(tiny_model, collate([ex]))
        single_sum += s
        single_n += n
    assert packed_n == single_n
    assert packed_sum / packed_n == pytest.approx(single_sum / single_n, rel=1e-5)

    # The model's own loss on the packed batch (what the Trainer optimises) matches too.
    batch = collate(multi)
    with torch.no_grad():
        hf_loss = tiny_model(**_model_inputs(batch, ("input_ids", "labels", "position_ids"))).loss.item()
    assert hf_loss == pytest.approx(single_sum / single_n, rel=1e-5)

    # Control: with positions running across records (naive concatenation) attention leaks
    # across record boundaries and the loss differs, so the check above can fail.
    leaky = collate(multi)
    leaky["position_ids"] = torch.arange(leaky["input_ids"].shape[1]).expand_as(leaky["input_ids"]).clone()
    leaky_sum, _ = _token_loss_sum(tiny_model, leaky, mask=False)
    assert abs(leaky_sum / packed_n - single_sum / single_n) > 1e-4


def test_packed_mask_is_block_diagonal_and_causal():
    mask = packed_attention_mask(torch.tensor([[0, 1, 2, 0, 1, 0]]), torch.float32)[0, 0]
    allowed = (mask == 0).int().tolist()
    assert allowed == [
        [1, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0],
        [0, 0, 0, 1, 0, 0],
        [0, 0, 0, 1, 1, 0],
        [0, 0, 0, 0, 0, 1],
    ]


def test_row_without_pack_id_trains_alone():
    recs = [
        {"record_id": "a", "category": "c", "input_ids": [1, 2, 3], "prompt_len": 1, "pack_id": 0},
        {"record_id": "b", "category": "c", "input_ids": [1, 2, 3], "prompt_len": 1, "pack_id": None},
        {"record_id": "c", "category": "c", "input_ids": [1, 2, 3], "prompt_len": 1, "pack_id": 0},
    ]
    examples, _ = build_examples(recs, pack=True, max_seq_len=100)
    assert [e["record_ids"] for e in examples] == [["a", "c"], ["b"]]
