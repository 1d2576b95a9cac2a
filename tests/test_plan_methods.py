"""The plan knows the method (full, lora, qlora): parameter counts checked against peft and
bitsandbytes, the frozen base and trainable states, the ZeRO stage each method runs at (in the plan
and in the launcher's ds_config.json), the fix that names a method, and qlora's refusal on a
machine without 4-bit kernels."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dolly_spark.launch import memory as M
from dolly_spark.launch import methods
from dolly_spark.launch import plan as P
from dolly_spark.launch.config import TrainJobConfig
from dolly_spark.launch.planning import resolve_plan
from dolly_spark.ops.config import ConfigError
from dolly_spark.train.config import LoraSettings, TrainConfig
from dolly_spark.train.hardware import DS_CONFIG_FILES, for_method, load_ds_config, zero_stage_for_method
from tests.shared_data import DOLLY_JSONL, SHARED, TOKENIZER_DIR
from tests.test_train_plan import PYTHIA_12B as PYTHIA_12B_CONFIG
from tests.train_fixtures import gold_rows

REPO = Path(__file__).resolve().parents[1]
PYTHIA_12B = SHARED / "models" / "pythia-12b" / "config.json"
RECORDS = 14745  # train records of the real gold (prepare defaults)


def _plan(method, family, memory, gpus=1, **overrides):
    cfg = TrainConfig(output_root="/r", base_model=str(PYTHIA_12B), method=method, **overrides)
    return resolve_plan(cfg, family, gpus, RECORDS, RECORDS, memory)


# ---------------------------------------------------------------- the four outcomes for pythia-12b


def test_full_on_one_80gb_a100_does_not_fit_and_the_fix_names_lora():
    out = _plan("full", "a100", 80.0)
    assert out["fits"] is False and out["method"] == "full"
    cheapest, keeping = out["fix"].split("; or, keeping --method full: ")
    assert cheapest.startswith("switch to --method lora (est ")
    assert keeping.startswith("offload the optimizer to CPU")  # full fits only with offload
    # The fix is itself a fit: the same plan with --method lora.
    assert _plan("lora", "a100", 80.0)["fits"] is True


def test_lora_on_one_24gb_a10_does_not_fit_and_the_fix_is_4_bit():
    out = _plan("lora", "a10", 24.0)
    assert out["fits"] is False
    assert out["fix"].startswith("switch to --method qlora with a 4-bit NF4 base (est ")
    assert "frozen base 22.1 GB" in out["reason"]  # 2 bytes x 11.8 B parameters: the whole card


def test_qlora_on_one_24gb_a10_fits_at_zero_2():
    out = _plan("qlora", "a10", 24.0)
    assert out["fits"] is True and out["fix"] is None
    assert (out["zero_stage"], out["offload_optimizer"], out["offload_params"]) == (2, False, False)
    assert out["est_breakdown_gb"]["frozen_base"] < 8 < out["est_breakdown_gb"]["frozen_base"] * 4


@pytest.fixture(scope="module")
def rows():
    return gold_rows(DOLLY_JSONL, TOKENIZER_DIR, n=60, max_tokens=200, max_seq_len=400)


def test_train_plan_with_lora_fits_one_80gb_a100(spark, rows, tmp_path, capsys):
    from dolly_spark.commands import train as train_cmd
    from tests.train_fixtures import write_gold

    write_gold(spark, tmp_path, rows)
    flags = ["--plan", "--model", str(PYTHIA_12B), "--gpu-family", "a100", "--gpu-memory-gb", "80", "--num-gpus", "1"]
    assert train_cmd.main([*flags, "--method", "lora", "--output-root", str(tmp_path)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["fits"] is True and (out["method"], out["zero_stage"]) == ("lora", 2)
    assert out["trainable_params"] == 47_185_920 and out["params"] == 11_846_072_320
    assert out["total_params"] == out["params"] + out["trainable_params"]
    assert out["lora"] == {"r": 16, "target_modules": ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"]}
    assert {"frozen_base", "trainable_states", "activations", "overhead"} <= set(out["est_breakdown_gb"])


# ---------------------------------------------------------------- counts against peft and bitsandbytes

_COUNTS = """
import json, sys, tempfile, torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, BitsAndBytesConfig, GPTNeoXForCausalLM
from dolly_spark.train.model import tiny_config

