"""``dolly-spark run``: the whole DAG locally (or on one cluster) under one MLflow pipeline run.

prepare -> report -> train -> register -> evaluate -> score, the same DAG the bundle's
``dolly_pipeline`` job runs task by task. Each stage can be skipped (``--skip``) or run alone
(``--stages``); later stages pick up what earlier runs left under the same root.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from dolly_spark.commands import evaluate as evaluate_cmd
from dolly_spark.commands import prepare as prepare_cmd
from dolly_spark.commands import report as report_cmd
from dolly_spark.commands import score as score_cmd
from dolly_spark.commands import train as train_cmd
from dolly_spark.commands.common import parse_job, spark_session
from dolly_spark.ops.config import Location
from dolly_spark.ops.tracking import resolve_tracking
from dolly_spark.prep.prepare import PrepareConfig
from dolly_spark.prep.report import ReportConfig
from dolly_spark.serve.evaluate import EvaluateConfig
from dolly_spark.serve.registry import RegisterConfig, register
from dolly_spark.serve.score import ScoreConfig
from dolly_spark.train.config import TrainConfig

log = logging.getLogger(__name__)

PIPELINE_STAGES = ("prepare", "report", "train", "register", "evaluate", "score")


@dataclass
class RunConfig(Location):
    input: str = field(
        default="databricks/databricks-dolly-15k", metadata={"help": "JSONL file/dir, Volume path or HF id"}
    )
    tokenizer: str | None = field(
        default=None, metadata={"help": "tokenizer hub id or local dir (default: $DOLLY_TOKENIZER)"}
    )
    stages: tuple[str, ...] = field(default=PIPELINE_STAGES, metadata={"help": "stages to run, in DAG order"})
    skip: tuple[str, ...] = field(default=(), metadata={"help": "stages to skip"})
    experiment: str | None = field(default=None, metadata={"help": "MLflow experiment (default: dolly_spark)"})
    # train
    base_model: str = field(default="EleutherAI/pythia-12b", metadata={"help": "hub id, local dir or config.json"})
    tiny: bool = field(default=True, metadata={"help": "tiny Pythia-style model (local runs)"})
    max_steps: int = field(default=40, metadata={"help": "training steps (-1: Dolly's 2 epochs)"})
    train_max_eval_records: int = field(
        default=16, metadata={"help": "eval records per category the tiny run evaluates on"}
    )
    train_max_seq_len: int = field(
        default=512, metadata={"help": "row length for the tiny run (longer records are cut)"}
    )
    # register / evaluate / score
    model_name: str | None = None
    alias: str = "champion"
    eval_sample_size: int = field(default=64, metadata={"help": "eval prompts to generate for"})
    score_limit: int = field(default=500, metadata={"help": "eval prompts to score (0: all)"})
    max_new_tokens: int = field(default=32, metadata={"help": "generation budget for evaluate and score"})
    batch_size: int = 16


CONFIG = RunConfig


@dataclass
class StageOutcome:
    stage: str
    seconds: float
    summary: dict


def selected_stages(cfg: RunConfig) -> list[str]:
    unknown = (set(cfg.stages) | set(cfg.skip)) - set(PIPELINE_STAGES)
    if unknown:
        raise ValueError(f"unknown stages {sorted(unknown)}; known: {PIPELINE_STAGES}")
    return [s for s in PIPELINE_STAGES if s in cfg.stages and s not in cfg.skip]


def run(cfg: RunConfig, spark) -> list[StageOutcome]:
    from dolly_spark.commands.mlflow_logging import job_run

    if cfg.tokenizer:
        os.environ["DOLLY_TOKENIZER"] = cfg.tokenizer
    todo = selected_stages(cfg)
    outcomes: list[StageOutcome] = []
    state: dict = {}
    with job_run(
        "pipeline", cfg, output_root=cfg.output_root, catalog=cfg.catalog, experiment=cfg.experiment
    ) as parent:
        os.environ["DOLLY_PARENT_RUN_ID"] = parent.info.run_id
        try:
            for i, stage in enumerate(todo, 1):
                print(f"[{i}/{len(todo)}] {stage} ...", flush=True)
                t0 = time.time()
                summary = STAGE_RUNNERS[stage](cfg, spark, state)
                outcomes.append(StageOutcome(stage, time.time() - t0, summary))
                print(f"[{i}/{len(todo)}] {stage} done in {time.time() - t0:.1f}s: {one_line(summary)}", flush=True)
        finally:
            os.environ.pop("DOLLY_PARENT_RUN_ID", None)
    return outcomes


def format_summary(cfg: RunConfig, outcomes: list[StageOutcome]) -> str:
    return "\n".join(summary_lines(cfg, outcomes))


# ---------------------------------------------------------------------------------------------
# Each stage: RunConfig -> the job's own config, run under its MLflow run, a summary dict.


def _common(cfg) -> dict:
    return {"output_root": cfg.output_root, "catalog": cfg.catalog, "schema": cfg.schema}


def run_prepare(cfg, spark, state: dict) -> dict:
    pcfg = PrepareConfig(input=cfg.input, **_common(cfg))
    if cfg.tokenizer:  # the tokenizer is gold's (nested config)
        pcfg.gold = dataclasses.replace(pcfg.gold, tokenizer=cfg.tokenizer)
    result = prepare_cmd.tracked(pcfg, spark)
    state["prepare"] = result
    return {
        "tables": result.details.get("accounting", {}),
        "splits": result.details.get("splits", {}),
        "versions": result.versions,
    }


def run_report(cfg, spark, state: dict) -> dict:
    written = report_cmd.tracked(ReportConfig(**_common(cfg)), spark)
    return {"report_dir": str(Path(written["summary"]).parent)}


def run_train(cfg, spark, state: dict) -> dict:
    extra = {"tokenizer": cfg.tokenizer} if cfg.tokenizer else {}
    if cfg.tiny:
        # Dolly's lr 5e-6 / 50 warmup steps barely move a random-init tiny model in a few dozen steps.
        # Short rows keep the 50k-vocab logits cheap on CPU: 2048-token packs are re-split to 512.
        extra.update(
            lr=1e-3,
            warmup_steps=5,
            eval_steps=max(10, cfg.max_steps // 2),
            save_steps=max(10, cfg.max_steps // 2),
            max_eval_records=cfg.train_max_eval_records,
            max_seq_len=cfg.train_max_seq_len,
            per_device_batch_size=1,
        )
    tcfg = TrainConfig(
        **_common(cfg),
        base_model=cfg.base_model,
        tiny=cfg.tiny,
        max_steps=cfg.max_steps,
        experiment=cfg.experiment,
        **extra,
    )
    result, run_id = train_cmd.tracked(tcfg, spark)
    state["train_run_id"] = run_id
    return {
        "final_step": result.final_step,
        "train_loss_first": result.train_loss_first_avg,
        "train_loss_last": result.train_loss_last_avg,
        "eval_loss": result.eval_loss,
        "gold": f"{result.gold_table}@{result.gold_version}",
        "model_dir": result.model_dir,
    }


def run_register(cfg, spark, state: dict) -> dict:
    rcfg = RegisterConfig(
        run_id=state.get("train_run_id"),
        model_name=cfg.model_name,
        alias=cfg.alias,
        experiment=cfg.experiment,
        **_common(cfg),
    )
    result = register(rcfg)
    state["model_uri"] = result.model_uri
    return {"model_uri": result.model_uri, "version": result.version}


def _model_uri(cfg, state: dict) -> str:
    if state.get("model_uri"):
        return state["model_uri"]
    # Stage rerun alone: the alias the register stage set earlier under the same root.
    return f"models:/{RegisterConfig(model_name=cfg.model_name, **_common(cfg)).resolved_model_name()}@{cfg.alias}"


def run_evaluate(cfg, spark, state: dict) -> dict:
    ecfg = EvaluateConfig(
        model_uri=_model_uri(cfg, state),
        sample_size=cfg.eval_sample_size,
        max_new_tokens=cfg.max_new_tokens,
        batch_size=cfg.batch_size,
        experiment=cfg.experiment,
        **_common(cfg),
    )
    result, _ = evaluate_cmd.tracked(ecfg, spark)
    return {"eval_loss": result.eval_loss, "perplexity": result.perplexity, "generations": result.generations}


def run_score(cfg, spark, state: dict) -> dict:
    scfg = ScoreConfig(
        model_uri=_model_uri(cfg, state),
        input_table="gold",
        split="eval",
        limit=cfg.score_limit or None,
        max_new_tokens=cfg.max_new_tokens,
        batch_size=cfg.batch_size,
        greedy=True,
        experiment=cfg.experiment,
        **_common(cfg),
    )
    result = score_cmd.tracked(scfg, spark)
    return {
        "scored": result.scored,
        "skipped": result.skipped,
        "failed": result.failed,
        "predictions_version": result.predictions_version,
        "model_version": result.model_version,
    }


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def one_line(summary: dict) -> str:
    return ", ".join(f"{k}={_fmt(v)}" for k, v in summary.items() if not isinstance(v, dict))


def summary_lines(cfg, outcomes) -> list[str]:
    lines = ["", "== dolly-spark run: summary =="]
    for o in outcomes:
        lines.append(f"{o.stage:<9} {o.seconds:7.1f}s  {one_line(o.summary)}")
        for k, v in o.summary.items():
            if isinstance(v, dict) and v:
                lines.append(f"{'':<19}{k}: " + ", ".join(f"{a}={_fmt(b)}" for a, b in v.items()))
    tracking_uri, _ = resolve_tracking(cfg.output_root, cfg.catalog)
    lines.append(f"MLflow UI: mlflow ui --backend-store-uri {tracking_uri}")
    return lines


STAGE_RUNNERS = {
    "prepare": run_prepare,
    "report": run_report,
    "train": run_train,
    "register": run_register,
    "evaluate": run_evaluate,
    "score": run_score,
}


def main(argv: list[str] | None = None) -> int:
    cfg = parse_job(RunConfig, argv, "run", __doc__, level=logging.WARNING)
    t0 = time.time()
    outcomes = run(cfg, spark_session())
    print(format_summary(cfg, outcomes))
    print(f"total: {time.time() - t0:.0f}s")
    return 0
