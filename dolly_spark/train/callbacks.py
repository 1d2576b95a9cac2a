"""The Trainer callbacks every rank runs: per-step metrics, checkpoint publishing, and the user's own.

``--callbacks module:Class`` adds TrainerCallback classes of your own: each is imported and built
with no arguments on every rank, after the built-in ones. The driver imports them before launch,
so a bad name fails there with one line instead of on every rank.
"""

from __future__ import annotations

import importlib
import inspect
import json
import shutil
import time
from pathlib import Path

import torch
from transformers import TrainerCallback

from dolly_spark.ops.config import ConfigError
from dolly_spark.train import checkpoints, distributed
from dolly_spark.train.config import WorkerJob
from dolly_spark.train.progress import progress_line


class StepLog:
    """Tokens and sample indices seen by this rank since the last optimizer step."""

    def __init__(self):
        self.tokens = 0
        self.samples: list[int] = []

    def add(self, n_real, sample_index):
        if n_real is not None:
            self.tokens += int(n_real.sum())
        if sample_index is not None:
            self.samples += [int(i) for i in sample_index.tolist()]

    def take(self) -> tuple[int, list[int]]:
        out = (self.tokens, self.samples)
        self.tokens, self.samples = 0, []
        return out


class MetricsCallback(TrainerCallback):
    """Rank 0 writes one JSON line per train step and per eval; all ranks sum tokens."""

    def __init__(self, job: WorkerJob, step_log: StepLog):
        self.metrics_path = Path(job.metrics_path)
        self.attempt = job.attempt
        self.step_log = step_log
        self.t0 = None
        self.pending: dict = {}

    def _write(self, row: dict) -> None:
        self.metrics_path.parent.mkdir(parents=True, exist_ok=True)
        row["attempt"] = self.attempt
        with self.metrics_path.open("a") as f:
            f.write(json.dumps(row) + "\n")

    def on_step_begin(self, args, state, control, **kw):
        self.t0 = time.perf_counter()

    def on_step_end(self, args, state, control, **kw):
        tokens, samples = self.step_log.take()
        t = torch.tensor([tokens], dtype=torch.long, device=args.device)
        if distributed.is_distributed():
            torch.distributed.all_reduce(t)
        dt = time.perf_counter() - (self.t0 or time.perf_counter())
        self.pending = {
            "tokens": int(t.item()),
            "tokens_per_s": float(t.item()) / dt if dt > 0 else None,
            "step_time_s": dt,
            "samples_rank0": samples,
        }

    def on_log(self, args, state, control, logs=None, **kw):
        if not state.is_world_process_zero or not logs:
            return
        step = state.global_step
        if "loss" in logs:
            row = {
                "kind": "train",
                "step": step,
                "loss": logs["loss"],
                "lr": logs.get("learning_rate"),
                "grad_norm": logs.get("grad_norm"),
                "epoch": logs.get("epoch"),
                **self.pending,
            }
            self._write(row)
            progress = {
                "step": step,
                "max_steps": state.max_steps,
                "loss": logs["loss"],
                "tokens_per_s": self.pending.get("tokens_per_s"),
            }
            print(progress_line(progress), flush=True)
        for key, value in logs.items():
            if key.startswith("eval_") and key.endswith("_loss"):
                category = key[len("eval_") : -len("_loss")]
                self._write({"kind": "eval", "step": step, "category": category, "eval_loss": value})


class CheckpointMarkerCallback(TrainerCallback):
    """After every rank saved: publish the checkpoint, mark it complete (rank 0), then rotate."""

    def __init__(self, job: WorkerJob, keep: int):
        self.checkpoint_dir = Path(job.checkpoint_dir)
        self.keep = keep

    def on_save(self, args, state, control, **kw):
        # Saved on local disk; each node copies its shards to the output location whole.
        name = f"checkpoint-{state.global_step}"
        distributed.barrier()
        if distributed.local_rank() == 0:
            checkpoints.publish(Path(args.output_dir) / name, self.checkpoint_dir / name)
            shutil.rmtree(Path(args.output_dir) / name, ignore_errors=True)
        distributed.barrier()
        if state.is_world_process_zero:
            checkpoints.mark_complete(self.checkpoint_dir / name, state.global_step)
            checkpoints.rotate(self.checkpoint_dir, self.keep)
        distributed.barrier()


def load_callback_classes(specs: tuple[str, ...]) -> list[type]:
    """The classes ``--callbacks module:Class`` names; ConfigError (one line) for one that cannot be used."""
    classes = []
    for spec in specs:
        module_name, _, class_name = spec.partition(":")
        try:
            module = importlib.import_module(module_name)
        except Exception as err:  # not found, or failing as it loads: either way unusable
            raise ConfigError(f"--callbacks {spec}: cannot import {module_name} ({type(err).__name__}: {err})") from err
        cls = getattr(module, class_name, None)
        if not (isinstance(cls, type) and issubclass(cls, TrainerCallback)):
            raise ConfigError(f"--callbacks {spec}: {module_name}.{class_name} is not a TrainerCallback class")
        try:
            inspect.signature(cls).bind()
        except TypeError as err:
            raise ConfigError(f"--callbacks {spec}: must be buildable with no arguments ({err})") from err
        classes.append(cls)
    return classes


def rank_callbacks(job: WorkerJob, step_log: StepLog) -> list[TrainerCallback]:
    """The built-in callbacks, then the user's (``TrainConfig.callbacks``), in that order."""
    cfg = job.train_config()
    extra = [cls() for cls in load_callback_classes(cfg.callbacks)]
    return [MetricsCallback(job, step_log), CheckpointMarkerCallback(job, cfg.save_total_limit), *extra]
