"""The driver side of training: stage gold at a pinned Delta version, then start the ranks.

Driver side only (this module may use Spark; ``dolly_spark.train`` may not):
1. read gold at one Delta version into Parquet shards under a staging dir all nodes can read;
2. pick the DeepSpeed config for the detected GPU family (or the override);
3. start the ranks: ``deepspeed``/``torchrun`` on one node (2 CPU ranks locally), or
   ``DeepspeedTorchDistributor`` across Databricks nodes;
4. stream the ranks' logs with a progress bar; a failing rank fails the job with its traceback;
5. collect metrics and write ``train_result.json`` next to the model directory.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from dolly_spark.launch import planning
from dolly_spark.launch.staging import stage_gold
from dolly_spark.ops import manifest, tables
from dolly_spark.ops.paths import local_scratch
from dolly_spark.ops.runtime import installed_version
from dolly_spark.train import checkpoints
from dolly_spark.train.config import TrainConfig, WorkerJob
from dolly_spark.train.hardware import load_ds_config, local_device_count, resolve_family
from dolly_spark.train.worker import PROGRESS_PREFIX

log = logging.getLogger(__name__)

WORKER_MODULE = "dolly_spark.train.worker"
PLAN_LOG_KEYS = ("records_per_step", "steps_per_epoch", "total_steps", "est_gpu_mem_gb", "fits", "reason", "fix")


# The deepspeed launcher names the first rank to fail by its command line; torchrun by a report block.
_DEEPSPEED_EXIT = re.compile(r"--local_rank=(\d+)\b.*\bexits with return code = (-?\d+)")
_TORCHRUN_EXIT = re.compile(r"^\s*rank\s*:\s*(\d+)\b.*\n\s*exitcode\s*:\s*(-?\d+)", re.MULTILINE)


def dead_ranks(log_tail: str) -> dict[int, int]:
    """Rank -> exit code of the ranks the launcher reports as failed; a negative code is a signal.

    A rank killed by a signal (SIGKILL, the OOM killer) writes no traceback, so the launcher's
    line is the only trace of the cause. Single node: the deepspeed launcher's local rank is the rank.
    """
    found: dict[int, int] = {}
    for pattern in (_DEEPSPEED_EXIT, _TORCHRUN_EXIT):
        for m in pattern.finditer(log_tail):
            found[int(m.group(1))] = int(m.group(2))
    return found


def _exit_description(code: int) -> str:
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = "an unknown signal"
        return f"killed by {name} (signal {-code})"
    return f"exited with code {code}"


def _rank_order(who: str) -> tuple[int, str]:
    digits = who[len("rank") :]
    return (int(digits), who) if who.startswith("rank") and digits.isdigit() else (1 << 30, who)


class TrainingFailed(RuntimeError):
    def __init__(
        self, returncode: int | None, tracebacks: dict[str, str], tail: list[str], dead: dict[int, int] | None = None
    ):
        self.returncode = returncode
        self.tracebacks = tracebacks
        self.tail = tail
        self.dead = dict(dead or {})
        # A rank that died without a traceback is the cause; the survivors' tracebacks
        # ("Connection closed by peer") are its consequence, so it comes first.
        silent = [
            f"--- rank{r} --- {_exit_description(code)} without a traceback"
            for r, code in sorted(self.dead.items())
            if f"rank{r}" not in tracebacks
        ]
        parts = silent + [
            f"--- {who} ---\n{tb}" for who, tb in sorted(tracebacks.items(), key=lambda kv: _rank_order(kv[0]))
        ]
        if tracebacks:
            detail = "\n".join(parts)
        else:
            detail = "\n".join(silent + ["no rank wrote a traceback; last output lines:", *tail[-40:]])
        super().__init__(f"training failed (exit code {returncode}):\n{detail}")


@dataclass
class TrainResult:
    model_dir: str
    checkpoint_dir: str
    metrics_path: str
    gold_table: str
    gold_version: int
    silver_version: int | None
    final_step: int
    train_loss_first: float | None
    train_loss_last: float | None
    eval_loss: float | None
    eval_loss_by_category: dict[str, float]
    train_loss_first_avg: float | None = None  # mean of the first 5 logged steps (less noisy)
    train_loss_last_avg: float | None = None
    family: str = ""
    num_processes: int = 0
    launcher: str = ""
    staging_dir: str = ""
    train_records: int = 0
    eval_records: int = 0
    base_model: str = ""
    tiny: bool = False
    resumed_from: str | None = None
    num_parameters: int | None = None
    wall_s: float = 0.0
    result_path: str = ""
    # Schedule: records per optimizer step (None when packed rows make it vary), padding share.
    records_per_step: int | None = None
    pad_fraction: float | None = None
    packing: bool = False
    gradient_checkpointing: bool = False
    extra: dict = field(default_factory=dict)


# ---------------------------------------------------------------- staging


# ---------------------------------------------------------------- launching


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def choose_launcher(cfg: TrainConfig) -> str:
    if cfg.launcher != "auto":
        return cfg.launcher
    if cfg.num_nodes > 1:
        return "distributor"
    return "deepspeed"


def launch_command(launcher: str, nproc: int, port: int, job_path: Path, ds_path: Path) -> list[str]:
    worker_args = ["--job", str(job_path), "--deepspeed_config", str(ds_path)]
    if launcher == "deepspeed":
        return [
            sys.executable,
            "-u",
            "-m",
            "deepspeed.launcher.runner",
            "--num_gpus",
            str(nproc),
            "--master_port",
            str(port),
            "--module",
            WORKER_MODULE,
            *worker_args,
        ]
    if launcher == "torchrun":
        return [
            sys.executable,
            "-u",
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            str(nproc),
            "--master_port",
            str(port),
            "-m",
            WORKER_MODULE,
            *worker_args,
        ]
    raise ValueError(f"no local command for launcher {launcher!r}")


def worker_env(family: str) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    pkg_parent = str(Path(__file__).resolve().parents[2])  # the directory holding dolly_spark/
    env["PYTHONPATH"] = pkg_parent + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    # Ops JIT-built by one DeepSpeed release must not be loaded by another (the runtime rows share
    # this machine's cache; the op names are the same).
    ds_version = installed_version("deepspeed") or "none"
    env.setdefault("TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache" / "torch_extensions" / f"deepspeed-{ds_version}"))
    if family == "cpu":
        env["DS_ACCELERATOR"] = "cpu"
        env.setdefault("OMP_NUM_THREADS", "1")
        env.setdefault("CUDA_VISIBLE_DEVICES", "")
    return env


def _read_tracebacks(run_dir: Path) -> dict[str, str]:
    err_dir = run_dir / "errors"
    if not err_dir.is_dir():
        return {}
    return {p.stem: p.read_text() for p in sorted(err_dir.glob("rank*.txt"))}


class _Progress:
    """tqdm bar fed by the ranks' progress lines (plus a log line every 10 steps)."""

    def __init__(self):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=None, desc="train", unit="step", file=sys.stderr, dynamic_ncols=True)
        self.step = 0

    def update(self, payload: dict) -> None:
        total = payload.get("max_steps")
        if total and self.bar.total != total:
            self.bar.total = total
        step = int(payload.get("step", self.step))
        if step > self.step:
            self.bar.update(step - self.step)
        self.step = step
        tps = payload.get("tokens_per_s")
        self.bar.set_postfix(loss=f"{payload.get('loss', float('nan')):.4f}", tok_s=f"{tps:.0f}" if tps else "-")
        if step % 10 == 0:
            log.info("step %d/%s loss %.4f", step, total, payload.get("loss", float("nan")))

    def close(self):
        self.bar.close()


