"""``train --plan`` and the fit check before launch: a ``TrainConfig`` resolved against the gold table
and the hardware (real or hypothetical), handed to ``launch.plan.plan``.

Runs on the driver with no GPU: the model is read from its ``config.json`` only, the DeepSpeed
setup (ZeRO stage, offload, precision) from the family's shipped config as set up for the method
(``hardware.load_ds_config``: the same config the launcher hands the ranks), and the number of
rows the Trainer iterates from gold at its committed version.
"""

from __future__ import annotations

import logging
from typing import Any

from dolly_spark.launch.config import TrainJobConfig
from dolly_spark.launch.plan import plan
from dolly_spark.ops.config import ConfigError
from dolly_spark.train.config import TrainConfig
from dolly_spark.train.hardware import load_ds_config

log = logging.getLogger(__name__)


class WontFit(RuntimeError):
    """The plan says the setup runs out of memory: one line with the reason and the cheapest fix."""


def count_train_rows(spark, ref, version: int, pack: bool) -> tuple[int, int]:
    """(train records, rows the Trainer iterates: packs when packing) in gold at ``version``."""
    from pyspark.sql import functions as F

    from dolly_spark.ops import tables

    train = tables.read_table(spark, ref, version).where(F.col("split") == "train")
    row = train.agg(F.count(F.lit(1)).alias("n"), F.countDistinct("pack_id").alias("packs")).collect()[0]
    records = int(row["n"])
    return records, (int(row["packs"]) if pack else records)


def ds_setup(ds_config: dict[str, Any]) -> dict[str, Any]:
    """ZeRO stage, offload and precision as a DeepSpeed config sets them."""
    zero = ds_config.get("zero_optimization", {}) or {}

    def offloaded(key: str) -> bool:
        return str((zero.get(key) or {}).get("device", "none")).lower() not in ("none", "")

    def on(section: str) -> bool:
        v = (ds_config.get(section) or {}).get("enabled", False)
        return v is True or v == "auto"

    precision = "bf16" if on("bf16") else "fp16" if on("fp16") else "fp32"
    return {
        "zero_stage": int(zero.get("stage", 0)),
        "offload_optimizer": offloaded("offload_optimizer"),
        "offload_params": offloaded("offload_param"),
        "precision": precision,
    }


def model_config_for(cfg: TrainConfig) -> dict[str, Any]:
    if cfg.tiny:
        from dolly_spark.train.model import tiny_config

        return tiny_config(50280, cfg.resolved_max_seq_len()).to_dict()
    from dolly_spark.text.model_config import load_model_config

    return load_model_config(cfg.base_model)


def detected_gpu_memory_gb() -> float | None:
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_properties(0).total_memory / 2**30


def _plan(cfg: TrainConfig, family, gpus_per_node, train_rows, gpu_memory_gb, host_memory_gb, max_seq_len, setup):
    return plan(
        model_config_for(cfg),
        gpu_family=family,
        gpu_memory_gb=gpu_memory_gb,
        gpus_per_node=gpus_per_node,
        num_nodes=max(1, cfg.num_nodes),
        per_device_batch=cfg.batch_size_for(family),
        grad_accum=cfg.gradient_accumulation_steps,
        seq_len=max_seq_len,
        gradient_checkpointing=cfg.gradient_checkpointing,
        packing=cfg.pack,
        train_records=train_rows,
        epochs=cfg.epochs,
        warmup_steps=cfg.warmup_steps,
        eval_steps=cfg.eval_steps,
        save_steps=cfg.save_steps,
        max_steps=cfg.max_steps,
        host_memory_gb=host_memory_gb,
        model_name=cfg.base_model,
        method=cfg.method,
        lora_r=cfg.lora.r,
        lora_target_modules=cfg.lora.target_modules,
        **setup,
    )


def resolve_plan(
    cfg: TrainConfig,
    family: str,
    gpus_per_node: int,
    train_records: int,
    train_rows: int,
    gpu_memory_gb: float | None = None,
    host_memory_gb: float | None = None,
) -> dict[str, Any]:
    """The plan JSON for this config on ``gpus_per_node x cfg.num_nodes`` devices of ``family``."""
    setup = ds_setup(load_ds_config(family, cfg.deepspeed_config, cfg.method))
    max_seq_len = cfg.resolved_max_seq_len()
    try:
        out = _plan(cfg, family, gpus_per_node, train_rows, gpu_memory_gb, host_memory_gb, max_seq_len, setup)
    except ValueError as err:  # a setup the plan cannot take (qlora under ZeRO-3, unknown lora targets)
        raise ConfigError(str(err)) from err
    out.update(
        max_seq_len=max_seq_len,
        train_records=train_records,
        train_rows=train_rows,
        group_by_length=cfg.group_by_length,
        epochs=cfg.epochs,
    )
    if cfg.pack:
        # plan() counts rows; with packing a row is several records, so records per step is not fixed.
        out["rows_per_step"] = out["records_per_step"]
        out["records_per_step"] = None
        out["warnings"].append(
            f"packing: {train_records} records in {train_rows} rows, so a step sees a varying number of records "
            "and an epoch has fewer steps than Dolly's"
        )
    return out


def check_fit(result: dict[str, Any], refuse: bool = True) -> None:
    """Log the plan's warnings; raise WontFit (one line: reason and fix) when it does not fit."""
    for w in result.get("warnings", []):
        log.warning("plan: %s", w)
    if not result["fits"] and not refuse:
        log.warning("plan: won't fit (%s); launching anyway (--no-check-fit)", result["reason"])
    elif not result["fits"]:
        fix = result.get("fix")
        raise WontFit(
            f"won't fit: {result['reason']}; cheapest fix: {fix}" if fix else f"won't fit: {result['reason']}"
        )


def plan_for(cfg: TrainJobConfig, spark) -> dict[str, Any]:
    """Everything ``train`` would resolve (gold version, family, devices, memory), then the plan."""
    from dolly_spark.ops import tables
    from dolly_spark.train.hardware import local_device_count, resolve_family

    ref = cfg.table_names().gold
    if not tables.table_exists(spark, ref):
        raise FileNotFoundError(f"gold table {ref.path or ref.name} not found: run `dolly-spark prepare` first")
    version = cfg.gold_version if cfg.gold_version is not None else tables.table_version(spark, ref)
    family = resolve_family(cfg.gpu_family)
    local = local_device_count(family) if cfg.num_processes is None else 0
    gpus = cfg.num_processes or max(1, local)
    memory = cfg.gpu_memory_gb
    if memory is None and family != "cpu" and resolve_family("auto") == family:
        memory = detected_gpu_memory_gb()  # the card we run on, not the family's usual one
    records, rows = count_train_rows(spark, ref, version, cfg.pack)
    out = resolve_plan(cfg, family, gpus, records, rows, memory, cfg.host_memory_gb)
    out.update(gold_table=ref.path or ref.name, gold_version=int(version))
    return out
