"""Per-rank training entry point: ``python -m dolly_spark.train.worker --job JOB.json``.

Started by ``deepspeed``/``torchrun`` or by ``DeepspeedTorchDistributor``, which appends
``--deepspeed --deepspeed_config PATH``; both are accepted, as is ``--local_rank``.
No Spark here: everything comes from the job file and the Parquet shards.

``train`` runs four stages: datasets (shards -> train and eval sets), arguments (the Trainer's
TrainingArguments), trainer (model, tokenizer, the checkpoint to resume from), summary (final
eval, the published model, ``final_eval.json``).

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
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dolly_spark.ops.paths import local_scratch
from dolly_spark.text.adapters import ADAPTER_SUBDIR
from dolly_spark.text.tokenizer import save_portable_tokenizer
from dolly_spark.train import distributed
from dolly_spark.train.config import TrainConfig, WorkerJob

log = logging.getLogger("dolly_spark.train.worker")


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


@dataclass
class TrainData:
    """The datasets stage's output: what the Trainer iterates and evaluates on."""

    train: Any  # lazy.LazyExamples, or sampling.EpochOrder over it when length-grouped
    eval_sets: dict[str, Any]
    stats: Any  # data.BuildStats
    schedule: dict


@dataclass
class PreparedTrainer:
    """The trainer stage's output."""

    trainer: Any
    model: Any  # the unwrapped model the trainer trains
    tokenizer: Any
    resume_from: Path | None
    init_fingerprint: dict[str, float]
    base_ref: dict | None = None  # lora/qlora: dolly_base.json (the pinned base and the adapter)


def build_datasets(job: WorkerJob, cfg: TrainConfig) -> TrainData:
    """Shards -> train examples (built on demand from the memory-mapped shards) and eval sets per category."""
    from dolly_spark.train import data, lazy, sampling

    cache_dir = str(local_scratch("hf_datasets", job.attempt))  # hot writes stay on local disk
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
    batch, world = cfg.batch_size_for(job.family), distributed.world_size()
    lengths = train_ds.lengths
    schedule = schedule_summary(cfg, lengths, batch, world)
    if cfg.group_by_length:
        train_ds = sampling.EpochOrder(train_ds, lengths, batch * world, cfg.seed)
    log.info("schedule: %s", json.dumps(schedule))
    return TrainData(train_ds, eval_sets, stats, schedule)


def read_ds_config(job: WorkerJob, cfg: TrainConfig, override: str | None) -> dict:
    """The DeepSpeed config the launcher wrote (or the distributor passed), else the family's."""
    from dolly_spark.train.hardware import load_ds_config

    path = Path(override or Path(job.run_dir) / "ds_config.json")
    return (
        json.loads(path.read_text()) if path.exists() else load_ds_config(job.family, cfg.deepspeed_config, cfg.method)
    )


def has_train_sampling_strategy() -> bool:
    """transformers 5 takes the train order as an argument; older releases (runtime 17.3/18) do not."""
    from transformers import TrainingArguments

    return "train_sampling_strategy" in {f.name for f in dataclasses.fields(TrainingArguments)}


def training_arguments(job: WorkerJob, cfg: TrainConfig, data: TrainData, ds_config: dict):
    from transformers import TrainingArguments

    from dolly_spark.train.hardware import precision_flags

    batch = cfg.batch_size_for(job.family)
    # Grouped: the order comes from sampling.EpochOrder (seeded per epoch); else Dolly's random batches.
    # Without the argument DollyTrainer reads the grouped dataset in order itself.
    sampling_kwargs = (
        {"train_sampling_strategy": "sequential" if cfg.group_by_length else "random"}
        if has_train_sampling_strategy()
        else {}
    )
    return TrainingArguments(
        output_dir=str(local_scratch("checkpoints", job.attempt)),  # published whole in on_save
        per_device_train_batch_size=batch,
        per_device_eval_batch_size=cfg.per_device_eval_batch_size or batch,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        learning_rate=cfg.lr,
        warmup_steps=cfg.warmup_steps,
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        eval_strategy="steps" if data.eval_sets else "no",
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
        **sampling_kwargs,
        deepspeed=ds_config,
        use_cpu=job.family == "cpu",
        remove_unused_columns=False,
        dataloader_num_workers=0,
        gradient_checkpointing=cfg.gradient_checkpointing,
        **precision_flags(ds_config),
    )