def run_subprocess(cmd: list[str], env: dict[str, str], run_dir: Path, echo=print) -> None:
    """Run the launcher, stream its output, raise TrainingFailed with rank tracebacks on failure."""
    log.info("launching: %s", " ".join(cmd))
    tail: collections.deque[str] = collections.deque(maxlen=200)
    progress = _Progress()
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1, start_new_session=True
    )
    try:
        for line in proc.stdout:
            line = line.rstrip("\n")
            idx = line.find(PROGRESS_PREFIX)
            if idx >= 0:
                try:
                    progress.update(json.loads(line[idx + len(PROGRESS_PREFIX) :]))
                    continue
                except ValueError:
                    pass
            tail.append(line)
            echo(line)
        rc = proc.wait()
    except BaseException:
        _kill_group(proc)
        raise
    finally:
        progress.close()
    if rc != 0:
        raise TrainingFailed(rc, _read_tracebacks(run_dir), list(tail), dead_ranks("\n".join(tail)))


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # its own session: only the launcher and its ranks
    except ProcessLookupError:
        pass
    proc.wait()


def run_distributor(cfg: TrainConfig, nproc: int, family: str, job_path: Path, ds_path: Path, run_dir: Path) -> None:
    """Multi-node on Databricks; the distributor appends ``--deepspeed --deepspeed_config PATH``."""
    from pyspark.ml.deepspeed.deepspeed_distributor import DeepspeedTorchDistributor

    from dolly_spark.train import worker

    distributor = DeepspeedTorchDistributor(
        numGpus=nproc,
        nnodes=cfg.num_nodes,
        localMode=cfg.num_nodes <= 1,
        useGpu=family != "cpu",
        deepspeedConfig=str(ds_path),
    )
    try:
        distributor.run(worker.__file__, "--job", str(job_path))
    except Exception as err:
        raise TrainingFailed(None, _read_tracebacks(run_dir), [str(err)], dead_ranks(str(err))) from err


