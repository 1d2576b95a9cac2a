"""LoRA runs downstream of training: an adapter directory loads as its base with the adapter merged
in, a lora/qlora train run logs its method, settings, counts and base, and both logged forms (the
merged model with the adapter as a run artifact, or the adapter alone pinned to its base) load,
register, resolve for scoring and generate the same text. CPU, the tiny model, sqlite MLflow.

The adapter is built here with peft the way training leaves it (text.adapters' contract), with
non-zero lora_B weights, so a loader that skipped the adapter would give the base's logits.
"""

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pytest
import torch

from dolly_spark.text.adapters import ADAPTER_SUBDIR, BASE_FILE, write_base_ref
from dolly_spark.tracking import lineage, models, runs
from tests.shared_data import TOKENIZER_DIR

TARGETS = ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"]
PROMPTS = ["What is a Delta table?", "Name three colours.", "Explain LoRA in one line."]
GREEDY = {"greedy": True, "max_new_tokens": 8}


@pytest.fixture(autouse=True)
def no_env_overrides(monkeypatch):
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "DATABRICKS_RUNTIME_VERSION", runs.PARENT_RUN_ENV):
        monkeypatch.delenv(var, raising=False)


def save_lora_run(root: Path) -> dict:
    """What a lora run leaves: a local base, model_dir with the merged model and model_dir/adapter."""
    from peft import LoraConfig, get_peft_model

    from dolly_spark.text.tokenizer import load_hf_tokenizer, save_portable_tokenizer
    from dolly_spark.train.model import build_model

    tok = load_hf_tokenizer(str(TOKENIZER_DIR))
    torch.manual_seed(0)
    base = build_model("tiny", tok)
    base_dir, model_dir = root / "base", root / "model"
    base.save_pretrained(str(base_dir), safe_serialization=True)
    save_portable_tokenizer(tok, base_dir)
    total = sum(p.numel() for p in base.parameters())
    peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=TARGETS))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.5)  # peft starts B at zero: an untrained adapter changes nothing
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    adapter = model_dir / ADAPTER_SUBDIR
    peft_model.save_pretrained(str(adapter))
    save_portable_tokenizer(tok, adapter)
    ref = {"base_model": str(base_dir.resolve()), "revision": None, "method": "lora", "r": 4, "alpha": 8}
    ref.update(dropout=0.0, target_modules=TARGETS, trainable_parameters=trainable, total_parameters=total)
    write_base_ref(adapter, ref)
    peft_model.merge_and_unload().save_pretrained(str(model_dir), safe_serialization=True)
    save_portable_tokenizer(tok, model_dir)
    (model_dir / "COMPLETE").write_text("")
    return {"base": base_dir, "model": model_dir, "adapter": adapter, "trainable": trainable, "total": total}


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory) -> dict:
    return save_lora_run(tmp_path_factory.mktemp("lora"))


def last_logits(model_dir) -> torch.Tensor:
    from dolly_spark.serve.generate import load_for_generation
    from dolly_spark.text.prompts import format_prompt

    model, tok = load_for_generation(model_dir, device="cpu")
    ids = torch.tensor([tok.encode(format_prompt(PROMPTS[0]), add_special_tokens=False)])
    with torch.inference_mode():
        return model(input_ids=ids).logits[0]


def greedy_texts(model_dir) -> list[str]:
    from dolly_spark.serve.generate import GenerationConfig, generate_responses, load_for_generation

    model, tok = load_for_generation(model_dir, device="cpu")
    return [r["response"] for r in generate_responses(model, tok, PROMPTS, cfg=GenerationConfig(**GREEDY))]


def test_an_adapter_dir_generates_as_the_merged_model(lora_run):
    merged, adapter = last_logits(lora_run["model"]), last_logits(lora_run["adapter"])
    torch.testing.assert_close(adapter, merged, atol=1e-4, rtol=0)
    # The check has teeth: the adapter moves the logits far beyond atol, so loading the base
    # without merging the adapter (or loading the wrong directory) would fail it.
    assert (last_logits(lora_run["base"]) - merged).abs().max() > 1e-2
    assert greedy_texts(lora_run["adapter"]) == greedy_texts(lora_run["model"])


