"""The driver side of training: stage gold at a pinned Delta version, then start the ranks.

Driver side only (this module may use Spark; ``dolly_spark.train`` may not). ``run`` has four stages:

1. resolve: the config (gold version, max_seq_len), the plan and its fit check, the GPU family,
   devices and launcher; a bad ``--callbacks`` entry fails here, before anything starts;
2. stage: gold at that version -> Parquet shards under a staging dir all nodes can read;
3. launch: the job file and DeepSpeed config, then ``deepspeed``/``torchrun`` on one node (2 CPU
   ranks locally) or ``DeepspeedTorchDistributor`` across Databricks nodes; a failing rank fails
   the job with its traceback;
4. collect: metrics, the ``TrainResult`` and ``train_result.json`` next to the model directory.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from dolly_spark.launch import planning
from dolly_spark.launch.config import TrainJobConfig
from dolly_spark.launch.processes import (
    choose_launcher,
    free_port,
    launch_command,
    remove_shm_segments,
    run_distributor,
    run_subprocess,
    worker_env,
)
from dolly_spark.launch.staging import StagedGold, stage_gold
from dolly_spark.ops import manifest, tables
from dolly_spark.ops.paths import local_scratch
from dolly_spark.train import checkpoints
from dolly_spark.train.config import WorkerJob
from dolly_spark.train.hardware import load_ds_config, local_device_count, resolve_family

log = logging.getLogger(__name__)

PLAN_LOG_KEYS = ("records_per_step", "steps_per_epoch", "total_steps", "est_gpu_mem_gb", "fits", "reason", "fix")


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
    # full | lora | qlora; lora/qlora: the adapter's settings, its directory and its pinned base
    method: str = "full"
    trainable_parameters: int | None = None
    total_parameters: int | None = None
    lora: dict | None = None
    adapter_dir: str | None = None
    adapter_base: str | None = None
    extra: dict = field(default_factory=dict)


@dataclass
class ResolvedRun:
    """What the resolve stage decided; the later stages only read it."""

    cfg: TrainJobConfig  # gold_version and max_seq_len pinned
    gold: tables.TableRef
    plan: dict
    family: str
    nproc: int  # processes per node
    launcher: str


@dataclass
class RunPaths:
    run_dir: Path  # job.json, ds_config.json, errors/, final_eval.json
    checkpoint_dir: Path
    model_dir: Path
    attempt: str
    metrics_path: Path  # this attempt's metrics, next to the model
    hot_metrics: Path  # appended on local disk while training (a Volume takes no appends)


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


def resolve_run(cfg: TrainJobConfig, spark) -> ResolvedRun:
    names = cfg.table_names()
    gold = names.gold
    if not tables.table_exists(spark, gold):
        raise FileNotFoundError(f"gold table {gold.path or gold.name} not found: run `dolly-spark prepare` first")
    # The gold of the last completed prepare run, never a newer one a running/killed prepare left.
    version = cfg.gold_version if cfg.gold_version is not None else manifest.pinned_version(spark, names, "gold")
    # Resolved once here so every rank (and the plan) uses the same length.
    cfg = dataclasses.replace(cfg, gold_version=int(version), max_seq_len=cfg.resolved_max_seq_len())
    if cfg.callbacks:
        from dolly_spark.train.callbacks import load_callback_classes

        load_callback_classes(cfg.callbacks)  # else every rank fails on a bad one, after staging
    plan = planning.plan_for(cfg, spark)
    log.info("plan: %s", json.dumps({k: plan[k] for k in PLAN_LOG_KEYS}))
    planning.check_fit(plan, refuse=cfg.check_fit)  # before staging or starting anything
    family = resolve_family(cfg.gpu_family)
    nproc = cfg.num_processes or local_device_count(family)
    if nproc < 1:
        raise RuntimeError(f"no devices for family {family!r}; pass --gpu-family cpu or --num-processes")
    return ResolvedRun(cfg, gold, plan, family, nproc, choose_launcher(cfg))


def stage_run(run_: ResolvedRun, spark) -> StagedGold:
    version = run_.cfg.gold_version
    staged = stage_gold(spark, run_.gold, version, run_.cfg.resolved_staging_dir())
    log.info(
        "gold v%d staged: %d train / %d eval records in %s",
        version,
        staged.train_records,
        staged.eval_records,
        staged.directory,
    )
    return staged


def prepare_run_dirs(cfg: TrainJobConfig) -> RunPaths:
    """This attempt's paths; a fresh run removes old checkpoints, a resumed one carries its metrics."""
    model_dir = cfg.resolved_model_dir()
    attempt = uuid.uuid4().hex[:12]
    paths = RunPaths(
        run_dir=cfg.resolved_staging_dir() / "run",
        checkpoint_dir=cfg.resolved_checkpoint_dir(),
        model_dir=model_dir,
        attempt=attempt,
        metrics_path=model_dir.parent / f"metrics-{attempt}.jsonl",
        hot_metrics=local_scratch("runs", attempt) / "metrics.jsonl",
    )
    shutil.rmtree(paths.run_dir / "errors", ignore_errors=True)
    (paths.run_dir / "final_eval.json").unlink(missing_ok=True)
    if not cfg.resume:
        # A fresh run starts over: old checkpoints would mix with the new run's.
        for _, old in checkpoints.list_checkpoints(paths.checkpoint_dir):
            log.warning("fresh run: removing old checkpoint %s", old)
            shutil.rmtree(old, ignore_errors=True)
    else:
        previous = sorted(model_dir.parent.glob("metrics-*.jsonl"), key=lambda p: p.stat().st_mtime)
        if previous:  # a resumed run carries the steps before its checkpoint
            shutil.copyfile(previous[-1], paths.hot_metrics)
    for d in (paths.run_dir, paths.checkpoint_dir, paths.model_dir):
        d.mkdir(parents=True, exist_ok=True)
    return paths


