"""Dolly's schedule by default (but for length grouping): records per step, length-grouped order,
pad fraction, packing's per-record losses, max_seq_len from the model, the plan and the fit check
(no DeepSpeed, no Spark)."""

import dataclasses
import json
import math

import pytest
import torch

from dolly_spark.launch.config import TrainJobConfig
from dolly_spark.launch.planning import WontFit, check_fit, ds_setup, resolve_plan
from dolly_spark.ops.config import parse_config
from dolly_spark.prep.prepare import PrepareConfig
from dolly_spark.train import sampling
from dolly_spark.train.config import TrainConfig
from dolly_spark.train.data import IGNORE_INDEX, PackedCollator, build_examples, to_dataset
from dolly_spark.train.hardware import load_ds_config
from dolly_spark.train.worker import schedule_summary
from tests.shared_data import DOLLY_JSONL, SHARED, TOKENIZER_DIR
from tests.train_fixtures import gold_rows

PYTHIA_12B = SHARED / "models" / "pythia-12b" / "config.json"


# Dolly's values: train_dolly.py's command line (the run behind dolly-v2) over training/trainer.py's
# click defaults, and the HF Trainer's own defaults for what neither sets.
DOLLY_SCHEDULE = {
    "base_model": "EleutherAI/pythia-12b",  # dolly-v2-12b's base
    "epochs": 2.0,  # --epochs 2
    "lr": 5e-6,  # --lr 5e-6
    "warmup_steps": 50,  # --warmup-steps 50
    "eval_steps": 50,  # --eval-steps 50
    "save_steps": 200,  # --save-steps 200
    "seed": 42,  # trainer.py: DEFAULT_SEED
    "gradient_checkpointing": True,  # trainer.py: --gradient-checkpointing defaults on
    "gradient_accumulation_steps": 1,  # not set: the Trainer's 1
    "pack": False,  # one record per row
    "group_by_length": False,  # not set: the Trainer's random batches
    "max_seq_len": None,  # read from the model's config
}
DOLLY_BATCH_BY_FAMILY = {"a100": 6, "a10": 4, "v100": 3}  # train_dolly.py: 6 on A100, 4 on A10, else 3
# Where our default is not Dolly's, on purpose: length-grouped batches, the same records per step with
# far less padding (docs/training.md). --preset dolly restores Dolly's random batches.
DELIBERATE_DEVIATIONS = {"group_by_length": True}


def schedule_drift(cfg) -> dict:
    """Setting -> (ours, expected) wherever ``cfg`` is neither Dolly's value nor a listed deviation."""
    expected = {**DOLLY_SCHEDULE, **DELIBERATE_DEVIATIONS}
    drift = {k: (getattr(cfg, k), v) for k, v in expected.items() if getattr(cfg, k) != v}
    for family, batch in DOLLY_BATCH_BY_FAMILY.items():
        if cfg.batch_size_for(family) != batch:
            drift[f"batch_size_for({family})"] = (cfg.batch_size_for(family), batch)
    return drift


def test_defaults_are_dollys_schedule_but_for_length_grouping():
    cfg = TrainJobConfig(output_root="/tmp/x")
    assert schedule_drift(cfg) == {}
    # The one deviation, by name: Dolly's Trainer draws random batches, ours groups by length.
    assert (DOLLY_SCHEDULE["group_by_length"], cfg.group_by_length) == (False, True)
    assert cfg.check_fit
    # --preset dolly gives Dolly's random batches, and every other value stays Dolly's.
    preset = parse_config(TrainJobConfig, ["--preset", "dolly"], prog="t")
    assert {k: getattr(preset, k) for k in DOLLY_SCHEDULE} == DOLLY_SCHEDULE

    # The check fails on a config whose default drifted from Dolly's ...
    @dataclasses.dataclass
    class DriftedLr(TrainJobConfig):
        lr: float = 1e-5

    assert schedule_drift(DriftedLr(output_root="/tmp/x")) == {"lr": (1e-5, 5e-6)}
    # ... on a changed per-device batch, and on the deviation silently undone.
    assert set(schedule_drift(TrainJobConfig(output_root="/tmp/x", per_device_batch_size=8))) == {
        "batch_size_for(a100)",
        "batch_size_for(a10)",
        "batch_size_for(v100)",
    }
    assert schedule_drift(dataclasses.replace(cfg, group_by_length=False)) == {"group_by_length": (False, True)}


