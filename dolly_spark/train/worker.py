"""Per-rank training entry point: ``python -m dolly_spark.train.worker --job JOB.json``.

Started by ``deepspeed``/``torchrun`` or by ``DeepspeedTorchDistributor``, which appends
``--deepspeed --deepspeed_config PATH``; both are accepted, as is ``--local_rank``.
No Spark here: everything comes from the job file and the Parquet shards.

A failing rank writes its traceback to ``RUN_DIR/errors/rank<N>.txt`` and exits non-zero,
so the launcher fails the job and the driver can show the traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shutil
import signal
import sys
import time
import traceback
from pathlib import Path

from dolly_spark.ops.paths import local_scratch
from dolly_spark.text.tokenizer import save_portable_tokenizer
from dolly_spark.train.config import WorkerJob

log = logging.getLogger("dolly_spark.train.worker")

PROGRESS_PREFIX = "DOLLY_PROGRESS "
FAULT_ENV = "DOLLY_TRAIN_FAULT"  # "raise:RANK:STEP" or "kill:RANK:STEP" (reliability tests)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="dolly_spark.train.worker")
    p.add_argument("--job", required=True, help="job JSON written by the driver")
    p.add_argument("--deepspeed", action="store_true", help="appended by DeepspeedTorchDistributor")
    p.add_argument(
        "--deepspeed_config", "--deepspeed-config", default=None, help="DeepSpeed JSON (overrides the job's)"
    )
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help="set by the deepspeed launcher")
    args, unknown = p.parse_known_args(argv)
    if unknown:
        print(f"ignoring unknown worker arguments: {unknown}", file=sys.stderr)
    return args


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def _is_dist():
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def _barrier():
    if _is_dist():
        import torch.distributed as dist

        dist.barrier()


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


def _make_trainer_class():
    from transformers import Trainer

    from dolly_spark.train.data import BOOKKEEPING_KEYS, packed_attention_mask

    class DollyTrainer(Trainer):
        """Pops the collator's bookkeeping keys before the model sees the batch, and gives it the
        packed rows' block-diagonal mask (exact isolation of packed records on every release)."""

        def __init__(self, *args, step_log: StepLog, sequential_train_order: bool = False, **kwargs):
            super().__init__(*args, **kwargs)
            self.step_log = step_log
            self.sequential_train_order = sequential_train_order

        def get_train_dataloader(self):
            """Releases without ``train_sampling_strategy`` always shuffle: when the dataset already
            holds the epoch's order (length-grouped), read it in order, through the same accelerator."""
            if not self.sequential_train_order:
                return super().get_train_dataloader()
            from torch.utils.data import DataLoader, SequentialSampler

            loader = DataLoader(
                self.train_dataset,
                batch_size=self.args.train_batch_size,
                sampler=SequentialSampler(self.train_dataset),
                collate_fn=self.data_collator,
                num_workers=self.args.dataloader_num_workers,
                drop_last=self.args.dataloader_drop_last,
            )
            return self.accelerator.prepare(loader)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            extra = {k: inputs.pop(k, None) for k in BOOKKEEPING_KEYS}
            if model.training:
                self.step_log.add(extra["num_real_tokens"], extra["sample_index"])
            if "position_ids" in inputs and "attention_mask" not in inputs:
                inputs["attention_mask"] = packed_attention_mask(inputs["position_ids"], self._mask_dtype())
            return super().compute_loss(
                model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch
            )

        def _mask_dtype(self):
            import torch

            return torch.bfloat16 if self.args.bf16 else torch.float16 if self.args.fp16 else torch.float32

    return DollyTrainer


