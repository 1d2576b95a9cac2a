"""``dolly-spark run``: the whole DAG locally (or on one cluster) under one MLflow pipeline run.

prepare -> report -> train -> register -> evaluate -> score, the same DAG the bundle's
``dolly_pipeline`` job runs task by task. Each stage can be skipped (``--skip``) or run alone
(``--stages``); later stages pick up what earlier runs left under the same root.

One YAML file configures it all, a section per job (``prepare: {...}``, ``train: {...}``, ...), as
each job's own config; flags are the job's flags, prefixed by the section (``--train-max-steps``),
except prepare's, which keep their names (``--input``, ``--dedup-threshold``). The location, the
tokenizer and the base model are set once, at the top, and handed to every section.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from dolly_spark.commands import evaluate as evaluate_cmd
from dolly_spark.commands import prepare as prepare_cmd
from dolly_spark.commands import register as register_cmd
from dolly_spark.commands import report as report_cmd
from dolly_spark.commands import score as score_cmd
from dolly_spark.commands import train as train_cmd
from dolly_spark.commands.common import check_tokenizer, cli_errors, parse_job, spark_session
from dolly_spark.launch.config import TrainJobConfig
from dolly_spark.launch.methods import check_method_support
from dolly_spark.ops.config import LOCATION_FIELDS, TrackedLocation
from dolly_spark.ops.mlflow_store import resolve_tracking
from dolly_spark.prep.prepare import PrepareConfig
from dolly_spark.prep.report import ReportConfig
from dolly_spark.serve.evaluate import EvaluateConfig
from dolly_spark.serve.score import ScoreConfig
from dolly_spark.text.model_config import TINY_MODEL
from dolly_spark.text.tokenizer import default_tokenizer
from dolly_spark.tracking.registry import RegisterConfig
from dolly_spark.tracking.runs import job_run
from dolly_spark.train.config import METHODS

log = logging.getLogger(__name__)

PIPELINE_STAGES = ("prepare", "report", "train", "register", "evaluate", "score")
DEFAULT_BASE_MODEL = "EleutherAI/pythia-12b"  # Dolly's dolly-v2-12b base

# A CPU-sized run of the tiny model: Dolly's lr 5e-6 / 50 warmup steps barely move a random-init
# model in a few dozen steps, and short rows keep the 50k-vocab logits cheap (records over 512
# tokens are cut: a few percent). Unpacked, length-grouped batches of 2 per rank.
LOCAL_PRESET = {
    "_help": "the tiny model on CPU in minutes (run's default when no --base-model is given)",
    "base_model": TINY_MODEL,
    "train": {
        "max_steps": 40,
        "lr": 1e-3,
        "warmup_steps": 5,
        "eval_steps": 20,
        "save_steps": 20,
        "max_eval_records": 16,
        "max_seq_len": 512,
        "per_device_batch_size": 2,
    },
    # Greedy: the same generations on every local run, and no per-token sort of a 50k vocabulary.
    # The gate measures a candidate against the champion on every rerun: a small generation sample.
    "register": {"gate_options": {"sample_size": 8, "max_new_tokens": 16}},
    "evaluate": {"sample_size": 64, "generation": {"max_new_tokens": 32, "greedy": True}},
    "score": {"limit": 500, "generation": {"max_new_tokens": 32, "greedy": True}},
}


def _section(cls, prefix: str, *owned: str):
    return field(default_factory=cls, metadata={"flag_prefix": prefix, "set_by_parent": (*LOCATION_FIELDS, *owned)})


@dataclass
class RunConfig(TrackedLocation):
    PRESETS: ClassVar[dict] = {"local": LOCAL_PRESET}

    stages: tuple[str, ...] = field(default=PIPELINE_STAGES, metadata={"help": "stages to run, in DAG order"})
    skip: tuple[str, ...] = field(default=(), metadata={"help": "stages to skip"})
    base_model: str = field(
        default=DEFAULT_BASE_MODEL,
        metadata={"help": "model to fine-tune: hub id, local dir, config.json or 'tiny'; its context bounds gold"},
    )
    tokenizer: str = field(
        default_factory=default_tokenizer, metadata={"help": "hub id or local dir (default: $DOLLY_TOKENIZER)"}
    )
    method: str = field(
        default="full",
        metadata={"help": "how train fine-tunes the base: full, lora or qlora", "choices": METHODS},
    )
    log_adapter_only: bool = field(
        default=False,
        metadata={"help": "lora/qlora: register, evaluate and score the adapter alone, pinned to its base"},
    )
    prepare: PrepareConfig = _section(PrepareConfig, "", "gold.tokenizer", "gold.base_model")
    report: ReportConfig = _section(ReportConfig, "report_")
    # ``plan`` is train's print-and-exit mode: a pipeline always trains.
    train: TrainJobConfig = _section(
        TrainJobConfig, "train_", "tokenizer", "base_model", "method", "log_adapter_only", "plan"
    )
    register: RegisterConfig = _section(RegisterConfig, "register_", "run_id")
    evaluate: EvaluateConfig = _section(EvaluateConfig, "evaluate_", "model_uri")
    score: ScoreConfig = _section(ScoreConfig, "score_", "model_uri")

    @classmethod
    def default_preset(cls, values: dict) -> str | None:
        """``local`` unless a base model is named (flag or YAML)."""
        return None if values.get("base_model") else "local"

    def __post_init__(self):
        unknown = (set(self.stages) | set(self.skip)) - set(PIPELINE_STAGES)
        if unknown:
            raise ValueError(f"unknown stages {sorted(unknown)}; known: {list(PIPELINE_STAGES)}")
        where = {k: getattr(self, k) for k in LOCATION_FIELDS}
        model = {"tokenizer": self.tokenizer, "base_model": self.base_model}
        gold = dataclasses.replace(self.prepare.gold, **model)
        self.prepare = dataclasses.replace(self.prepare, gold=gold, **where)
        self.report = dataclasses.replace(self.report, **where)
        self.train = dataclasses.replace(
            self.train, **where, **model, method=self.method, log_adapter_only=self.log_adapter_only
        )
        self.register = dataclasses.replace(self.register, **where)
        self.evaluate = dataclasses.replace(self.evaluate, **where)
        self.score = dataclasses.replace(self.score, **where)

    def selected_stages(self) -> list[str]:
        return [s for s in PIPELINE_STAGES if s in self.stages and s not in self.skip]


CONFIG = RunConfig


@dataclass
class StageOutcome:
    stage: str
    seconds: float
    summary: dict


def run(cfg: RunConfig, spark) -> list[StageOutcome]:
    todo = cfg.selected_stages()
    outcomes: list[StageOutcome] = []
    state: dict = {}
    with job_run("pipeline", cfg):  # each job's run nests under this one (the active run)
        for i, stage in enumerate(todo, 1):
            print(f"[{i}/{len(todo)}] {stage} ...", flush=True)
            t0 = time.time()
            summary = STAGE_RUNNERS[stage](cfg, spark, state)
            outcomes.append(StageOutcome(stage, time.time() - t0, summary))
            print(f"[{i}/{len(todo)}] {stage} done in {time.time() - t0:.1f}s: {one_line(summary)}", flush=True)
    return outcomes


def format_summary(cfg: RunConfig, outcomes: list[StageOutcome]) -> str:
    return "\n".join(summary_lines(cfg, outcomes))


# Each stage: its section of the RunConfig, run by the job's own command (its MLflow run), a summary.


def run_prepare(cfg: RunConfig, spark, state: dict) -> dict:
    result = prepare_cmd.run(cfg.prepare, spark)
    state["prepare"] = result
    return {
        "tables": result.details.get("accounting", {}),
        "splits": result.details.get("splits", {}),
        "versions": result.versions,
    }


def run_report(cfg: RunConfig, spark, state: dict) -> dict:
    written = report_cmd.run(cfg.report, spark)
    return {"report_dir": str(Path(written["summary"]).parent)}


def run_train(cfg: RunConfig, spark, state: dict) -> dict:
    result, run_id = train_cmd.run(cfg.train, spark)
    state["train_run_id"] = run_id
    return {
        "final_step": result.final_step,
        "train_loss_first": result.train_loss_first_avg,
        "train_loss_last": result.train_loss_last_avg,
        "eval_loss": result.eval_loss,
        "gold": f"{result.gold_table}@{result.gold_version}",
        "model_dir": result.model_dir,
    }


def run_register(cfg: RunConfig, spark, state: dict) -> dict:
    result = register_cmd.run(dataclasses.replace(cfg.register, run_id=state.get("train_run_id")), spark)
    state["model_uri"] = result.model_uri
    return {"model_uri": result.model_uri, "version": result.version, "gate": result.gate.status}


def _model_uri(cfg: RunConfig, state: dict) -> str:
    if state.get("model_uri"):
        return state["model_uri"]
    # Stage rerun alone: the alias the register stage set earlier under the same root.
    return f"models:/{cfg.register.resolved_model_name()}@{cfg.register.alias}"


def run_evaluate(cfg: RunConfig, spark, state: dict) -> dict:
    result, _ = evaluate_cmd.run(dataclasses.replace(cfg.evaluate, model_uri=_model_uri(cfg, state)), spark)
    return {"eval_loss": result.eval_loss, "perplexity": result.perplexity, "generations": result.generations}


def run_score(cfg: RunConfig, spark, state: dict) -> dict:
    result = score_cmd.run(dataclasses.replace(cfg.score, model_uri=_model_uri(cfg, state)), spark)
    return {
        "scored": result.scored,
        "skipped": result.skipped,
        "failed": result.failed,
        "rows_per_s": round(result.rows_per_s, 1),
        "predictions_version": result.predictions_version,
        "model_version": result.model_version,
    }


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def one_line(summary: dict) -> str:
    return ", ".join(f"{k}={_fmt(v)}" for k, v in summary.items() if not isinstance(v, dict))


def summary_lines(cfg: RunConfig, outcomes: list[StageOutcome]) -> list[str]:
    lines = ["", "== dolly-spark run: summary =="]
    for o in outcomes:
        lines.append(f"{o.stage:<9} {o.seconds:7.1f}s  {one_line(o.summary)}")
        for k, v in o.summary.items():
            if isinstance(v, dict) and v:
                lines.append(f"{'':<19}{k}: " + ", ".join(f"{a}={_fmt(b)}" for a, b in v.items()))
    tracking_uri, _ = resolve_tracking(cfg.output_root, cfg.catalog)
    lines.append(f"MLflow UI: mlflow ui --backend-store-uri {tracking_uri}")
    where = f"--output-root {cfg.output_root}" if cfg.output_root else f"--catalog {cfg.catalog} --schema {cfg.schema}"
    lines.append(f'SQL: dolly-spark sql "SELECT * FROM v_category_stats" {where}')
    return lines


STAGE_RUNNERS = {
    "prepare": run_prepare,
    "report": run_report,
    "train": run_train,
    "register": run_register,
    "evaluate": run_evaluate,
    "score": run_score,
}


@cli_errors("run")
def main(argv: list[str] | None = None) -> int:
    cfg = parse_job(RunConfig, argv, "run", __doc__, level=logging.WARNING)
    todo = cfg.selected_stages()
    if "train" in todo:
        check_method_support(cfg.train)  # qlora without 4-bit kernels: refused before prepare writes
    if "prepare" in todo:
        prepare_cmd.preflight(cfg.prepare)  # before the pipeline's MLflow run (the tokenizer too)
    elif "train" in todo:
        check_tokenizer(cfg.tokenizer)
    t0 = time.time()
    outcomes = run(cfg, spark_session())
    print(format_summary(cfg, outcomes))
    print(f"total: {time.time() - t0:.0f}s")
    return 0