def test_max_seq_len_follows_the_model_config(tmp_path):
    small = tmp_path / "config.json"
    small.write_text(json.dumps({**json.loads(PYTHIA_12B.read_text()), "max_position_embeddings": 1024}))
    assert TrainConfig(output_root="/r", base_model=str(PYTHIA_12B)).resolved_max_seq_len() == 2048
    assert TrainConfig(output_root="/r", base_model=str(small)).resolved_max_seq_len() == 1024
    assert TrainConfig(output_root="/r", base_model=str(tmp_path)).resolved_max_seq_len() == 1024  # the dir
    assert TrainConfig(output_root="/r", base_model=str(small), max_seq_len=512).resolved_max_seq_len() == 512
    cfg = parse_config(TrainConfig, ["--base-model", str(small), "--no-gradient-checkpointing"], prog="t")
    assert (cfg.base_model, cfg.gradient_checkpointing) == (str(small), False)


def test_model_means_the_base_model_in_train_and_no_flag_is_abbreviated():
    """``--model`` is train's alias of ``--base-model`` (prepare has no ``--model``), never an
    abbreviation of ``--model-dir``; an abbreviated flag is a usage error, not another flag's value."""
    cfg = parse_config(TrainJobConfig, ["--model", "EleutherAI/pythia-1b"], prog="t")
    assert (cfg.base_model, cfg.model_dir) == ("EleutherAI/pythia-1b", None)
    with pytest.raises(SystemExit):
        parse_config(TrainJobConfig, ["--model-d", "/tmp/m"], prog="t")
    with pytest.raises(SystemExit):
        parse_config(PrepareConfig, ["--model", "EleutherAI/pythia-1b"], prog="p")


def test_dolly_preset_sits_below_flags():
    cfg = parse_config(TrainConfig, ["--preset", "dolly"], prog="t")
    assert (cfg.pack, cfg.group_by_length, cfg.gradient_checkpointing, cfg.epochs) == (False, False, True, 2.0)
    cfg = parse_config(TrainConfig, ["--preset", "dolly", "--group-by-length"], prog="t")
    assert cfg.group_by_length is True


def test_grouped_order_visits_every_record_once_and_is_a_function_of_seed_and_epoch():
    lengths = [(i * 7919) % 1000 + 1 for i in range(1000)]
    a = sampling.grouped_order(lengths, 12, seed=42, epoch=0)
    assert sorted(a) == list(range(1000))
    assert a == sampling.grouped_order(lengths, 12, seed=42, epoch=0)  # resume sees the same order
    assert a != sampling.grouped_order(lengths, 12, seed=42, epoch=1)  # a new order each epoch
    assert a != sampling.grouped_order(lengths, 12, seed=43, epoch=0)
    # Not longest-first: the micro-steps of a megabatch are shuffled.
    step_max = [max(lengths[i] for i in a[s : s + 12]) for s in range(0, 600, 12)]
    assert step_max != sorted(step_max, reverse=True) and step_max != sorted(step_max)


@pytest.fixture(scope="module")
def rows():
    return gold_rows(DOLLY_JSONL, TOKENIZER_DIR, n=60, max_tokens=200, max_seq_len=400)