def _make_callbacks(job: WorkerJob, step_log: StepLog):
    import torch
    from transformers import TrainerCallback

    from dolly_spark.train import checkpoints

    metrics_path = Path(job.metrics_path)

    class MetricsCallback(TrainerCallback):
        """Rank 0 writes one JSON line per train step and per eval; all ranks sum tokens."""

        def __init__(self):
            self.t0 = None
            self.pending: dict = {}

        def _write(self, row: dict) -> None:
            metrics_path.parent.mkdir(parents=True, exist_ok=True)
            row["attempt"] = job.attempt
            with metrics_path.open("a") as f:
                f.write(json.dumps(row) + "\n")

        def on_step_begin(self, args, state, control, **kw):
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            tokens, samples = step_log.take()
            t = torch.tensor([tokens], dtype=torch.long, device=args.device)
            if _is_dist():
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
                print(PROGRESS_PREFIX + json.dumps(progress), flush=True)
            for key, value in logs.items():
                if key.startswith("eval_") and key.endswith("_loss"):
                    category = key[len("eval_") : -len("_loss")]
                    self._write({"kind": "eval", "step": step, "category": category, "eval_loss": value})

    class CheckpointMarkerCallback(TrainerCallback):
        """After every rank saved: mark the checkpoint complete (rank 0), then rotate."""

        def on_save(self, args, state, control, **kw):
            # Saved on local disk; each node copies its shards to the output location whole.
            name = f"checkpoint-{state.global_step}"
            _barrier()
            if int(os.environ.get("LOCAL_RANK", "0")) == 0:
                checkpoints.publish(Path(args.output_dir) / name, Path(job.checkpoint_dir) / name)
                shutil.rmtree(Path(args.output_dir) / name, ignore_errors=True)
            _barrier()
            if state.is_world_process_zero:
                checkpoints.mark_complete(Path(job.checkpoint_dir) / name, state.global_step)
                checkpoints.rotate(job.checkpoint_dir, job.train_config().save_total_limit)
            _barrier()

    class FaultCallback(TrainerCallback):
        """Fault injection for tests: raise or SIGKILL on one rank at one step."""

        def __init__(self, spec: str):
            mode, rank, step = spec.split(":")
            self.mode, self.rank, self.step = mode, int(rank), int(step)

        def on_step_end(self, args, state, control, **kw):
            if _rank() == self.rank and state.global_step == self.step:
                if self.mode == "kill":
                    os.kill(os.getpid(), signal.SIGKILL)
                raise RuntimeError(f"injected fault on rank {self.rank} at step {self.step}")

    callbacks = [MetricsCallback(), CheckpointMarkerCallback()]
    if os.environ.get(FAULT_ENV):
        callbacks.append(FaultCallback(os.environ[FAULT_ENV]))
    return callbacks


def _final_eval_metrics(trainer, eval_sets: dict) -> dict:
    """Eval losses at the final step: reuse the scheduled eval if it ran at that step."""
    if not eval_sets:
        return {}
    step = trainer.state.global_step
    logged = {
        k: v
        for h in trainer.state.log_history
        if h.get("step") == step
        for k, v in h.items()
        if k.startswith("eval_") and k.endswith("_loss")
    }
    if len(logged) == len(eval_sets):
        return logged
    return trainer.evaluate()


def schedule_summary(cfg, lengths: list[int], batch: int, world: int) -> dict:
    """What one optimizer step holds and how much of each batch is padding (logged and returned)."""
    from dolly_spark.train import sampling

    accum = cfg.gradient_accumulation_steps
    order = (
        sampling.grouped_order(lengths, batch * world, cfg.seed)
        if cfg.group_by_length
        else sampling.random_order(len(lengths), cfg.seed)
    )
    out = {
        "packing": cfg.pack,
        "group_by_length": cfg.group_by_length,
        "gradient_checkpointing": cfg.gradient_checkpointing,
        "rows_per_step": batch * world * accum,
        # Packed rows hold a varying number of records: only unpacked rows fix records per step.
        # pad_fraction without grouping is for a seeded random order like the Trainer's (an estimate).
        "records_per_step": None if cfg.pack else batch * world * accum,
        "pad_fraction": round(sampling.pad_fraction(lengths, order, batch, world), 6),
        "pad_fraction_random_batches": round(
            sampling.pad_fraction(lengths, sampling.random_order(len(lengths), cfg.seed), batch, world), 6
        ),
    }
    if cfg.pack:
        out["note"] = (
            "packing: each row holds several records, so an optimizer step sees a varying number of records "
            f"and fewer steps per epoch than Dolly's {batch * world * accum} records per step"
        )
    return out