def pick_resume_checkpoint(job: WorkerJob, cfg: TrainConfig) -> Path | None:
    """The newest complete checkpoint when resuming; every rank picks it before rank 0 prunes."""
    from dolly_spark.train import checkpoints

    if not cfg.resume:
        return None
    resume_from = checkpoints.latest_complete_checkpoint(job.checkpoint_dir)
    distributed.barrier()  # every rank picks the same checkpoint before rank 0 removes partial ones
    if distributed.rank() == 0:
        checkpoints.remove_incomplete_after(job.checkpoint_dir, resume_from)
    distributed.barrier()
    log.info("resuming from %s", resume_from or "scratch (no complete checkpoint)")
    return resume_from


def load_model(job: WorkerJob, cfg: TrainConfig, tokenizer, base: str, ds_config: dict):
    """(model, init fingerprint, dolly_base.json or None): the full model, or a frozen base with adapters."""
    from dolly_spark.train import adapters
    from dolly_spark.train.model import build_model, weight_fingerprint

    kwargs = {"trust_remote_code": cfg.trust_remote_code, "max_positions": cfg.resolved_max_seq_len()}
    if cfg.method == "qlora":
        model = adapters.load_qlora_base(base, tokenizer, cfg, ds_config, cpu=job.family == "cpu")
    else:
        model = build_model(base, tokenizer, **kwargs)
    if cfg.method == "full":
        return model, weight_fingerprint(model), None
    model = adapters.attach_adapters(model, cfg)
    return model, weight_fingerprint(model), adapters.base_reference(cfg, base, model)


@dataclass
class ModelSource:
    """What the model is built from: the tokenizer, the base (``adapters.pinned_base``) and the DeepSpeed config."""

    tokenizer: Any
    base: str
    ds_config: dict


def model_source(job: WorkerJob, cfg: TrainConfig, ds_config: dict) -> ModelSource:
    """Tokenizer and base; lora/qlora pin a random-init base to disk first (before any ZeRO-3 context)."""
    from dolly_spark.train import adapters
    from dolly_spark.train.model import load_tokenizer

    tokenizer = load_tokenizer(cfg.tokenizer)
    base = cfg.base_model if cfg.method == "full" else adapters.pinned_base(job, cfg, tokenizer)
    return ModelSource(tokenizer, base, ds_config)


def build_trainer(job: WorkerJob, cfg: TrainConfig, data: TrainData, targs, source: ModelSource) -> PreparedTrainer:
    """Model (after TrainingArguments, so ZeRO-3 partitions it at load), resume pick, Trainer."""
    from transformers import set_seed

    from dolly_spark.train.callbacks import StepLog, rank_callbacks
    from dolly_spark.train.data import PackedCollator
    from dolly_spark.train.trainer import DollyTrainer

    tokenizer = source.tokenizer
    set_seed(cfg.seed)  # random init (tiny / config) is reproducible
    model, init_fingerprint, base_ref = load_model(job, cfg, tokenizer, source.base, source.ds_config)
    # A cache disables packed-sequence masking, is useless with checkpointing and wastes memory.
    model.config.use_cache = False
    resume_from = pick_resume_checkpoint(job, cfg)
    step_log = StepLog()
    trainer = DollyTrainer(
        model=model,
        args=targs,
        train_dataset=data.train,
        eval_dataset=data.eval_sets or None,
        data_collator=PackedCollator(tokenizer.pad_token_id),
        processing_class=tokenizer,
        callbacks=rank_callbacks(job, step_log),
        step_log=step_log,
        sequential_train_order=cfg.group_by_length and not has_train_sampling_strategy(),
    )
    return PreparedTrainer(trainer, model, tokenizer, resume_from, init_fingerprint, base_ref)


def publish_model(job: WorkerJob, prepared: PreparedTrainer) -> None:
    """Save the final model locally (all ranks), then rank 0 publishes it whole and marks it complete.

    lora/qlora: the Trainer saves the adapter into ``adapter/``; rank 0 merges it into the pinned
    base beside it, so the published directory is a plain model with its adapter inside.
    """
    from dolly_spark.train import adapters, checkpoints

    trainer = prepared.trainer
    prepared.model.config.use_cache = True
    local_model = local_scratch("model", job.attempt)
    adapter_dir = local_model / ADAPTER_SUBDIR
    # ZeRO-3: gathers 16-bit weights; rank 0 writes safetensors (the adapter's only, for lora/qlora)
    trainer.save_model(str(local_model if prepared.base_ref is None else adapter_dir))
    if not trainer.is_world_process_zero():
        return
    if prepared.base_ref is not None:
        adapters.write_adapter_dir(adapter_dir, prepared.tokenizer, prepared.base_ref)
        adapters.merge_in_subprocess(adapter_dir, local_model, bf16=trainer.args.bf16)
    save_portable_tokenizer(prepared.tokenizer, local_model)  # readable by every supported transformers
    (local_model / "training_args.bin").unlink(missing_ok=True)  # a pickle: keep the dir safetensors-only
    checkpoints.publish(local_model, job.model_dir)  # copied whole, then marked complete
    checkpoints.mark_complete(job.model_dir, trainer.state.global_step)
    shutil.rmtree(local_model, ignore_errors=True)