def test_hf_trainer_gives_batch_x_accum_records_per_step_in_the_grouped_order(rows, tmp_path):
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

    from dolly_spark.train.model import tiny_config

    train = [r for r in rows if r["split"] == "train"]
    examples, _ = build_examples(train, pack=False, max_seq_len=512)
    lengths = [len(e["input_ids"]) for e in examples]
    batch, accum = 3, 2
    ds = sampling.EpochOrder(to_dataset(examples), lengths, batch, seed=42)
    args = TrainingArguments(
        output_dir=str(tmp_path),
        use_cpu=True,
        per_device_train_batch_size=batch,
        gradient_accumulation_steps=accum,
        train_sampling_strategy="sequential",
        report_to="none",
        remove_unused_columns=False,
    )
    model = AutoModelForCausalLM.from_config(tiny_config(50280, 512))
    trainer = Trainer(model=model, args=args, train_dataset=ds, data_collator=PackedCollator(0))
    for epoch in (0, 1):
        dl = trainer.get_train_dataloader()
        dl.set_epoch(epoch)  # what the Trainer does at the start of every epoch
        seen = [b["sample_index"].tolist() for b in dl]
        assert all(len(b) == batch for b in seen[:-1])
        assert [i for b in seen for i in b] == sampling.grouped_order(lengths, batch, 42, epoch)
        steps = [sum(map(len, seen[s : s + accum])) for s in range(0, len(seen), accum)]
        assert set(steps[:-1]) == {batch * accum}  # records per optimizer step (last may be short)
        assert len(steps) == math.ceil(math.ceil(len(examples) / batch) / accum)


def _dolly_lengths() -> list[int]:
    from dolly_spark.text.prompts import format_text
    from dolly_spark.text.tokenizer import load_fast_tokenizer

    tok = load_fast_tokenizer(str(TOKENIZER_DIR))
    recs = [json.loads(line) for line in DOLLY_JSONL.open()]
    texts = [format_text(r["instruction"], r["context"], r["response"]) for r in recs]
    return [len(e.ids) for e in tok.encode_batch(texts, add_special_tokens=False)]


def test_schedule_on_real_dolly_15k_has_48_records_per_step_and_little_padding():
    lengths = [n for n in _dolly_lengths() if n < 2048]
    cfg = TrainConfig(output_root="/r")
    s = schedule_summary(cfg, lengths, batch=6, world=8)
    assert (s["records_per_step"], s["packing"], s["gradient_checkpointing"]) == (48, False, True)
    assert s["pad_fraction"] == pytest.approx(
        sampling.pad_fraction(lengths, sampling.grouped_order(lengths, 48, 42), 6, 8), abs=1e-6
    )
    # Dolly's random batches pad about 64% of the tokens; grouping leaves a few percent.
    assert s["pad_fraction_random_batches"] > 0.55
    assert s["pad_fraction"] < 0.05
    packed = schedule_summary(TrainConfig(output_root="/r", pack=True), lengths, batch=6, world=8)
    assert packed["records_per_step"] is None and "varying number of records" in packed["note"]


def test_pad_fraction_counts_padding_to_the_longest_in_each_batch():
    assert sampling.pad_fraction([1, 3, 2, 2], [0, 1, 2, 3], 2) == pytest.approx(1 - 8 / 10)
    assert sampling.pad_fraction([5, 5, 5], [0, 1, 2], 3) == 0.0


def test_packing_keeps_each_records_loss_exactly(rows):
    from transformers import AutoModelForCausalLM

    from dolly_spark.train.model import tiny_config

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_config(50280, 512)).eval()
    model.config.use_cache = False
    train = [r for r in rows if r["split"] == "train"]
    packed, _ = build_examples(train, pack=True, max_seq_len=400)
    ex = next(e for e in packed if len(e["record_ids"]) >= 3)
    by_id = {r["record_id"]: r for r in train}
    collate = PackedCollator(pad_token_id=0)

    def token_losses(batch):
        with torch.no_grad():
            logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits[0, :-1].float()
        return torch.nn.functional.cross_entropy(logits, batch["labels"][0, 1:], reduction="none")

    losses = token_losses(collate([ex]))
    start = 0
    for rid in ex["record_ids"]:
        alone, _ = build_examples([by_id[rid]], pack=False, max_seq_len=400)
        single = token_losses(collate(alone))
        n = len(alone[0]["input_ids"])
        mine = losses[start : start + n - 1]  # this record's next-token predictions inside the pack
        labels = torch.tensor(alone[0]["labels"][1:])
        keep = labels != IGNORE_INDEX
        assert torch.allclose(mine[keep], single[keep], rtol=1e-4, atol=1e-5), rid
        start += n


def _plan(cfg, family="a100", gpus=8, memory=80.0, records=14745, rows=None):
    return resolve_plan(cfg, family, gpus, records, rows or records, memory)