@dataclass
class LoraJob:
    """The train config fields logging reads (TrainJobConfig's names)."""

    output_root: str
    method: str = "lora"
    log_adapter_only: bool = False
    base_model: str = "tiny"
    lora: dict = field(default_factory=lambda: {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": []})


def train_result(model_dir: Path, **extra) -> dict:
    return {"model_dir": str(model_dir), "final_step": 3, "eval_loss": 9.5, "train_loss_last": 9.75, **extra}


def log_run(cfg, result) -> tuple[str, object]:
    with runs.job_run("train", cfg, engine="test", omit_params=("lora",)) as run:
        info = models.log_training_run(cfg, result)
    return run.info.run_id, info


def model_files(info) -> set[str]:
    """Files of the logged model's Hugging Face artifact, relative to it (artifacts/<dir name>/...)."""
    import mlflow

    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=info.model_uri)) / "artifacts"
    (hf,) = [d for d in local.iterdir() if d.is_dir()]
    return {p.relative_to(hf).as_posix() for p in hf.rglob("*") if p.is_file()}


def test_the_default_logs_the_merged_model_and_the_adapter_as_a_run_artifact(lora_run, tmp_path):
    from mlflow import MlflowClient

    cfg = LoraJob(str(tmp_path))
    run_id, info = log_run(cfg, train_result(lora_run["model"]))
    run = MlflowClient().get_run(run_id)
    assert {k: run.data.params[k] for k in ("method", "lora_r", "lora_alpha", "lora_dropout")} == {
        "method": "lora",
        "lora_r": "4",
        "lora_alpha": "8",
        "lora_dropout": "0.0",
    }
    assert run.data.params["lora_target_modules"] == ",".join(TARGETS)  # what the adapter has, not the []
    assert not any(k.startswith("lora.") for k in run.data.params)  # the config's lora section: not twice
    assert run.data.metrics["trainable_parameters"] == lora_run["trainable"]
    assert run.data.metrics["total_parameters"] == lora_run["total"]
    assert run.data.tags[lineage.TAG_METHOD] == "lora" and run.data.tags[lineage.TAG_MODEL_FORM] == "merged"
    assert run.data.tags[lineage.TAG_BASE_MODEL] == str(lora_run["base"].resolve())
    assert lineage.TAG_BASE_REVISION not in run.data.tags  # a local base has no revision
    adapter_artifacts = {a.path for a in MlflowClient().list_artifacts(run_id, "adapter")}
    assert {"adapter/adapter_model.safetensors", "adapter/adapter_config.json", f"adapter/{BASE_FILE}"} <= (
        adapter_artifacts
    )
    files = model_files(info)
    assert {"model.safetensors", "config.json"} <= files
    # The version carries the adapter it was merged from; it loads as the plain merged model.
    assert "adapter/adapter_model.safetensors" in files
    assert info.metadata[lineage.TAG_MODEL_FORM] == "merged" and "adapter_base" not in info.metadata


@pytest.fixture(scope="module")
def adapter_only(lora_run, tmp_path_factory):
    root = tmp_path_factory.mktemp("adapter_only")
    run_id, info = log_run(LoraJob(str(root), log_adapter_only=True), train_result(lora_run["model"]))
    return {"root": root, "run_id": run_id, "info": info}


def test_adapter_only_logs_the_adapter_pinned_to_its_base_and_no_merged_weights(lora_run, adapter_only):
    import mlflow
    from mlflow import MlflowClient

    files = model_files(adapter_only["info"])
    assert {"adapter_model.safetensors", f"{BASE_FILE}"} <= files
    assert "model.safetensors" not in files and "config.json" not in files
    assert not MlflowClient().list_artifacts(adapter_only["run_id"], "adapter")  # nothing logged twice
    tags = MlflowClient().get_run(adapter_only["run_id"]).data.tags
    assert tags[lineage.TAG_MODEL_FORM] == "adapter" and tags[lineage.TAG_METHOD] == "lora"
    base = adapter_only["info"].metadata["adapter_base"]
    assert base == {"base_model": str(lora_run["base"].resolve()), "revision": None}
    deps = Path(mlflow.pyfunc.get_model_dependencies(adapter_only["info"].model_uri)).read_text().split()
    assert any(d.startswith("peft==") for d in deps)  # loading an adapter needs peft