cfg = tiny_config(1000, 128)
out = {"config": cfg.to_dict(), "lora": {}}
for targets in json.loads(sys.argv[1]):
    # [] is LoraSettings' default, all four linears (peft's own GPT-NeoX default is query_key_value only)
    targets = targets or ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"]
    model = get_peft_model(GPTNeoXForCausalLM(cfg), LoraConfig(r=8, lora_alpha=16, target_modules=targets))
    out["lora"][len(out["lora"])] = list(model.get_nb_trainable_parameters())
with tempfile.TemporaryDirectory() as d:
    GPTNeoXForCausalLM(cfg).save_pretrained(d)
    four_bit = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32)
    q = AutoModelForCausalLM.from_pretrained(d, quantization_config=four_bit, device_map="cpu")
    total = quantised = 0
    for p in q.parameters():
        state = getattr(p, "quant_state", None)  # bitsandbytes' Params4bit: packed weights + absmax
        total += p.numel() * p.element_size() + (state.absmax.numel() * state.absmax.element_size() if state else 0)
        quantised += state is not None
    out["qlora_bytes"], out["quantised"] = total, quantised
print(json.dumps(out))
"""
TARGETS = [[], ["query_key_value"], ["dense"], ["dense_h_to_4h", "dense_4h_to_h"], "all-linear"]


@pytest.fixture(scope="module")
def measured():
    """peft's trainable/total counts and bitsandbytes' 4-bit footprint of the tiny model (fresh interpreter)."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    out = subprocess.run(
        [sys.executable, "-c", _COUNTS, json.dumps(TARGETS)],
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
        env=env,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("case", range(len(TARGETS)))
def test_lora_parameter_count_is_peft_s(measured, case):
    shape = M.model_shape(measured["config"])
    trainable, total = measured["lora"][str(case)]
    targets = TARGETS[case]
    targets = (targets,) if isinstance(targets, str) else tuple(targets)  # LoraSettings holds a tuple
    counts = M.parameter_counts(shape, "lora", 8, targets)
    assert (counts["trainable_params"], counts["total_params"]) == (trainable, total)
    # What the check tells apart: one matrix per adapter (r*in) is not peft's count.
    linears = M.lora_targets(shape, targets)
    assert shape.num_layers * sum(8 * n_in for _, n_in, _ in linears) != trainable


def test_4_bit_base_bytes_are_bitsandbytes(measured):
    """NF4 linear weights (half a byte + an fp32 absmax per 64) and everything else in the load dtype (fp32 here)."""
    shape = M.model_shape(measured["config"])
    assert measured["quantised"] == 4 * shape.num_layers  # the layers' linears only: not the LM head
    assert M.frozen_base_bytes(shape, "qlora", dtype_bytes=4) == measured["qlora_bytes"]
    # Without the absmax constants the count is short, so the check would see them missing.
    linear = shape.num_layers * sum(i * o for _, i, o in M.neox_linears(shape))
    assert M.frozen_base_bytes(shape, "qlora", dtype_bytes=4) - linear * 4 / 64 != measured["qlora_bytes"]


def test_unknown_lora_targets_are_one_config_error_naming_them():
    with pytest.raises(ConfigError, match=r"lora target modules \['q_proj'\] are not GPT-NeoX linear layers"):
        _plan("lora", "a100", 80.0, lora=LoraSettings(target_modules=("q_proj",)))


# ---------------------------------------------------------------- the memory model per method


def test_frozen_base_and_trainable_states_per_method():
    shape = M.model_shape(PYTHIA_12B_CONFIG)
    common = dict(gpu_family="a100", gpu_memory_gb=80, per_device_batch=6, gradient_checkpointing=True)
    full, lora, qlora = (P.plan(PYTHIA_12B_CONFIG, method=m, **common) for m in ("full", "lora", "qlora"))
    n, largest = M.lora_params(shape, 16)
    trained, _ = M.trained_states_gb(n, largest, 2)
    assert lora["est_breakdown_gb"]["frozen_base"] == round(2 * shape.total_params / M.GiB, 2)  # bf16
    assert lora["est_breakdown_gb"]["trainable_states"] == round(trained, 2) == 0.88  # 20 bytes x 47 M
    quantised = shape.num_layers * sum(i * o for _, i, o in M.neox_linears(shape))
    nf4 = quantised * (0.5 + 4 / 64) + (shape.total_params - quantised) * 2 + 2 * 5120 * 20480  # + one dequantised
    assert qlora["est_breakdown_gb"]["frozen_base"] == round(nf4 / M.GiB, 2)
    assert full["est_breakdown_gb"]["frozen_base"] == 0 and full["trainable_params"] == shape.total_params
    # Activations do not depend on the method; the zero stages are each method's usual one.
    assert full["est_breakdown_gb"]["activations"] == lora["est_breakdown_gb"]["activations"]
    assert (full["zero_stage"], lora["zero_stage"], qlora["zero_stage"]) == (3, 2, 2)
    assert M.nf4_bytes_per_param(double_quant=True) < M.nf4_bytes_per_param() == 0.5625


