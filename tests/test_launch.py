"""Driver launcher: DeepSpeed ZeRO-3 on 2 CPU ranks, a tiny model, a small real gold sample.

One session-scoped training run is shared; the resume test adds a crashed run and its resume.
"""

import dataclasses
import io
import json
import os
import sys
from pathlib import Path

import pytest

from dolly_spark.commands import train as train_cmd
from dolly_spark.launch import failures, processes
from dolly_spark.launch import launcher as launch
from dolly_spark.launch.config import TrainJobConfig
from dolly_spark.launch.staging import StagedGold
from dolly_spark.train.config import TrainConfig, WorkerJob
from tests.reliability.fault_callback import FAULT_ENV, FAULT_SPEC
from tests.shared_data import DOLLY_JSONL, TOKENIZER_DIR
from tests.train_fixtures import gold_rows, write_gold

STEPS = 30
# Settings only the driver reads: they must never reach the ranks' job file.
DRIVER_ONLY = {f.name for f in dataclasses.fields(TrainJobConfig)} - {f.name for f in dataclasses.fields(TrainConfig)}
COMMON = dict(
    base_model="tiny",
    gpu_family="cpu",
    tokenizer=str(TOKENIZER_DIR),
    lr=2e-3,
    warmup_steps=3,
    per_device_batch_size=1,
    max_seq_len=256,
    eval_steps=10,
    save_steps=10,
    save_total_limit=2,
    max_eval_records=2,
)


@pytest.fixture(scope="module", autouse=True)
def _offline_env():
    old = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "MLFLOW_DISABLE_TELEMETRY", "OMP_NUM_THREADS")}
    os.environ.update(HF_HUB_OFFLINE="1", MLFLOW_DISABLE_TELEMETRY="true", OMP_NUM_THREADS="1")
    yield
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="module")
def gold_root(spark, tmp_path_factory):
    root = tmp_path_factory.mktemp("train_root")
    rows = gold_rows(DOLLY_JSONL, TOKENIZER_DIR, n=160, max_tokens=128, max_seq_len=256)
    write_gold(spark, root, rows)
    return root, rows


@pytest.fixture(scope="module")
def trained(spark, gold_root):
    root, rows = gold_root
    cfg = TrainJobConfig(output_root=str(root), max_steps=STEPS, master_port=processes.free_port(), **COMMON)
    return rows, launch.run(cfg, spark), cfg.master_port


def test_tiny_zero3_run_learns_and_reports(trained):
    _, result, _ = trained
    assert result.family == "cpu" and result.num_processes == 2 and result.launcher == "deepspeed"
    assert result.final_step == STEPS
    assert result.train_loss_last_avg < result.train_loss_first_avg - 0.3
    assert result.eval_loss is not None and 0 < result.eval_loss < 20
    cfg_rows, _, _ = trained
    assert set(result.eval_loss_by_category) == {r["category"] for r in cfg_rows if r["split"] == "eval"}
    assert all(0 < v < 20 for v in result.eval_loss_by_category.values())
    assert result.gold_version == 0 and result.silver_version == 3
    saved = json.loads(Path(result.result_path).read_text())
    assert saved["final_step"] == STEPS and Path(result.result_path).parent == Path(result.model_dir).parent
    assert (result.base_model, result.tiny) == ("tiny", True)


@pytest.mark.skipif(not processes.SHM_DIR.is_dir(), reason="no /dev/shm")
def test_a_finished_cpu_run_leaves_no_shared_memory_behind(trained):
    """DeepSpeed's CPU all-reduce maps ~69 MB of /dev/shm per rank and never unlinks it; RAM-backed,
    so leaked segments add up over runs (12 GB had piled up on the development machine)."""
    _, result, port = trained
    assert result.final_step == STEPS
    assert processes.shm_segments(port) == []


