"""dolly_spark.train units: config, hardware choice, checkpoints, model loading, worker args, callbacks."""

import ast
import json
from pathlib import Path

import pytest

from dolly_spark.launch.config import TrainJobConfig
from dolly_spark.ops.config import ConfigError, parse_config
from dolly_spark.train import checkpoints
from dolly_spark.train.config import TrainConfig, WorkerJob
from dolly_spark.train.hardware import (
    DS_CONFIG_FILES,
    family_from_device_name,
    load_ds_config,
    precision_flags,
)
from dolly_spark.train.model import TINY_MODEL
from tests.shared_data import SHARED, TOKENIZER_DIR


def test_defaults_are_dollys_hyperparameters():
    cfg = TrainConfig(output_root="/tmp/x")
    assert (cfg.epochs, cfg.lr, cfg.warmup_steps, cfg.base_model) == (2.0, 5e-6, 50, "EleutherAI/pythia-12b")
    assert cfg.trust_remote_code is False
    assert [cfg.batch_size_for(f) for f in ("a100", "h100", "a10")] == [6, 6, 4]
    assert cfg.resolved_model_dir() == Path("/tmp/x").resolve() / "train" / "model"


def test_flags_use_dashes_and_types():
    cfg = parse_config(
        TrainJobConfig,
        [
            "--output-root",
            "/r",
            "--max-steps",
            "30",
            "--resume",
            "--base-model",
            "/m",
            "--gpu-family",
            "cpu",
            "--lr",
            "1e-3",
        ],
        prog="t",
    )
    assert (cfg.tiny, cfg.max_steps, cfg.resume, cfg.base_model, cfg.gpu_family, cfg.lr) == (
        False,
        30,
        True,
        "/m",
        "cpu",
        1e-3,
    )
    with pytest.raises(SystemExit):
        parse_config(TrainJobConfig, ["--gpu-family", "tpu"], prog="t")


def test_tiny_is_a_base_model_not_a_flag_beside_one():
    cfg = parse_config(TrainJobConfig, ["--output-root", "/r", "--base-model", TINY_MODEL], prog="t")
    assert cfg.tiny and cfg.base_model == "tiny"
    with pytest.raises(SystemExit):  # --tiny is gone: "tiny plus another base model" cannot be said
        parse_config(TrainJobConfig, ["--tiny", "--base-model", "/m"], prog="t")
    with pytest.raises(AttributeError):  # read-only: derived from base_model
        cfg.tiny = False
    assert not TrainConfig(output_root="/r", base_model="./tiny").tiny  # a directory named tiny is ./tiny


def test_databricks_defaults_point_at_a_volume():
    cfg = TrainConfig(catalog="main", schema="dolly")
    assert str(cfg.resolved_staging_dir()).startswith("/Volumes/main/dolly/")
    assert cfg.table_names().gold.name == "main.dolly.gold"


@pytest.mark.parametrize(
    "name,family",
    [
        ("NVIDIA A100-SXM4-80GB", "a100"),
        ("NVIDIA H100 80GB HBM3", "h100"),
        ("NVIDIA H200", "h100"),
        ("NVIDIA A10G", "a10"),
        ("NVIDIA A10", "a10"),
        ("Tesla V100-SXM2-16GB", "v100"),
        ("Tesla T4", "v100"),
    ],
)
def test_family_from_device_name(name, family):
    assert family_from_device_name(name) == family