def train(job: WorkerJob, args: argparse.Namespace) -> dict:
    cfg = job.train_config()
    family = job.family
    cpu = family == "cpu"
    if cpu:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import deepspeed
    from transformers import TrainingArguments, set_seed
    from transformers.utils import logging as hf_logging

    from dolly_spark.train import checkpoints, data, lazy, sampling
    from dolly_spark.train.hardware import load_ds_config, precision_flags
    from dolly_spark.train.model import build_model, count_parameters, load_tokenizer, weight_fingerprint

    rank = _rank()
    if rank != 0:
        hf_logging.set_verbosity_error()
    # ZeRO-3 partitions weights at load only if the process group exists before TrainingArguments.
    deepspeed.init_distributed(dist_backend="gloo" if cpu else "nccl")

    cache_dir = str(local_scratch("hf_datasets", job.attempt))  # hot writes stay on local disk
    # Train examples are built on demand from the memory-mapped shards (no rows as Python lists).
    max_seq_len = cfg.resolved_max_seq_len()
    train_ds, stats = lazy.lazy_examples(data.load_shards(job.train_files, cache_dir), cfg.pack, max_seq_len)
    eval_sets = (
        lazy.lazy_eval_sets(data.load_shards(job.eval_files, cache_dir), max_seq_len, cfg.max_eval_records)
        if job.eval_files
        else {}
    )
    log.info(
        "train: %d records -> %d rows (pack=%s); eval: %s",
        stats.records_in,
        stats.examples_out,
        cfg.pack,
        {k: len(v) for k, v in eval_sets.items()},
    )
    ds_config_path = args.deepspeed_config or str(Path(job.run_dir) / "ds_config.json")
    ds_config = (
        json.loads(Path(ds_config_path).read_text())
        if Path(ds_config_path).exists()
        else load_ds_config(family, cfg.deepspeed_config)
    )
    batch = cfg.batch_size_for(family)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    lengths = train_ds.lengths
    schedule = schedule_summary(cfg, lengths, batch, world)
    if cfg.group_by_length:
        train_ds = sampling.EpochOrder(train_ds, lengths, batch * world, cfg.seed)
    log.info("schedule: %s", json.dumps(schedule))
    # transformers 5 takes the train order as an argument; older releases (runtime 17.3/18) have
    # no such argument, and DollyTrainer reads the grouped dataset in order itself.
    has_strategy = "train_sampling_strategy" in {f.name for f in dataclasses.fields(TrainingArguments)}
    sampling_kwargs = (
        {"train_sampling_strategy": "sequential" if cfg.group_by_length else "random"} if has_strategy else {}
    )
    targs = TrainingArguments(
        output_dir=str(local_scratch("checkpoints", job.attempt)),  # published whole in on_save
        per_device_train_batch_size=batch,
        per_device_eval_batch_size=cfg.per_device_eval_batch_size or batch,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        learning_rate=cfg.lr,
        warmup_steps=cfg.warmup_steps,
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        eval_strategy="steps" if eval_sets else "no",
        eval_steps=cfg.eval_steps,
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=None,  # rotation is ours: only complete checkpoints count
        logging_strategy="steps",
        logging_steps=1,
        report_to="none",
        disable_tqdm=True,
        seed=cfg.seed,
        data_seed=cfg.seed,
        # Grouped: the order comes from sampling.EpochOrder (seeded per epoch); else Dolly's random batches.
        **sampling_kwargs,
        deepspeed=ds_config,
        use_cpu=cpu,
        remove_unused_columns=False,
        dataloader_num_workers=0,
        gradient_checkpointing=cfg.gradient_checkpointing,
        **precision_flags(ds_config),
    )

    tokenizer = load_tokenizer(cfg.tokenizer)
    set_seed(cfg.seed)  # random init (tiny / config) is reproducible
    model = build_model(
        cfg.base_model, tokenizer, tiny=cfg.tiny, trust_remote_code=cfg.trust_remote_code, max_positions=max_seq_len
    )
    init_fingerprint = weight_fingerprint(model)
    # A cache disables packed-sequence masking, is useless with checkpointing and wastes memory.
    model.config.use_cache = False

    resume_from = None
    if cfg.resume:
        resume_from = checkpoints.latest_complete_checkpoint(job.checkpoint_dir)
        _barrier()  # every rank picks the same checkpoint before rank 0 removes partial ones
        if rank == 0:
            checkpoints.remove_incomplete_after(job.checkpoint_dir, resume_from)
        _barrier()
        log.info("resuming from %s", resume_from or "scratch (no complete checkpoint)")

    step_log = StepLog()
    trainer = _make_trainer_class()(
        model=model,
        args=targs,
        train_dataset=train_ds,
        eval_dataset=eval_sets or None,
        data_collator=data.PackedCollator(tokenizer.pad_token_id),
        processing_class=tokenizer,
        callbacks=_make_callbacks(job, step_log),
        step_log=step_log,
        sequential_train_order=cfg.group_by_length and not has_strategy,
    )
    result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    final_metrics = _final_eval_metrics(trainer, eval_sets)

    final_fingerprint = weight_fingerprint(model)
    model.config.use_cache = True
    local_model = local_scratch("model", job.attempt)
    trainer.save_model(str(local_model))  # ZeRO-3: gathers 16-bit weights; rank 0 writes safetensors
    summary = None
    if trainer.is_world_process_zero():
        save_portable_tokenizer(tokenizer, local_model)  # readable by every supported transformers
        (local_model / "training_args.bin").unlink(missing_ok=True)  # a pickle: keep the dir safetensors-only
        checkpoints.publish(local_model, job.model_dir)  # copied whole, then marked complete
        checkpoints.mark_complete(job.model_dir, trainer.state.global_step)
        shutil.rmtree(local_model, ignore_errors=True)
        by_cat = {
            k[len("eval_") : -len("_loss")]: v
            for k, v in final_metrics.items()
            if k.startswith("eval_") and k.endswith("_loss")
        }
        tokens = data.label_token_counts(eval_sets)
        total = sum(tokens[c] for c in by_cat)
        summary = {
            "final_step": trainer.state.global_step,
            "train_loss_mean": result.training_loss,
            "eval_loss_by_category": by_cat,
            "eval_label_tokens_by_category": tokens,
            # label-token-weighted mean of the per-category losses
            "eval_loss": sum(by_cat[c] * tokens[c] for c in by_cat) / total if total else None,
            "data": stats.as_dict(),
            "schedule": schedule,
            "num_parameters": count_parameters(model),
            "family": family,
            "world_size": int(os.environ.get("WORLD_SIZE", "1")),
            "resumed_from": str(resume_from) if resume_from else None,
            "weight_norms_init": init_fingerprint,
            "weight_norms_final": final_fingerprint,
        }
        Path(job.run_dir, "final_eval.json").write_text(json.dumps(summary, indent=2))
    _barrier()
    return summary or {}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rank = _rank()
    logging.basicConfig(level=logging.INFO, format=f"[rank{rank}] %(asctime)s %(levelname)s %(name)s: %(message)s")
    job = WorkerJob.read(args.job)
    if args.local_rank is not None:
        os.environ.setdefault("LOCAL_RANK", str(args.local_rank))
    try:
        train(job, args)
    except BaseException:
        tb = traceback.format_exc()
        err_dir = Path(job.run_dir) / "errors"
        err_dir.mkdir(parents=True, exist_ok=True)
        (err_dir / f"rank{rank}.txt").write_text(tb)
        print(f"[rank{rank}] training failed:\n{tb}", file=sys.stderr, flush=True)
        return 1
    finally:
        if _is_dist():
            import torch.distributed as dist

            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