def test_shm_cleanup_removes_only_this_users_segments_of_this_port(tmp_path):
    uid = os.getuid()
    names = [
        f"deepspeed_allreduce_buffer_{uid}_127.0.0.1_4242_0",
        f"deepspeed_allreduce_buffer_{uid}_127.0.0.1_4242_1",
        f"deepspeed_allreduce_buffer_{uid}_127.0.0.1_42420_0",  # another run's port
        f"deepspeed_allreduce_buffer_{uid + 1}_127.0.0.1_4242_0",  # another user's run
        "other_4242_0",
    ]
    for name in names:
        (tmp_path / name).write_bytes(b"x")
    assert processes.remove_shm_segments(4242, tmp_path) == names[:2]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names[2:])


def test_the_runs_job_file_holds_no_driver_only_setting(trained):
    _, result, _ = trained
    job = json.loads((Path(result.staging_dir).parent / "run" / "job.json").read_text())
    assert DRIVER_ONLY == {"plan", "gpu_memory_gb", "host_memory_gb", "check_fit", "log_adapter_only"}
    assert set(job["config"]) == {f.name for f in dataclasses.fields(TrainConfig)}


def test_job_file_keeps_driver_only_settings_back(tmp_path):
    cfg = TrainJobConfig(output_root=str(tmp_path), plan=True, gpu_memory_gb=80.0, host_memory_gb=64.0, check_fit=False)
    run_ = launch.ResolvedRun(cfg, gold=None, plan={}, family="cpu", nproc=2, launcher="deepspeed")
    staged = StagedGold(str(tmp_path), 0, None, ["t.parquet"], ["e.parquet"], 1, 1)
    paths = launch.RunPaths(
        tmp_path / "run", tmp_path / "ckpt", tmp_path / "model", "a1", tmp_path / "m", tmp_path / "h"
    )
    path = launch.worker_job(run_, staged, paths).write(tmp_path / "run" / "job.json")
    written = json.loads(path.read_text())
    assert not DRIVER_ONLY & set(written["config"])
    rank_fields = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(TrainConfig)}
    assert WorkerJob.read(path).train_config() == TrainConfig(**rank_fields)
    # What the check guards against: the whole driver config in the job, which a rank cannot even read.
    leaky = dict(written, config=dataclasses.asdict(cfg))
    assert DRIVER_ONLY <= set(leaky["config"])
    from dolly_spark.ops.config import ConfigError

    with pytest.raises(ConfigError, match="unknown config keys .'check_fit', 'gpu_memory_gb'"):
        WorkerJob(**leaky).train_config()


def test_metrics_jsonl_has_loss_lr_tokens_per_step_and_eval_per_category(trained):
    _, result, _ = trained
    rows = launch.read_metrics(result.metrics_path)
    train = [r for r in rows if r["kind"] == "train"]
    assert [r["step"] for r in train] == list(range(1, STEPS + 1))
    assert all(r["tokens_per_s"] > 0 and r["lr"] is not None and r["tokens"] > 0 for r in train)
    evals = [r for r in rows if r["kind"] == "eval"]
    assert {r["step"] for r in evals} == {10, 20, 30}
    assert {r["category"] for r in evals} == set(result.eval_loss_by_category)


def test_saved_model_is_safetensors_reloads_generates_and_weights_changed(trained):
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from dolly_spark.text.prompts import format_prompt

    _, result, _ = trained
    model_dir = Path(result.model_dir)
    assert (model_dir / "model.safetensors").is_file()
    assert not list(model_dir.glob("*.bin")) and not list(model_dir.glob("*.pt"))
    model = AutoModelForCausalLM.from_pretrained(model_dir, use_safetensors=True)
    tok = AutoTokenizer.from_pretrained(model_dir)
    assert len(tok) == model.config.vocab_size == 50280

    # weights moved away from the init, and the saved file holds the final (gathered) weights
    trained_sd = load_file(str(model_dir / "model.safetensors"))
    init_norms, final_norms = result.extra["weight_norms_init"], result.extra["weight_norms_final"]
    assert set(init_norms) == set(final_norms) and len(init_norms) == 3
    for name, norm in final_norms.items():
        assert abs(norm - init_norms[name]) > 1e-3 * init_norms[name], name
    in_file = [n for n in final_norms if n in trained_sd]
    assert len(in_file) >= 2, sorted(trained_sd)
    for name in in_file:
        assert float(torch.linalg.vector_norm(trained_sd[name].float())) == pytest.approx(final_norms[name], rel=1e-4)
    assert all(torch.isfinite(t.float()).all() for t in trained_sd.values())

    enc = tok(format_prompt("Name a primary color."), return_tensors="pt")
    out = model.generate(**enc, max_new_tokens=8, do_sample=False)
    assert out.shape[1] > enc["input_ids"].shape[1]