def test_shipped_deepspeed_configs_per_family():
    a100 = load_ds_config("a100")
    assert a100["zero_optimization"]["stage"] == 3 and precision_flags(a100) == {"bf16": True, "fp16": False}
    assert a100["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True
    a10 = load_ds_config("a10")
    assert precision_flags(a10)["bf16"] and a10["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    v100 = load_ds_config("v100")
    assert precision_flags(v100) == {"bf16": False, "fp16": True} and "offload_optimizer" in v100["zero_optimization"]
    cpu = load_ds_config("cpu")
    assert precision_flags(cpu) == {"bf16": False, "fp16": False} and cpu["zero_optimization"]["stage"] == 3
    assert "optimizer" not in cpu  # torch AdamW: no fused-Adam compile on CPU
    # Every family the bundle offers: T4 shares V100's fp16 config; A10G, L4, L40S the A10's.
    assert set(DS_CONFIG_FILES) == {"a100", "h100", "a10", "a10g", "l4", "l40s", "v100", "t4", "cpu"}
    assert DS_CONFIG_FILES["t4"] == DS_CONFIG_FILES["v100"]
    assert {DS_CONFIG_FILES[f] for f in ("a10g", "l4", "l40s")} == {DS_CONFIG_FILES["a10"]}


def test_deepspeed_config_override(tmp_path):
    p = tmp_path / "mine.json"
    p.write_text(json.dumps({"zero_optimization": {"stage": 2}}))
    assert load_ds_config("a100", str(p))["zero_optimization"]["stage"] == 2


# ---------------------------------------------------------------- checkpoints


def _fake_ckpt(root: Path, step: int, complete: bool) -> Path:
    p = root / f"checkpoint-{step}"
    p.mkdir(parents=True)
    (p / "trainer_state.json").write_text("{}")
    if complete:
        checkpoints.mark_complete(p, step)
    return p


def test_latest_complete_skips_a_partial_checkpoint(tmp_path):
    _fake_ckpt(tmp_path, 10, True)
    good = _fake_ckpt(tmp_path, 20, True)
    partial = _fake_ckpt(tmp_path, 30, False)
    assert checkpoints.latest_complete_checkpoint(tmp_path) == good
    assert checkpoints.remove_incomplete_after(tmp_path, good) == [partial]
    assert not partial.exists()


def test_checkpoint_without_trainer_state_is_not_complete(tmp_path):
    p = _fake_ckpt(tmp_path, 5, True)
    (p / "trainer_state.json").unlink()
    assert checkpoints.latest_complete_checkpoint(tmp_path) is None


def test_rotate_keeps_last_k_complete(tmp_path):
    for s in (10, 20, 30, 40):
        _fake_ckpt(tmp_path, s, True)
    _fake_ckpt(tmp_path, 15, False)
    checkpoints.rotate(tmp_path, keep=2)
    assert [s for s, _ in checkpoints.list_checkpoints(tmp_path)] == [30, 40]


def test_checkpoints_sorted_numerically(tmp_path):
    for s in (9, 100, 20):
        _fake_ckpt(tmp_path, s, True)
    (tmp_path / "checkpoint-abc").mkdir()
    assert [s for s, _ in checkpoints.list_checkpoints(tmp_path)] == [9, 20, 100]


# ---------------------------------------------------------------- model


def test_tiny_model_resizes_to_dolly_tokenizer_and_stops_at_end():
    from dolly_spark.text.prompts import END_KEY
    from dolly_spark.train.model import build_model, count_parameters, load_tokenizer

    tok = load_tokenizer(str(TOKENIZER_DIR))
    model = build_model(TINY_MODEL, tok, max_positions=256)
    assert model.get_input_embeddings().weight.shape[0] == len(tok) == 50280
    assert tok.convert_tokens_to_ids(END_KEY) in model.generation_config.eos_token_id
    assert count_parameters(model) < 10_000_000


def test_config_json_gives_random_init_and_resizes(tmp_path):
    from dolly_spark.train.model import build_model, load_tokenizer, model_source_kind

    cfg = json.loads((SHARED / "models" / "pythia-410m" / "config.json").read_text())
    cfg.update(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    assert model_source_kind(str(path)) == model_source_kind(str(tmp_path)) == "config"
    tok = load_tokenizer(str(TOKENIZER_DIR))
    model = build_model(str(path), tok)
    assert model.config.vocab_size == len(tok)  # 50304 -> 50280, as Dolly does
    assert model.config.hidden_size == 32


def test_hub_id_is_not_a_local_source():
    from dolly_spark.train.model import model_source_kind

    assert model_source_kind("EleutherAI/pythia-12b") == "hub"


# ---------------------------------------------------------------- worker entry point


def test_worker_accepts_the_arguments_deepspeed_and_the_distributor_append():
    from dolly_spark.train.worker import parse_args

    a = parse_args(["--job", "j.json", "--deepspeed", "--deepspeed_config", "/c.json", "--local_rank=1"])
    assert (a.job, a.deepspeed, a.deepspeed_config, a.local_rank) == ("j.json", True, "/c.json", 1)


def test_worker_job_round_trips(tmp_path):
    job = WorkerJob(
        config={"output_root": "/r", "base_model": "tiny", "callbacks": ["m:C"]},
        train_files=["a"],
        eval_files=[],
        family="cpu",
        checkpoint_dir="c",
        model_dir="m",
        metrics_path="x.jsonl",
        run_dir="r",
        attempt="z",
    )
    back = WorkerJob.read(job.write(tmp_path / "job.json"))
    assert back == job and back.train_config().tiny is True
    assert back.train_config().callbacks == ("m:C",)  # a JSON list back to the config's tuple


def _marked_ckpt(root: Path, step: int, big: int = 0) -> Path:
    p = root / f"checkpoint-{step}"
    (p / "global_step1").mkdir(parents=True)
    (p / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    (p / "global_step1" / "zero_pp_rank_0_mp_rank_00_model_states.pt").write_bytes(bytes(range(256)) * 16)
    if big:
        (p / "model.safetensors").write_bytes(b"\1" * big)
    checkpoints.mark_complete(p, step)
    return p


def test_marker_lists_sizes_and_hashes_but_not_itself(tmp_path):
    p = _marked_ckpt(tmp_path, 1, big=3 << 20)
    marker = json.loads((p / checkpoints.MARKER).read_text())
    shard = "global_step1/zero_pp_rank_0_mp_rank_00_model_states.pt"
    assert marker["files"] == {
        "trainer_state.json": len(json.dumps({"global_step": 1})),
        shard: 4096,
        "model.safetensors": 3 << 20,
    }
    assert set(marker["sha256"]) == {"trainer_state.json", shard}  # small files: whole-file hash
    assert set(marker["sha256_head_tail"]) == {"model.safetensors"}  # large: first + last MiB only
    assert checkpoints.is_complete(p)


@pytest.mark.parametrize("where", ["head", "middle", "tail"])
def test_large_file_change_is_caught_in_its_hashed_edges_only(tmp_path, where):
    p = _marked_ckpt(tmp_path, 1, big=3 << 20)
    offset = {"head": 10, "middle": (3 << 20) // 2, "tail": (3 << 20) - 10}[where]
    with open(p / "model.safetensors", "r+b") as f:
        f.seek(offset)
        f.write(b"\2")
    # The middle of a multi-GB shard is not read (size checks still apply): a deliberate trade-off.
    assert checkpoints.is_complete(p) is (where == "middle")


def test_same_size_edit_of_a_small_file_is_caught(tmp_path):
    p = _marked_ckpt(tmp_path, 1)
    (p / "trainer_state.json").write_text(json.dumps({"global_step": 9}))  # same length, other bytes
    assert "SHA-256" in checkpoints.checkpoint_problem(p)


def test_corrupt_latest_is_skipped_and_removed_on_resume(tmp_path, caplog):
    good = _marked_ckpt(tmp_path, 3)
    bad = _marked_ckpt(tmp_path, 6)
    (bad / "global_step1" / "zero_pp_rank_0_mp_rank_00_model_states.pt").unlink()
    with caplog.at_level("WARNING", logger=checkpoints.__name__):
        assert checkpoints.latest_complete_checkpoint(tmp_path) == good
    assert "checkpoint-6" in caplog.text and "is missing" in caplog.text
    assert checkpoints.remove_incomplete_after(tmp_path, good) == [bad]


def test_old_marker_without_file_list_is_accepted_with_a_warning(tmp_path, caplog):
    p = tmp_path / "checkpoint-4"
    p.mkdir()
    (p / "trainer_state.json").write_text("{}")
    (p / checkpoints.MARKER).write_text(json.dumps({"step": 4, "time": 0}))
    with caplog.at_level("WARNING", logger=checkpoints.__name__):
        assert checkpoints.latest_complete_checkpoint(tmp_path) == p
    assert "without a file list" in caplog.text
    (p / checkpoints.MARKER).write_text('{"step": 4, "fi')  # a torn marker is never accepted
    assert checkpoints.latest_complete_checkpoint(tmp_path) is None


def test_pickle_only_model_dir_is_refused_not_random_init(tmp_path):
    from dolly_spark.train.model import model_source_kind

    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "training_args.bin").write_bytes(b"x")  # Trainer metadata alone is not weights
    assert model_source_kind(str(tmp_path)) == "config"
    (tmp_path / "pytorch_model.bin").write_bytes(b"x")
    with pytest.raises(ValueError, match="safetensors"):
        model_source_kind(str(tmp_path))
    (tmp_path / "model.safetensors").write_bytes(b"x")
    assert model_source_kind(str(tmp_path)) == "local"


# ---------------------------------------------------------------- callbacks hook

CALLBACKS_MODULE = """
from transformers import TrainerCallback


class Fine(TrainerCallback):
    pass


class NeedsArgs(TrainerCallback):
    def __init__(self, spec):
        self.spec = spec


class NotACallback:
    pass
"""


@pytest.fixture
def callbacks_module(tmp_path, monkeypatch):
    (tmp_path / "my_callbacks.py").write_text(CALLBACKS_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    return "my_callbacks"


def test_callbacks_load_by_module_and_class(callbacks_module):
    from dolly_spark.train.callbacks import load_callback_classes

    (cls,) = load_callback_classes((f"{callbacks_module}:Fine",))
    assert cls.__name__ == "Fine" and cls() is not None


@pytest.mark.parametrize(
    "spec,why",
    [
        ("no_such_module_here:Fine", "cannot import no_such_module_here"),
        ("my_callbacks:Missing", "is not a TrainerCallback class"),
        ("my_callbacks:NotACallback", "is not a TrainerCallback class"),
        ("my_callbacks:NeedsArgs", "no arguments"),
    ],
)
def test_a_bad_callback_is_one_line_naming_the_flag(callbacks_module, spec, why):
    from dolly_spark.train.callbacks import load_callback_classes

    with pytest.raises(ConfigError) as err:
        load_callback_classes((spec,))
    assert str(err.value).startswith(f"--callbacks {spec}: ") and why in str(err.value)
    assert "\n" not in str(err.value)


def test_callbacks_must_read_module_colon_class():
    with pytest.raises(ValueError, match="is not module:Class"):
        TrainConfig(output_root="/r", callbacks=("just_a_module",))
    with pytest.raises(SystemExit):  # on the command line: a usage error before anything runs
        parse_config(TrainJobConfig, ["--callbacks", "a.b:C", "oops"], prog="t")
    assert parse_config(TrainJobConfig, ["--callbacks", "a.b:C", "d:E"], prog="t").callbacks == ("a.b:C", "d:E")


# ---------------------------------------------------------------- layers


def launch_imports(package: Path) -> list[str]:
    """Every import of the driver side (dolly_spark.launch) in ``package``, function-level ones included."""
    found = []
    for path in sorted(package.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            found += [
                f"{path.name}: {n}" for n in names if n == "dolly_spark.launch" or n.startswith("dolly_spark.launch.")
            ]
    return found


def test_rank_code_never_imports_the_driver_side(tmp_path):
    train_pkg = Path(__file__).resolve().parents[1] / "dolly_spark" / "train"
    assert (train_pkg / "worker.py").is_file()
    assert launch_imports(train_pkg) == []
    # The scan catches one: a function-level import in a copy.
    (tmp_path / "bad.py").write_text("def f():\n    from dolly_spark.launch import plan\n")
    assert launch_imports(tmp_path) == ["bad.py: dolly_spark.launch", "bad.py: dolly_spark.launch.plan"]
