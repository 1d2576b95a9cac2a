"""Training faults: a rank SIGKILLed mid-run fails the launcher fast with that rank named; resume
completes the run from the newest good checkpoint, skipping partial or corrupt ones.

The end-to-end runs use ``dolly-spark train`` as a subprocess (the real CLI, launcher and 2 CPU
ranks under DeepSpeed ZeRO-3) with ``--callbacks`` adding ``fault_callback.FaultCallback`` and
``DOLLY_TRAIN_FAULT=kill:RANK:STEP`` telling it where to strike.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from dolly_spark.train import checkpoints
from tests.reliability import helpers
from tests.reliability.fault_callback import FAULT_ENV, FAULT_SPEC, FaultCallback
from tests.shared_data import DOLLY_JSONL, TOKENIZER_DIR
from tests.train_fixtures import gold_rows, write_gold

STEPS = 10
TRAIN_ARGS = helpers.tiny_train_args(STEPS, lr="2e-3", warmup=2)
FAIL_FAST_S = 120  # a rank blocked in a gloo collective would wait 30 minutes


@pytest.fixture(scope="module")
def gold_root(spark, tmp_path_factory):
    root = tmp_path_factory.mktemp("train_faults")
    write_gold(spark, root, gold_rows(DOLLY_JSONL, TOKENIZER_DIR, n=80, max_tokens=128, max_seq_len=256))
    return root


def train(root: Path, log: Path, *extra: str, fault: str | None = None, timeout: float = 480):
    env = helpers.subprocess_env()
    env.pop(FAULT_ENV, None)
    if fault:
        env[FAULT_ENV] = fault
        extra = (*extra, "--callbacks", FAULT_SPEC)
        # The driver imports the callback before launch (the ranks get the repo on their path anyway).
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(helpers.REPO), env.get("PYTHONPATH")) if p)
    return helpers.run_train(["--output-root", str(root), *TRAIN_ARGS, *extra], env, log, timeout)


@pytest.mark.slow
def test_killed_rank_fails_fast_then_resume_skips_a_partial_checkpoint(gold_root, tmp_path):
    ckpt_dir = Path(gold_root) / "train" / "checkpoints"
    rc, ended, out, _ = train(gold_root, tmp_path / "killed.log", fault="kill:1:7")
    assert rc != 0, out[-3000:]
    # The launcher names the dead rank and its signal rather than hanging on the survivor.
    assert "rank" in out.lower() and ("-9" in out or "SIGKILL" in out), out[-3000:]
    assert "training failed" in out
    marker = ckpt_dir / "checkpoint-6" / checkpoints.MARKER
    assert marker.is_file(), sorted(p.name for p in ckpt_dir.iterdir())
    assert ended - marker.stat().st_mtime < FAIL_FAST_S, "the launcher did not fail fast after the kill"
    assert not (ckpt_dir / "checkpoint-9").exists()

    # A save cut short leaves no marker: make checkpoint-6 look like that; resume must use checkpoint-3.
    marker.unlink()
    rc, _, out, _ = train(gold_root, tmp_path / "resumed.log", "--resume")
    assert rc == 0, out[-3000:]
    result = json.loads((Path(gold_root) / "train" / "train_result.json").read_text())
    assert result["final_step"] == STEPS
    assert result["resumed_from"].endswith("checkpoint-3")
    complete = [p.name for _, p in checkpoints.list_checkpoints(ckpt_dir) if checkpoints.is_complete(p)]
    assert "checkpoint-9" in complete


class _State:
    def __init__(self, step):
        self.global_step = step


def test_fault_callback_strikes_its_rank_at_its_step_only(monkeypatch):
    monkeypatch.setenv("RANK", "1")
    fault = FaultCallback("raise:1:8")
    fault.on_step_end(None, _State(7), None)  # not its step
    FaultCallback("raise:0:8").on_step_end(None, _State(8), None)  # not its rank
    with pytest.raises(RuntimeError, match="injected fault on rank 1 at step 8"):
        fault.on_step_end(None, _State(8), None)
    monkeypatch.setenv(FAULT_ENV, "raise:1:3")  # built with no arguments, as the hook does: the env's spec
    with pytest.raises(RuntimeError, match="at step 3"):
        FaultCallback().on_step_end(None, _State(3), None)
    monkeypatch.delenv(FAULT_ENV)
    FaultCallback().on_step_end(None, _State(3), None)  # no spec: nothing happens


def _fake_checkpoint(root: Path, step: int) -> Path:
    path = root / f"checkpoint-{step}"
    (path / f"global_step{step}").mkdir(parents=True)
    (path / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    (path / f"global_step{step}" / "zero_pp_rank_0_mp_rank_00_model_states.pt").write_bytes(os.urandom(4096))
    (path / "model.safetensors").write_bytes(os.urandom(8192))
    checkpoints.mark_complete(path, step)
    return path


def test_partial_checkpoint_is_skipped(tmp_path):
    _fake_checkpoint(tmp_path, 3)
    latest = _fake_checkpoint(tmp_path, 6)
    (latest / checkpoints.MARKER).unlink()
    assert checkpoints.latest_complete_checkpoint(tmp_path).name == "checkpoint-3"
    partial = tmp_path / "checkpoint-9"
    partial.mkdir()  # a save killed before trainer_state.json
    assert checkpoints.latest_complete_checkpoint(tmp_path).name == "checkpoint-3"


@pytest.mark.parametrize("damage", ["truncate_weights", "truncate_zero_shard", "delete_shard", "alter_state"])
def test_corrupt_checkpoint_is_skipped(tmp_path, damage):
    _fake_checkpoint(tmp_path, 3)
    latest = _fake_checkpoint(tmp_path, 6)
    shard = latest / "global_step6" / "zero_pp_rank_0_mp_rank_00_model_states.pt"
    if damage == "truncate_weights":
        with open(latest / "model.safetensors", "r+b") as f:
            f.truncate(100)
    elif damage == "truncate_zero_shard":
        with open(shard, "r+b") as f:
            f.truncate(10)
    elif damage == "delete_shard":
        shard.unlink()
    else:
        (latest / "trainer_state.json").write_text('{"global_step": 6, "trunc')
    assert checkpoints.latest_complete_checkpoint(tmp_path).name == "checkpoint-3"


@pytest.mark.slow
def test_resume_skips_a_corrupt_latest_checkpoint(gold_root, tmp_path):
    root = tmp_path / "root"
    (root / "tables").mkdir(parents=True)
    os.symlink(Path(gold_root) / "tables" / "gold", root / "tables" / "gold")
    rc, _, out, _ = train(root, tmp_path / "first.log", fault="kill:0:8")
    assert rc != 0
    ckpt_dir = root / "train" / "checkpoints"
    shards = sorted((ckpt_dir / "checkpoint-6").rglob("*model_states.pt"))
    assert shards, sorted(p.name for p in (ckpt_dir / "checkpoint-6").iterdir())
    with open(shards[0], "r+b") as f:
        f.truncate(64)
    rc, _, out, _ = train(root, tmp_path / "resumed.log", "--resume")
    assert rc == 0, out[-3000:]
    result = json.loads((root / "train" / "train_result.json").read_text())
    assert result["final_step"] == STEPS and result["resumed_from"].endswith("checkpoint-3")


def test_training_failed_names_the_killed_rank_first(tmp_path):
    """What the deepspeed launcher prints when rank 1 is SIGKILLed and rank 0 then loses its peer."""
    import sys

    from dolly_spark.launch import failures, processes

    run_dir = tmp_path / "run"
    (run_dir / "errors").mkdir(parents=True)
    (run_dir / "errors" / "rank0.txt").write_text(
        "Traceback (most recent call last):\nRuntimeError: [gloo/transport/tcp/pair.cc:553] Connection closed by peer"
    )
    launcher_output = (
        "[launch.py:253:sigkill_handler] Killing subprocess 7569\n"
        "[launch.py:259:sigkill_handler] ['python3', '-u', '-m', 'dolly_spark.train.worker', '--local_rank=1', "
        "'--job', 'job.json'] exits with return code = -9\n"
    )
    cmd = [sys.executable, "-c", f"import sys; sys.stdout.write({launcher_output!r}); sys.exit(247)"]
    with pytest.raises(failures.TrainingFailed) as err:
        processes.run_subprocess(cmd, dict(os.environ), run_dir, echo=lambda line: None)
    message = str(err.value)
    assert "rank 1" in message or "rank1" in message
    assert "SIGKILL" in message or "signal 9" in message
    first_rank = message.find("rank 1") if "rank 1" in message else message.find("rank1")
    assert first_rank < message.find("rank0"), "the killed rank, the cause, must come first"