def test_the_adapter_only_pyfunc_predicts_the_merged_models_text(lora_run, adapter_only):
    import mlflow

    loaded = mlflow.pyfunc.load_model(adapter_only["info"].model_uri)
    out = loaded.predict(pd.DataFrame({"instruction": PROMPTS}), params=GREEDY)
    assert out["error"].isna().all()
    assert out["response"].tolist() == greedy_texts(lora_run["model"])


def test_the_adapter_only_model_registers_with_its_method_and_resolves_for_scoring(adapter_only):
    from dolly_spark.serve import score as scoring
    from dolly_spark.text.adapters import is_adapter_dir
    from dolly_spark.tracking import registry

    result = registry.register(
        registry.RegisterConfig(output_root=str(adapter_only["root"]), run_id=adapter_only["run_id"])
    )
    assert result.tags[lineage.TAG_METHOD] == "lora" and result.tags[lineage.TAG_MODEL_FORM] == "adapter"
    assert lineage.TAG_BASE_MODEL in result.tags
    resolved = scoring.resolve_model(result.model_uri, str(adapter_only["root"] / "downloads"))
    assert is_adapter_dir(resolved.local_dir) and resolved.version == f"{result.model_name}/{result.version}"
    model, _ = scoring.cached_model(resolved.local_dir, device="cpu", version=resolved.version)
    assert model.get_input_embeddings().weight.shape[0] > 0  # evaluate and score load it the same way


def test_an_adapter_without_its_base_reference_is_refused_at_log_time(lora_run, tmp_path):
    import shutil

    adapter = tmp_path / "adapter"
    shutil.copytree(lora_run["adapter"], adapter)
    (adapter / BASE_FILE).unlink()
    with runs.job_run("train", {}, output_root=tmp_path, engine="test"):
        with pytest.raises(ValueError, match="base is unknown"):
            models.log_dolly_model(adapter)


def test_a_lora_run_without_its_adapter_is_an_error_not_a_silent_full_model(tiny_model_dir, tmp_path):
    with runs.job_run("train", {}, output_root=tmp_path, engine="test"):
        with pytest.raises(FileNotFoundError, match="adapter directory"):
            models.log_training_run(LoraJob(str(tmp_path)), train_result(tiny_model_dir))


def test_a_full_run_logs_its_method_and_nothing_about_adapters(spark, tiny_model_dir, tmp_path, monkeypatch):
    """Through the train command itself (training replaced by its result): params, tags, the model."""
    from mlflow import MlflowClient

    from dolly_spark.commands import train as train_cmd
    from dolly_spark.launch.config import TrainJobConfig
    from dolly_spark.launch.launcher import TrainResult
    from dolly_spark.ops import tables

    cfg = TrainJobConfig(output_root=str(tmp_path), base_model="tiny", tokenizer=str(TOKENIZER_DIR))
    gold = cfg.table_names().gold
    version = tables.write_table(
        spark, spark.createDataFrame([("r1", "train")], "record_id string, split string"), gold
    )
    result = TrainResult(
        str(tiny_model_dir), "", str(tmp_path / "none.jsonl"), gold.path, version, None, 3, 10.0, 9.0, 9.5, {}
    )
    result.num_parameters = 1234
    monkeypatch.setattr(train_cmd.launcher, "run", lambda cfg, spark: result)
    _, run_id = train_cmd.run(cfg, spark)
    run = MlflowClient().get_run(run_id)
    assert run.data.params["method"] == "full"
    assert not [k for k in run.data.params if k.startswith("lora")], run.data.params
    assert run.data.metrics["trainable_parameters"] == run.data.metrics["total_parameters"] == 1234
    assert run.data.tags[lineage.TAG_METHOD] == "full" and run.data.tags[lineage.TAG_MODEL_FORM] == "full"
    assert run.data.tags[lineage.TAG_BASE_MODEL] == "tiny"
    assert not MlflowClient().list_artifacts(run_id, "adapter")


def test_run_passes_log_adapter_only_to_its_train_section():
    from dolly_spark.commands.run import RunConfig
    from dolly_spark.ops.config import parse_config

    cfg = parse_config(RunConfig, ["--method", "lora", "--log-adapter-only"], "run")
    assert (cfg.train.method, cfg.train.log_adapter_only) == ("lora", True)
    assert parse_config(RunConfig, ["--method", "lora"], "run").train.log_adapter_only is False
    with pytest.raises(SystemExit):  # a full run has no adapter: one usage line, exit 2
        parse_config(RunConfig, ["--log-adapter-only"], "run")