def method_summary(job: WorkerJob, prepared: PreparedTrainer) -> dict:
    """What ``final_eval.json`` says of the method: trainable and total parameters, the adapter."""
    ref = prepared.base_ref
    if ref is None:
        from dolly_spark.train.model import count_parameters

        n = count_parameters(prepared.model)
        return {"method": "full", "trainable_parameters": n, "total_parameters": n, "lora": None, "adapter_dir": None}
    lora = {k: ref[k] for k in ("r", "alpha", "dropout", "target_modules")}
    return {
        "method": ref["method"],
        "trainable_parameters": ref["trainable_parameters"],
        "total_parameters": ref["total_parameters"],
        "lora": lora,
        "base_model": ref["base_model"],
        "adapter_dir": str(Path(job.model_dir) / ADAPTER_SUBDIR),
    }


def final_summary(job: WorkerJob, prepared: PreparedTrainer, data: TrainData, result, final_metrics, final_fp):
    """``final_eval.json``'s content (rank 0)."""
    from dolly_spark.train.data import label_token_counts
    from dolly_spark.train.model import count_parameters

    trainer = prepared.trainer
    by_cat = {
        k[len("eval_") : -len("_loss")]: v
        for k, v in final_metrics.items()
        if k.startswith("eval_") and k.endswith("_loss")
    }
    tokens = label_token_counts(data.eval_sets)
    total = sum(tokens[c] for c in by_cat)
    return {
        "final_step": trainer.state.global_step,
        "train_loss_mean": result.training_loss,
        "eval_loss_by_category": by_cat,
        "eval_label_tokens_by_category": tokens,
        # label-token-weighted mean of the per-category losses
        "eval_loss": sum(by_cat[c] * tokens[c] for c in by_cat) / total if total else None,
        "data": data.stats.as_dict(),
        "schedule": data.schedule,
        "num_parameters": count_parameters(prepared.model),
        "family": job.family,
        "world_size": distributed.world_size(),
        "resumed_from": str(prepared.resume_from) if prepared.resume_from else None,
        "weight_norms_init": prepared.init_fingerprint,
        "weight_norms_final": final_fp,
        **method_summary(job, prepared),
    }


def summarize(job: WorkerJob, prepared: PreparedTrainer, data: TrainData, result) -> dict:
    """Final eval, the published model and (rank 0) ``final_eval.json``; every rank takes part."""
    from dolly_spark.train.model import weight_fingerprint

    final_metrics = _final_eval_metrics(prepared.trainer, data.eval_sets)
    final_fp = weight_fingerprint(prepared.model)
    publish_model(job, prepared)
    summary = None
    if prepared.trainer.is_world_process_zero():
        summary = final_summary(job, prepared, data, result, final_metrics, final_fp)
        Path(job.run_dir, "final_eval.json").write_text(json.dumps(summary, indent=2))
    distributed.barrier()
    return summary or {}


def train(job: WorkerJob, args: argparse.Namespace) -> dict:
    cfg = job.train_config()
    cpu = job.family == "cpu"
    if cpu:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import deepspeed
    from transformers.utils import logging as hf_logging

    if distributed.rank() != 0:
        hf_logging.set_verbosity_error()
    # ZeRO-3 partitions weights at load only if the process group exists before TrainingArguments.
    deepspeed.init_distributed(dist_backend="gloo" if cpu else "nccl")
    data = build_datasets(job, cfg)
    source = model_source(job, cfg, read_ds_config(job, cfg, args.deepspeed_config))
    targs = training_arguments(job, cfg, data, source.ds_config)
    prepared = build_trainer(job, cfg, data, targs, source)
    resume = str(prepared.resume_from) if prepared.resume_from else None
    result = prepared.trainer.train(resume_from_checkpoint=resume)
    return summarize(job, prepared, data, result)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rank = distributed.rank()
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
        if distributed.is_distributed():
            import torch.distributed as dist

            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