# ---------------------------------------------------------------- results


def read_metrics(path: str | Path) -> list[dict]:
    """Metric rows; where a resumed run re-logged a step, its (later) row wins."""
    p = Path(path)
    if not p.is_file():
        return []
    latest: dict[tuple, dict] = {}
    for line in p.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            latest[(row["kind"], row["step"], row.get("category"))] = row
    return sorted(latest.values(), key=lambda r: (r["step"], r["kind"], r.get("category") or ""))


def _mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


# ---------------------------------------------------------------- job


def run(cfg: TrainConfig, spark) -> TrainResult:
    t_start = time.time()
    names = cfg.table_names()
    gold = names.gold
    if not tables.table_exists(spark, gold):
        raise FileNotFoundError(f"gold table {gold.path or gold.name} not found: run `dolly-spark prepare` first")
    # The gold of the last completed prepare run, never a newer one a running/killed prepare left.
    version = cfg.gold_version if cfg.gold_version is not None else manifest.pinned_version(spark, names, "gold")
    # Resolved once here so every rank (and the plan) uses the same length.
    cfg = dataclasses.replace(cfg, gold_version=int(version), max_seq_len=cfg.resolved_max_seq_len())
    plan = planning.plan_for(cfg, spark)
    log.info("plan: %s", json.dumps({k: plan[k] for k in PLAN_LOG_KEYS}))
    planning.check_fit(plan, refuse=cfg.check_fit)  # before staging or starting anything
    staging = cfg.resolved_staging_dir()
    staged = stage_gold(spark, gold, version, staging)
    log.info(
        "gold v%d staged: %d train / %d eval records in %s",
        version,
        staged.train_records,
        staged.eval_records,
        staged.directory,
    )

    family = resolve_family(cfg.gpu_family)
    nproc = cfg.num_processes or local_device_count(family)
    if nproc < 1:
        raise RuntimeError(f"no devices for family {family!r}; pass --gpu-family cpu or --num-processes")
    launcher = choose_launcher(cfg)

    run_dir = staging / "run"
    ckpt_dir = cfg.resolved_checkpoint_dir()
    model_dir = cfg.resolved_model_dir()
    attempt = uuid.uuid4().hex[:12]
    # Per-step metrics are appended on local disk (a Volume takes no appends) and copied whole
    # to this run's own file next to the model when training ends.
    metrics_path = model_dir.parent / f"metrics-{attempt}.jsonl"
    hot_metrics = local_scratch("runs", attempt) / "metrics.jsonl"
    shutil.rmtree(run_dir / "errors", ignore_errors=True)
    (run_dir / "final_eval.json").unlink(missing_ok=True)
    if not cfg.resume:
        # A fresh run starts over: old checkpoints would mix with the new run's.
        for _, old in checkpoints.list_checkpoints(ckpt_dir):
            log.warning("fresh run: removing old checkpoint %s", old)
            shutil.rmtree(old, ignore_errors=True)
    else:
        previous = sorted(model_dir.parent.glob("metrics-*.jsonl"), key=lambda p: p.stat().st_mtime)
        if previous:  # a resumed run carries the steps before its checkpoint
            shutil.copyfile(previous[-1], hot_metrics)
    for d in (run_dir, ckpt_dir, model_dir):
        d.mkdir(parents=True, exist_ok=True)

    ds_path = run_dir / "ds_config.json"
    ds_path.write_text(json.dumps(load_ds_config(family, cfg.deepspeed_config), indent=2))
    job = WorkerJob(
        config=dataclasses.asdict(cfg),
        train_files=staged.train_files,
        eval_files=staged.eval_files,
        family=family,
        checkpoint_dir=str(ckpt_dir),
        model_dir=str(model_dir),
        metrics_path=str(hot_metrics),
        run_dir=str(run_dir),
        attempt=attempt,
    )
    job_path = job.write(run_dir / "job.json")
    log.info("training: family=%s processes=%d launcher=%s ds_config=%s", family, nproc, launcher, ds_path)

    try:
        if launcher == "distributor":
            run_distributor(cfg, nproc, family, job_path, ds_path, run_dir)
        else:
            port = cfg.master_port or free_port()
            run_subprocess(launch_command(launcher, nproc, port, job_path, ds_path), worker_env(family), run_dir)
    finally:
        if hot_metrics.is_file():
            shutil.copyfile(hot_metrics, metrics_path)
        for hot in ("runs", "hf_datasets", "checkpoints", "model"):  # this node's scratch of the run
            shutil.rmtree(local_scratch() / hot / attempt, ignore_errors=True)

    final = json.loads((run_dir / "final_eval.json").read_text())
    schedule = final.get("schedule") or {}
    log.info(
        "schedule: records_per_step=%s pad_fraction=%s (random batches: %s)%s",
        schedule.get("records_per_step"),
        schedule.get("pad_fraction"),
        schedule.get("pad_fraction_random_batches"),
        f"; {schedule['note']}" if schedule.get("note") else "",
    )
    rows = read_metrics(metrics_path)
    train_rows = [r for r in rows if r["kind"] == "train"]
    losses = [float(r["loss"]) for r in train_rows]
    result = TrainResult(
        model_dir=str(model_dir),
        checkpoint_dir=str(ckpt_dir),
        metrics_path=str(metrics_path),
        gold_table=gold.path or gold.name,
        gold_version=int(version),
        silver_version=staged.silver_version,
        final_step=int(final["final_step"]),
        train_loss_first=losses[0] if losses else None,
        train_loss_last=losses[-1] if losses else None,
        eval_loss=final.get("eval_loss"),
        eval_loss_by_category=final.get("eval_loss_by_category", {}),
        train_loss_first_avg=_mean(losses[:5]),
        train_loss_last_avg=_mean(losses[-5:]),
        family=family,
        num_processes=nproc * max(1, cfg.num_nodes),
        launcher=launcher,
        staging_dir=staged.directory,
        train_records=staged.train_records,
        eval_records=staged.eval_records,
        base_model="tiny" if cfg.tiny else cfg.base_model,
        tiny=cfg.tiny,
        resumed_from=final.get("resumed_from"),
        num_parameters=final.get("num_parameters"),
        wall_s=time.time() - t_start,
        result_path=str(model_dir.parent / "train_result.json"),
        records_per_step=schedule.get("records_per_step"),
        pad_fraction=schedule.get("pad_fraction"),
        packing=cfg.pack,
        gradient_checkpointing=cfg.gradient_checkpointing,
        extra={
            **{
                k: final.get(k)
                for k in (
                    "data",
                    "schedule",
                    "eval_label_tokens_by_category",
                    "weight_norms_init",
                    "weight_norms_final",
                )
            },
            "plan": plan,
        },
    )
    Path(result.result_path).write_text(json.dumps(dataclasses.asdict(result), indent=2))
    return result