def test_lora_under_zero_3_partitions_the_base():
    shape = M.model_shape(PYTHIA_12B_CONFIG)
    whole, _ = M.frozen_base_gb(shape, "lora", 2, gpus_per_node=8)
    split, _ = M.frozen_base_gb(shape, "lora", 3, gpus_per_node=8)
    gathered = 2 * shape.largest_layer_params / M.GiB
    assert split == pytest.approx(whole / 8 + gathered)
    offloaded, host = M.frozen_base_gb(shape, "lora", 3, gpus_per_node=8, offload_params=True)
    assert offloaded == pytest.approx(gathered) and host == pytest.approx(whole * 1.5)


def test_qlora_under_zero_3_is_refused():
    with pytest.raises(ValueError, match="qlora cannot run under ZeRO-3"):
        P.plan(PYTHIA_12B_CONFIG, method="qlora", zero_stage=3)
    assert P.plan(PYTHIA_12B_CONFIG, method="lora", zero_stage=3)["zero_stage"] == 3  # lora may


# ---------------------------------------------------------------- the ZeRO stage each method runs at


@pytest.mark.parametrize("family", sorted(DS_CONFIG_FILES))
def test_family_configs_run_lora_and_qlora_at_zero_2_and_full_as_shipped(family):
    shipped = load_ds_config(family)
    assert shipped["zero_optimization"]["stage"] == 3
    for method in ("lora", "qlora"):
        zero = load_ds_config(family, method=method)["zero_optimization"]
        assert zero["stage"] == 2 == zero_stage_for_method(method, 3)
        assert not [k for k in zero if k.startswith("stage3_") or k.startswith("offload_")]
    assert load_ds_config(family, method="full") == shipped
    assert for_method(shipped, "lora") is not shipped and shipped["zero_optimization"]["stage"] == 3  # a copy


def test_an_explicit_zero_3_config_is_kept_for_lora_and_refused_for_qlora(tmp_path):
    z3 = tmp_path / "z3.json"
    z3.write_text(json.dumps(load_ds_config("a100")))
    lora = _plan("lora", "a100", 80.0, deepspeed_config=str(z3))
    assert lora["zero_stage"] == 3 and lora["fits"]
    with pytest.raises(ConfigError, match="qlora cannot run under ZeRO-3"):
        _plan("qlora", "a100", 80.0, deepspeed_config=str(z3))


@pytest.mark.parametrize("method,explicit,stage", [("full", False, 3), ("lora", False, 2), ("lora", True, 3)])
def test_the_launcher_writes_the_methods_ds_config(tmp_path, monkeypatch, method, explicit, stage):
    from dolly_spark.launch import launcher as launch
    from dolly_spark.launch.staging import StagedGold

    z3 = tmp_path / "z3.json"
    z3.write_text(json.dumps(load_ds_config("cpu")))
    cfg = TrainJobConfig(output_root=str(tmp_path), method=method, deepspeed_config=str(z3) if explicit else None)
    run_ = launch.ResolvedRun(cfg, gold=None, plan={}, family="cpu", nproc=2, launcher="deepspeed")
    staged = StagedGold(str(tmp_path), 0, None, ["t.parquet"], ["e.parquet"], 1, 1)
    paths = launch.RunPaths(tmp_path / "run", tmp_path / "ck", tmp_path / "model", "a1", tmp_path / "m", tmp_path / "h")
    paths.run_dir.mkdir()
    monkeypatch.setattr(launch, "run_subprocess", lambda *a, **k: None)  # no ranks: only what is written
    launch.launch_ranks(run_, staged, paths)
    assert json.loads((tmp_path / "run" / "ds_config.json").read_text())["zero_optimization"]["stage"] == stage


# ---------------------------------------------------------------- qlora's capability probe


