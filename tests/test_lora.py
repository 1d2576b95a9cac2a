"""``train --method lora|qlora`` end to end on CPU: the real CLI, launcher and 2 ranks under DeepSpeed.

Runs share one small gold table; each writes its own root. The probe callback (tests/lora_probe.py)
hashes the frozen and the trainable weights at the start and the end of training on every rank.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from dolly_spark.text.adapters import ADAPTER_SUBDIR, BASE_FILE, read_base_ref
from dolly_spark.train import checkpoints
from tests.lora_probe import PROBE_ENV, PROBE_SPEC
from tests.reliability import helpers
from tests.reliability.fault_callback import FAULT_ENV, FAULT_SPEC
from tests.shared_data import DOLLY_JSONL, TOKENIZER_DIR
from tests.train_fixtures import gold_rows, write_gold

pytestmark = pytest.mark.slow
peft = pytest.importorskip("peft")

STEPS = 8
TRAIN_ARGS = helpers.tiny_train_args(STEPS, lr="5e-3", warmup=1)
ZERO3_CONFIG = str(Path(__file__).resolve().parents[1] / "dolly_spark" / "configs" / "ds_cpu.json")


@pytest.fixture(scope="module")
def gold(spark, tmp_path_factory):
    root = tmp_path_factory.mktemp("lora_gold")
    write_gold(spark, root, gold_rows(DOLLY_JSONL, TOKENIZER_DIR, n=60, max_tokens=128, max_seq_len=256))
    return root


def train(gold: Path, root: Path, *extra: str, fault: str | None = None, timeout: float = 300) -> tuple[int, str]:
    """``dolly-spark train`` on ``gold``'s table into ``root`` (a copy of the gold root per run)."""
    import shutil

    if not (root / "tables").exists():
        shutil.copytree(gold, root, dirs_exist_ok=True)
    env = helpers.subprocess_env()
    env.pop(FAULT_ENV, None)
    env[PROBE_ENV] = str(root / "probe")
    callbacks = [PROBE_SPEC]
    if fault:
        env[FAULT_ENV] = fault
        callbacks.append(FAULT_SPEC)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(helpers.REPO), env.get("PYTHONPATH")) if p)
    log = root / f"train{len(list(root.glob('train*.log')))}.log"
    args = ["--output-root", str(root), *TRAIN_ARGS, "--callbacks", *callbacks, *extra]
    rc, _, out, _ = helpers.run_train(args, env, log, timeout)
    return rc, out


def result(root: Path) -> dict:
    return json.loads((root / "train" / "train_result.json").read_text())


def train_losses(root: Path) -> dict[int, float]:
    """step -> loss; where a resumed run logged a step again, its row."""
    from dolly_spark.launch.launcher import read_metrics

    return {r["step"]: r["loss"] for r in read_metrics(result(root)["metrics_path"]) if r["kind"] == "train"}


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


@pytest.fixture(scope="module")
def lora_run(gold, tmp_path_factory):
    root = tmp_path_factory.mktemp("lora")
    rc, out = train(gold, root, "--method", "lora", "--lora-r", "8")
    assert rc == 0, out[-4000:]
    return root


def test_lora_trains_only_the_adapters(lora_run):
    probes = [json.loads(p.read_text()) for p in sorted((lora_run / "probe").glob("rank*.json"))]
    assert len(probes) == 2
    for probe in probes:
        begin, end = probe["begin"], probe["end"]
        assert begin["frozen"] == end["frozen"], "a frozen base weight changed"
        assert begin["trainable"] != end["trainable"], "the adapters did not change"
        assert begin["trainable_names"] and all("lora_" in n for n in begin["trainable_names"])
    losses = train_losses(lora_run)
    first, last = sum(list(losses.values())[:2]) / 2, sum(list(losses.values())[-2:]) / 2
    assert last < first, losses

    assert list(losses) == list(range(1, STEPS + 1))


def test_the_run_reports_the_method_and_publishes_merged_model_and_adapter(lora_run):
    res = result(lora_run)
    assert res["method"] == "lora"
    assert res["lora"] == {
        "r": 8,
        "alpha": 32,
        "dropout": 0.05,
        "target_modules": ["dense", "dense_4h_to_h", "dense_h_to_4h", "query_key_value"],
    }
    assert 0 < res["trainable_parameters"] < res["total_parameters"] / 100
    model_dir = Path(res["model_dir"])
    adapter = Path(res["adapter_dir"])
    assert adapter == model_dir / ADAPTER_SUBDIR and checkpoints.is_published(model_dir)
    assert (adapter / "adapter_model.safetensors").is_file() and (adapter / BASE_FILE).is_file()
    ref = read_base_ref(adapter)
    # A random-init base is pinned on disk, marked complete, so resumes and merges see the same one.
    assert Path(ref["base_model"]) == lora_run / "train" / "checkpoints" / "base"
    assert checkpoints.is_published(ref["base_model"]) and res["adapter_base"] == ref["base_model"]
    assert ref["method"] == "lora" and ref["trainable_parameters"] == res["trainable_parameters"]
    assert not list(model_dir.rglob("*.bin")), "pickles in the published model"


def _logits(model, ids):
    import torch

    model.eval()
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


def test_merged_logits_equal_base_plus_adapter(lora_run):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    res = result(lora_run)
    ref = read_base_ref(res["adapter_dir"])
    ids = torch.tensor([[50277, 17, 250, 1012, 4121, 5, 187, 50278, 2042, 310]])
    merged = _logits(AutoModelForCausalLM.from_pretrained(res["model_dir"]), ids)
    base = AutoModelForCausalLM.from_pretrained(ref["base_model"])
    base_only = _logits(base, ids)
    unmerged = _logits(PeftModel.from_pretrained(base, res["adapter_dir"]), ids)
    torch.testing.assert_close(merged, unmerged, atol=1e-4, rtol=0)
    # The check can fail: the base alone is far from the merged model.
    assert (merged - base_only).abs().max() > 1e-3