def test_checkpoints_are_complete_and_rotated(trained):
    from dolly_spark.train import checkpoints

    _, result, _ = trained
    ckpts = checkpoints.list_checkpoints(result.checkpoint_dir)
    assert [s for s, _ in ckpts] == [20, 30]  # save every 10, keep the last 2
    assert all(checkpoints.is_complete(p) for _, p in ckpts)


def test_failing_rank_fails_the_job_then_resume_ends_at_same_step_with_same_data_order(
    spark, gold_root, trained, tmp_path, monkeypatch
):
    """Rank 1 crashes at step 8 (after checkpoint-5); the resumed run ends at its final step with
    the same batches and (near-)identical losses as the uninterrupted reference run."""
    root, _ = gold_root
    _, reference, _ = trained
    ref_rows = {r["step"]: r for r in launch.read_metrics(reference.metrics_path) if r["kind"] == "train"}
    steps = 16
    common = dict(COMMON, save_steps=5, eval_steps=8)  # data order and losses do not depend on these
    dirs = dict(checkpoint_dir=str(tmp_path / "ckpt"), model_dir=str(tmp_path / "out" / "model"))

    monkeypatch.setenv(FAULT_ENV, "raise:1:8")  # the ranks inherit the driver's environment
    crashed = TrainJobConfig(
        output_root=str(root), max_steps=steps, launcher="torchrun", callbacks=(FAULT_SPEC,), **dirs, **common
    )
    with pytest.raises(failures.TrainingFailed) as err:
        launch.run(crashed, spark)
    assert "rank1" in err.value.tracebacks
    assert "injected fault on rank 1 at step 8" in str(err.value)
    monkeypatch.delenv(FAULT_ENV)

    resumed_cfg = TrainJobConfig(
        output_root=str(root), max_steps=steps, launcher="torchrun", resume=True, **dirs, **common
    )
    resumed = launch.run(resumed_cfg, spark)
    assert resumed.final_step == steps
    assert resumed.resumed_from.endswith("checkpoint-5")
    rows = launch.read_metrics(resumed.metrics_path)
    assert len({r["attempt"] for r in rows}) == 2  # the crashed run's rows and the resumed run's rows
    train = {r["step"]: r for r in rows if r["kind"] == "train"}
    assert sorted(train) == list(range(1, steps + 1))
    assert {r["attempt"] for s, r in train.items() if s > 5} == {train[steps]["attempt"]}
    for step in range(1, steps + 1):
        assert train[step]["samples_rank0"] == ref_rows[step]["samples_rank0"], f"data order differs at step {step}"
        assert train[step]["loss"] == pytest.approx(ref_rows[step]["loss"], rel=1e-3), f"loss differs at step {step}"


def test_launch_commands_put_the_worker_module_under_each_launcher(tmp_path):
    job, ds = tmp_path / "job.json", tmp_path / "ds.json"
    ds_cmd = processes.launch_command("deepspeed", 2, 1234, job, ds)
    assert ds_cmd[:4] == [sys.executable, "-u", "-m", "deepspeed.launcher.runner"]
    assert ds_cmd[ds_cmd.index("--module") + 1] == processes.WORKER_MODULE and "--deepspeed_config" in ds_cmd
    tr_cmd = processes.launch_command("torchrun", 2, 1234, job, ds)
    assert (
        tr_cmd[tr_cmd.index("--nproc_per_node") + 1] == "2"
        and tr_cmd[tr_cmd.index("-m", 4) + 1] == processes.WORKER_MODULE
    )
    assert processes.choose_launcher(TrainConfig(output_root="/r", num_nodes=2)) == "distributor"
    assert processes.choose_launcher(TrainConfig(output_root="/r")) == "deepspeed"