def _qlora(family="cpu", **kw):
    return TrainJobConfig(output_root="/r", base_model="tiny", method="qlora", gpu_family=family, **kw)


def test_the_4_bit_probe_passes_on_this_cpu_build():
    assert methods.probe_4bit("cpu") is None
    methods.check_method_support(_qlora())


def _broken_kernel(*args, **kwargs):
    raise RuntimeError("no 4-bit kernel for this device")


def test_qlora_is_refused_in_one_line_when_the_kernel_call_fails(monkeypatch):
    import bitsandbytes.functional

    monkeypatch.setattr(bitsandbytes.functional, "quantize_4bit", _broken_kernel)
    with pytest.raises(methods.MethodUnsupported) as err:
        methods.check_method_support(_qlora())
    assert str(err.value) == (
        "qlora needs bitsandbytes with 4-bit kernels for cpu: RuntimeError: no 4-bit kernel for this device; "
        "pip install -U bitsandbytes (a build with them) or use --method lora"
    )
    methods.check_method_support(dataclasses.replace(_qlora(), method="lora"))  # lora needs no kernels


def test_a_wrong_round_trip_or_a_missing_import_is_refused(monkeypatch):
    import bitsandbytes.functional
    import torch

    monkeypatch.setattr(bitsandbytes.functional, "dequantize_4bit", lambda q, s, **k: torch.zeros(2, 64))
    assert methods.probe_4bit("cpu") == "an NF4 round trip on cpu is off by 1"
    monkeypatch.undo()
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # as if not installed
    assert methods.probe_4bit("cpu").startswith("ModuleNotFoundError: import of bitsandbytes halted")
    with pytest.raises(methods.MethodUnsupported, match="for cpu: ModuleNotFoundError"):
        methods.check_method_support(_qlora())


def test_a_gpu_less_driver_checks_the_import_for_its_gpu_ranks(monkeypatch, caplog):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with caplog.at_level(logging.WARNING):
        methods.check_method_support(_qlora("a100"))
    assert "no GPU on this driver to probe" in caplog.text
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)
    with pytest.raises(methods.MethodUnsupported, match="4-bit kernels for cuda: ModuleNotFoundError"):
        methods.check_method_support(_qlora("a100"))


class _Reached(Exception):
    pass


def test_train_refuses_qlora_before_any_run_stage_or_launch(spark, tmp_path, monkeypatch, capsys):
    import bitsandbytes.functional

    from dolly_spark.commands import train as train_cmd
    from dolly_spark.launch import launcher

    def reached(cfg, spark):
        raise _Reached("past the check")

    monkeypatch.setattr(launcher, "run", reached)
    flags = ["--method", "qlora", "--gpu-family", "cpu", "--base-model", "tiny", "--max-steps", "2"]
    broken, intact = tmp_path / "broken", tmp_path / "intact"
    # The same command with the kernels intact gets past the check, into its MLflow run and on to the
    # launcher (stubbed here) ...
    assert train_cmd.main([*flags, "--output-root", str(intact)]) == 1
    assert "past the check" in capsys.readouterr().err
    assert (intact / "mlflow.db").exists()
    # ... and with the kernel call broken stops with one line, before an MLflow run or a staged file.
    monkeypatch.setattr(bitsandbytes.functional, "quantize_4bit", _broken_kernel)
    assert train_cmd.main([*flags, "--output-root", str(broken)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "dolly-spark train: error: qlora needs bitsandbytes with 4-bit kernels for cpu: RuntimeError: no 4-bit "
        "kernel for this device; pip install -U bitsandbytes (a build with them) or use --method lora"
    ]
    assert not (broken / "train").exists() and not (broken / "mlflow.db").exists()


def test_run_refuses_qlora_before_prepare_writes_anything(tmp_path, monkeypatch, capsys):
    import bitsandbytes.functional

    from dolly_spark.commands import run as run_cmd
    from tests.shared_data import DOLLY_JSONL

    monkeypatch.setattr(bitsandbytes.functional, "quantize_4bit", _broken_kernel)
    out = tmp_path / "out"
    assert run_cmd.main(["--input", str(DOLLY_JSONL), "--output-root", str(out), "--method", "qlora"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "qlora needs bitsandbytes with 4-bit kernels" in err[0], err
    assert not out.exists() or not any(out.iterdir()), sorted(p.name for p in out.rglob("*"))