def test_adapter_checkpoint_is_at_most_5_percent_of_a_full_one(gold, lora_run, tmp_path):
    full = tmp_path / "full"
    rc, out = train(gold, full, "--max-steps", "3")
    assert rc == 0, out[-4000:]
    full_ckpt = dir_bytes(full / "train" / "checkpoints" / "checkpoint-3")
    lora_ckpt = dir_bytes(lora_run / "train" / "checkpoints" / "checkpoint-3")
    print(f"checkpoint-3: full {full_ckpt / 2**20:.1f} MiB, lora {lora_ckpt / 2**20:.2f} MiB")
    assert lora_ckpt <= 0.05 * full_ckpt
    assert result(full)["method"] == "full" and result(full)["adapter_dir"] is None


def _kill_then_resume(gold: Path, root: Path, *extra: str) -> None:
    rc, out = train(gold, root, *extra, fault="kill:1:7")
    assert rc != 0 and "training failed" in out, out[-3000:]
    ckpt_dir = root / "train" / "checkpoints"
    assert checkpoints.is_complete(ckpt_dir / "checkpoint-6")
    rc, out = train(gold, root, *extra, "--resume")
    assert rc == 0, out[-4000:]
    assert result(root)["resumed_from"].endswith("checkpoint-6")


def test_sigkill_then_resume_continues_the_adapter_run_exactly(gold, lora_run, tmp_path):
    root = tmp_path / "killed"
    _kill_then_resume(gold, root, "--method", "lora", "--lora-r", "8")
    expected, got = train_losses(lora_run), train_losses(root)
    assert list(got) == list(expected)
    for step in (7, 8):  # after the resume: as in the uninterrupted run
        assert got[step] == pytest.approx(expected[step], rel=1e-5, abs=1e-6), (step, got, expected)


def test_zero3_with_lora_saves_and_resumes_across_2_processes(gold, tmp_path):
    zero3 = ("--method", "lora", "--lora-r", "8", "--deepspeed-config", ZERO3_CONFIG)
    whole = tmp_path / "zero3"
    rc, out = train(gold, whole, *zero3)
    assert rc == 0, out[-4000:]
    ds = json.loads(next((whole / "train").rglob("ds_config.json")).read_text())
    assert ds["zero_optimization"]["stage"] == 3
    killed = tmp_path / "zero3_killed"
    _kill_then_resume(gold, killed, *zero3)
    expected, got = train_losses(whole), train_losses(killed)
    for step in (7, 8):
        assert got[step] == pytest.approx(expected[step], rel=1e-5, abs=1e-6), (step, got, expected)
    # The adapter saved under ZeRO-3 is whole (gathered), not an empty partition.
    from safetensors.torch import load_file

    weights = load_file(str(Path(result(killed)["adapter_dir"]) / "adapter_model.safetensors"))
    assert weights and all(t.numel() > 0 for t in weights.values())
    assert any("lora_B" in k and t.abs().max() > 0 for k, t in weights.items())


def test_qlora_trains_adapters_on_a_4bit_base(gold, tmp_path):
    from dolly_spark.launch.methods import check_method_support
    from dolly_spark.train.config import TrainConfig

    check_method_support(TrainConfig(method="qlora"))  # this CPU build has 4-bit kernels
    root = tmp_path / "qlora"
    rc, out = train(gold, root, "--method", "qlora", "--lora-r", "8", "--max-steps", "6")
    assert rc == 0, out[-4000:]
    probe = json.loads((root / "probe" / "rank0.json").read_text())
    assert "torch.uint8" in probe["begin"]["frozen_dtypes"], probe["begin"]["frozen_dtypes"]  # packed NF4
    assert probe["begin"]["frozen"] == probe["end"]["frozen"]
    assert probe["begin"]["trainable"] != probe["end"]["trainable"]
    losses = list(train_losses(root).values())
    assert sum(losses[-2:]) < sum(losses[:2]), losses
    res = result(root)
    assert res["method"] == "qlora" and checkpoints.is_published(res["model_dir"])
    assert read_base_ref(res["adapter_dir"])["method"] == "qlora"


def test_run_with_lora_ends_with_predictions_from_the_adapter_model(tmp_path):
    import itertools

    import mlflow
    from deltalake import DeltaTable

    sample = tmp_path / "dolly_300.jsonl"
    with open(DOLLY_JSONL) as src:
        sample.write_text("".join(itertools.islice(src, 300)))
    root = tmp_path / "out"
    args = ["run", "--input", str(sample), "--output-root", str(root), "--tokenizer", str(TOKENIZER_DIR)]
    args += ["--method", "lora", "--train-max-steps", "4", "--train-max-eval-records", "4"]
    args += ["--evaluate-sample-size", "4", "--evaluate-max-new-tokens", "4"]
    args += ["--score-limit", "8", "--score-max-new-tokens", "4"]
    out = subprocess.run(
        [str(helpers.CLI), *args], cwd=helpers.REPO, env=helpers.subprocess_env(), capture_output=True, text=True
    )
    assert out.returncode == 0, (out.stdout + out.stderr)[-6000:]
    predictions = DeltaTable(str(root / "tables" / "predictions")).to_pandas()
    assert 0 < len(predictions) <= 8
    res = result(root)
    assert res["method"] == "lora" and Path(res["adapter_dir"], "adapter_model.safetensors").is_file()
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{root}/mlflow.db")
    runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    train_runs = [r for r in runs if r.data.params.get("method") == "lora"]
    assert train_runs and train_runs[0].data.tags.get("dolly.method") == "lora"