def test_read_metrics_keeps_the_latest_row_per_step(tmp_path):
    p = tmp_path / "m.jsonl"
    p.write_text(
        "\n".join(
            json.dumps(r)
            for r in [
                {"kind": "train", "step": 1, "loss": 3.0, "attempt": "a"},
                {"kind": "train", "step": 2, "loss": 2.0, "attempt": "a"},
                {"kind": "train", "step": 2, "loss": 2.5, "attempt": "b"},
                {"kind": "eval", "step": 2, "category": "open_qa", "eval_loss": 4.0, "attempt": "b"},
            ]
        )
    )
    rows = launch.read_metrics(p)
    assert [(r["kind"], r["step"]) for r in rows] == [("train", 1), ("eval", 2), ("train", 2)]
    assert [r["loss"] for r in rows if r["kind"] == "train"] == [3.0, 2.5]


def test_metrics_go_to_an_active_mlflow_run(tmp_path, monkeypatch):
    import mlflow

    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    previous_uri = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    try:
        exp = mlflow.create_experiment("t", artifact_location=str(tmp_path / "art"))
        rows = [
            {"kind": "train", "step": 1, "loss": 3.0, "lr": 1e-3, "tokens_per_s": 100.0},
            {"kind": "train", "step": 2, "loss": 2.0, "lr": 1e-3, "tokens_per_s": 110.0},
            {"kind": "eval", "step": 2, "category": "open_qa", "eval_loss": 4.0},
        ]
        assert train_cmd.log_step_metrics(rows) == 0  # no active run: nothing logged
        with mlflow.start_run(experiment_id=exp) as run:
            assert train_cmd.log_step_metrics(rows) == 7
        client = mlflow.MlflowClient()
        assert [m.value for m in client.get_metric_history(run.info.run_id, "loss")] == [3.0, 2.0]
        assert client.get_metric_history(run.info.run_id, "eval_loss_open_qa")[0].step == 2
    finally:
        mlflow.set_tracking_uri(previous_uri)  # a module global: do not leak into other tests


DEEPSPEED_KILLED = (
    "[2025-01-01 10:00:00,000] [INFO] [launch.py:253:sigkill_handler] Killing subprocess 7568\n"
    "[2025-01-01 10:00:00,001] [INFO] [launch.py:253:sigkill_handler] Killing subprocess 7569\n"
    "[2025-01-01 10:00:00,002] [ERROR] [launch.py:259:sigkill_handler] ['/usr/bin/python3', '-u', '-m', "
    "'dolly_spark.train.worker', '--local_rank=1', '--job', '/s/run/job.json', '--deepspeed_config', "
    "'/s/run/ds_config.json'] exits with return code = -9\n"
)

TORCHRUN_FAILED = """\
torch.distributed.elastic.multiprocessing.errors.ChildFailedError:
============================================================
dolly_spark.train.worker FAILED
------------------------------------------------------------
Failures:
[1]:
  time      : 2025-01-01_10:00:01
  host      : node-a
  rank      : 0 (local_rank: 0)
  exitcode  : 1 (pid: 4100)
  error_file: <N/A>
  traceback : To enable traceback see: https://pytorch.org/docs/stable/elastic/errors.html
------------------------------------------------------------
Root Cause (first observed failure):
[0]:
  time      : 2025-01-01_10:00:00
  host      : node-a
  rank      : 3 (local_rank: 1)
  exitcode  : -9 (pid: 4101)
  error_file: <N/A>
  traceback : Signal 9 (SIGKILL) received by PID 4101
============================================================
"""


def test_dead_ranks_reads_the_deepspeed_launcher_line():
    assert failures.dead_ranks(DEEPSPEED_KILLED) == {1: -9}
    assert failures.dead_ranks(DEEPSPEED_KILLED.replace("= -9", "= 1")) == {1: 1}