def worker_job(run_: ResolvedRun, staged: StagedGold, paths: RunPaths) -> WorkerJob:
    """The job file's content: the ranks' settings only (``rank_config``), never the driver's."""
    return WorkerJob(
        config=run_.cfg.rank_config(),
        train_files=staged.train_files,
        eval_files=staged.eval_files,
        family=run_.family,
        checkpoint_dir=str(paths.checkpoint_dir),
        model_dir=str(paths.model_dir),
        metrics_path=str(paths.hot_metrics),
        run_dir=str(paths.run_dir),
        attempt=paths.attempt,
    )


def launch_ranks(run_: ResolvedRun, staged: StagedGold, paths: RunPaths) -> None:
    """Write the DeepSpeed config and the job file, start the ranks, wait for them."""
    cfg = run_.cfg
    ds_path = paths.run_dir / "ds_config.json"
    ds_path.write_text(json.dumps(load_ds_config(run_.family, cfg.deepspeed_config, cfg.method), indent=2))
    job_path = worker_job(run_, staged, paths).write(paths.run_dir / "job.json")
    log.info(
        "training: family=%s processes=%d launcher=%s ds_config=%s", run_.family, run_.nproc, run_.launcher, ds_path
    )
    try:
        if run_.launcher == "distributor":
            run_distributor(cfg, run_.nproc, run_.family, job_path, ds_path, paths.run_dir)
        else:
            port = cfg.master_port or free_port()
            try:
                cmd = launch_command(run_.launcher, run_.nproc, port, job_path, ds_path)
                run_subprocess(cmd, worker_env(run_.family), paths.run_dir)
            finally:
                remove_shm_segments(port)  # run_subprocess returns once every rank has exited
    finally:
        if paths.hot_metrics.is_file():
            shutil.copyfile(paths.hot_metrics, paths.metrics_path)
        for hot in ("runs", "hf_datasets", "checkpoints", "model"):  # this node's scratch of the run
            shutil.rmtree(local_scratch() / hot / paths.attempt, ignore_errors=True)


def _log_schedule(schedule: dict) -> None:
    log.info(
        "schedule: records_per_step=%s pad_fraction=%s (random batches: %s)%s",
        schedule.get("records_per_step"),
        schedule.get("pad_fraction"),
        schedule.get("pad_fraction_random_batches"),
        f"; {schedule['note']}" if schedule.get("note") else "",
    )


def collect_result(run_: ResolvedRun, staged: StagedGold, paths: RunPaths, wall_s: float) -> TrainResult:
    """The ranks' final_eval.json and metrics -> ``TrainResult``, also written as train_result.json."""
    cfg = run_.cfg
    final = json.loads((paths.run_dir / "final_eval.json").read_text())
    schedule = final.get("schedule") or {}
    _log_schedule(schedule)
    losses = [float(r["loss"]) for r in read_metrics(paths.metrics_path) if r["kind"] == "train"]
    extra_keys = ("data", "schedule", "eval_label_tokens_by_category", "weight_norms_init", "weight_norms_final")
    result = TrainResult(
        model_dir=str(paths.model_dir),
        checkpoint_dir=str(paths.checkpoint_dir),
        metrics_path=str(paths.metrics_path),
        gold_table=run_.gold.path or run_.gold.name,
        gold_version=int(cfg.gold_version),
        silver_version=staged.silver_version,
        final_step=int(final["final_step"]),
        train_loss_first=losses[0] if losses else None,
        train_loss_last=losses[-1] if losses else None,
        eval_loss=final.get("eval_loss"),
        eval_loss_by_category=final.get("eval_loss_by_category", {}),
        train_loss_first_avg=_mean(losses[:5]),
        train_loss_last_avg=_mean(losses[-5:]),
        family=run_.family,
        num_processes=run_.nproc * max(1, cfg.num_nodes),
        launcher=run_.launcher,
        staging_dir=staged.directory,
        train_records=staged.train_records,
        eval_records=staged.eval_records,
        base_model=cfg.base_model,
        tiny=cfg.tiny,
        resumed_from=final.get("resumed_from"),
        num_parameters=final.get("num_parameters"),
        wall_s=wall_s,
        result_path=str(paths.model_dir.parent / "train_result.json"),
        records_per_step=schedule.get("records_per_step"),
        pad_fraction=schedule.get("pad_fraction"),
        packing=cfg.pack,
        gradient_checkpointing=cfg.gradient_checkpointing,
        method=final.get("method", cfg.method),
        trainable_parameters=final.get("trainable_parameters"),
        total_parameters=final.get("total_parameters"),
        lora=final.get("lora"),
        adapter_dir=final.get("adapter_dir"),
        adapter_base=final.get("base_model"),
        extra={**{k: final.get(k) for k in extra_keys}, "plan": run_.plan},
    )
    Path(result.result_path).write_text(json.dumps(dataclasses.asdict(result), indent=2))
    return result


def run(cfg: TrainJobConfig, spark) -> TrainResult:
    t_start = time.time()
    run_ = resolve_run(cfg, spark)
    staged = stage_run(run_, spark)
    paths = prepare_run_dirs(run_.cfg)
    launch_ranks(run_, staged, paths)
    return collect_result(run_, staged, paths, time.time() - t_start)