def test_plan_for_pythia_12b_on_8_a100_80gb_is_dollys_schedule_and_fits():
    out = _plan(TrainConfig(output_root="/r", base_model=str(PYTHIA_12B)))
    assert (out["records_per_step"], out["steps_per_epoch"], out["total_steps"]) == (48, 308, 616)
    assert out["gradient_checkpointing"] and not out["packing"] and out["fits"]
    assert (out["zero_stage"], out["precision"], out["max_seq_len"]) == (3, "bf16", 2048)


def test_plan_refuses_what_wont_fit_with_a_reason_and_the_cheapest_fix():
    no_gc = _plan(TrainConfig(output_root="/r", base_model=str(PYTHIA_12B), gradient_checkpointing=False), memory=40)
    assert not no_gc["fits"] and "exceeds" in no_gc["reason"] and "checkpointing" in no_gc["fix"]
    with pytest.raises(WontFit, match="cheapest fix: enable gradient checkpointing") as err:
        check_fit(no_gc)
    assert "\n" not in str(err.value)
    a10 = _plan(TrainConfig(output_root="/r", base_model=str(PYTHIA_12B)), family="a10", gpus=1, memory=24)
    assert not a10["fits"] and "offload" in a10["fix"]


def test_plan_warns_about_a_schedule_of_mostly_warmup_and_states_packing():
    out = _plan(TrainConfig(output_root="/r", base_model=str(PYTHIA_12B), pack=True), records=13997, rows=1335)
    assert out["records_per_step"] is None and out["rows_per_step"] == 48 and out["steps_per_epoch"] == 28
    assert any("warmup_steps 50" in w for w in out["warnings"])
    assert any("save_steps 200" in w for w in out["warnings"])
    assert any("packing" in w for w in out["warnings"])


def test_ds_setup_reads_the_shipped_configs():
    assert ds_setup(load_ds_config("a10")) == {
        "zero_stage": 3,
        "offload_optimizer": True,
        "offload_params": False,
        "precision": "bf16",
    }
    assert (
        ds_setup(load_ds_config("v100"))["offload_params"] and ds_setup(load_ds_config("v100"))["precision"] == "fp16"
    )


def test_gold_max_record_tokens_follows_the_base_model_prepare_names(tmp_path):
    from dolly_spark.prep.gold import GoldConfig

    small = tmp_path / "config.json"
    small.write_text(json.dumps({**json.loads(PYTHIA_12B.read_text()), "max_position_embeddings": 1024}))
    assert GoldConfig().record_token_limit == 2048  # Pythia's context when no model is named
    assert GoldConfig(base_model=str(small)).record_token_limit == 1024
    assert GoldConfig(base_model=str(small), max_record_tokens=512).record_token_limit == 512


def test_plan_command_counts_gold_and_train_refuses_before_staging(spark, rows, tmp_path, capsys):
    from dolly_spark.commands import train as train_cmd
    from tests.train_fixtures import write_gold

    write_gold(spark, tmp_path, rows)
    flags = ["--output-root", str(tmp_path), "--base-model", str(PYTHIA_12B), "--gpu-family", "a100", "--num-gpus", "8"]
    assert train_cmd.main(["--plan", "--gpu-memory-gb", "80", *flags]) == 0
    out = json.loads(capsys.readouterr().out)
    train = sum(r["split"] == "train" for r in rows)
    assert (out["train_records"], out["records_per_step"], out["gold_version"]) == (train, 48, 0)
    assert out["steps_per_epoch"] == math.ceil(math.ceil(train / 6) / 8) and out["fits"]

    assert train_cmd.main(["--gpu-memory-gb", "40", "--no-gradient-checkpointing", *flags]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("won't fit: est ") and "cheapest fix: enable gradient checkpointing" in err
    assert not (tmp_path / "train" / "staging").exists()  # nothing staged, nothing launched

    # A callback the driver cannot import: one line before anything is staged or started.
    assert train_cmd.main(["--gpu-memory-gb", "80", "--callbacks", "no_such_module_here:Cb", *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("dolly-spark train: error: --callbacks no_such_module_here:Cb: cannot import")
    assert not (tmp_path / "train" / "staging").exists()