def test_dead_ranks_reads_torchruns_failure_report():
    # the global rank, not the local one
    assert failures.dead_ranks(TORCHRUN_FAILED) == {0: 1, 3: -9}


def test_dead_ranks_ignores_ordinary_output():
    text = "step 7 rank 1 loss 2.3\nexitcode of nothing\n--local_rank=0 started\nexits with return code = -9\n"
    assert failures.dead_ranks(text) == {}


def test_training_failed_puts_a_silent_dead_rank_before_the_survivors_tracebacks():
    err = failures.TrainingFailed(
        247,
        {"rank0": "RuntimeError: Connection closed by peer", "rank10": "RuntimeError: x", "rank2": "RuntimeError: y"},
        [],
        dead={1: -9, 2: 1},
    )
    message = str(err)
    killed = message.index("--- rank1 --- killed by SIGKILL (signal 9) without a traceback")
    # rank 2 wrote a traceback: shown as such, not as a silent death; tracebacks in numeric rank order
    assert "rank2 --- exited" not in message
    assert killed < message.index("--- rank0 ---") < message.index("--- rank2 ---") < message.index("--- rank10 ---")


def test_training_failed_without_tracebacks_names_the_dead_rank_and_keeps_the_tail():
    message = str(failures.TrainingFailed(-9, {}, ["last line"], dead={0: -9}))
    assert (
        message.index("rank0 --- killed by SIGKILL")
        < message.index("no rank wrote a traceback")
        < message.index("last line")
    )


def test_worker_env_puts_the_package_parent_on_the_path_and_keys_the_extension_cache(monkeypatch):
    monkeypatch.delenv("TORCH_EXTENSIONS_DIR", raising=False)
    env = processes.worker_env("cpu")
    first = Path(env["PYTHONPATH"].split(os.pathsep)[0])
    assert (first / "dolly_spark" / "train" / "worker.py").is_file()  # -m dolly_spark.train.worker resolves here
    from importlib.metadata import version

    assert env["TORCH_EXTENSIONS_DIR"].endswith(f"deepspeed-{version('deepspeed')}")
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", "/x/ext")
    assert processes.worker_env("cpu")["TORCH_EXTENSIONS_DIR"] == "/x/ext"  # a user's choice wins


def test_worker_env_turns_the_ranks_progress_bars_off_when_the_driver_is_piped(monkeypatch):
    bars = ("HF_DATASETS_DISABLE_PROGRESS_BARS", "HF_HUB_DISABLE_PROGRESS_BARS")
    for var in bars:
        monkeypatch.delenv(var, raising=False)
    before = dict(os.environ)
    piped = processes.worker_env("cpu", show_progress=False)
    assert {v: piped[v] for v in bars} == dict.fromkeys(bars, "1")
    assert not set(bars) & set(processes.worker_env("cpu", show_progress=True))
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # the default follows the driver's stderr
    assert {v: processes.worker_env("cpu")[v] for v in bars} == dict.fromkeys(bars, "1")
    assert dict(os.environ) == before  # the ranks' copy changed, never the driver's own environment


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def _feed_progress(stream, steps=30) -> str:
    reporter = processes.ProgressReporter(stream, every=10)
    for step in range(1, steps + 1):
        reporter.update({"step": step, "max_steps": steps, "loss": 2.5, "tokens_per_s": 100.0})
    reporter.close()
    return stream.getvalue()


def test_progress_is_plain_lines_when_piped_and_a_bar_only_on_a_terminal(caplog):
    with caplog.at_level("INFO", logger=processes.__name__):
        piped = _feed_progress(io.StringIO())
    assert "\r" not in piped
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("step ")]
    assert lines == ["step 10/30 loss 2.5000", "step 20/30 loss 2.5000", "step 30/30 loss 2.5000"]
    # The same check fails on a terminal, where the bar redraws with carriage returns.
    assert "\r" in _feed_progress(_Terminal())
