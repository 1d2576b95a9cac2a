"""``dolly-spark run``: the whole DAG locally (or on one cluster) under one MLflow pipeline run.

prepare -> report -> train -> register -> evaluate -> score, the same DAG the bundle's
``dolly_pipeline`` job runs task by task. Each stage can be skipped (``--skip``) or run alone
(``--stages``); later stages pick up what earlier runs left under the same root.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field

from dolly_spark.config import parse_config

log = logging.getLogger(__name__)

PIPELINE_STAGES = ("prepare", "report", "train", "register", "evaluate", "score")


@dataclass
class RunConfig:
    input: str = field(default="databricks/databricks-dolly-15k", metadata={"help": "JSONL file/dir, Volume path or HF id"})
    output_root: str | None = field(default=None, metadata={"help": "local root for tables, models and mlflow.db"})
    catalog: str | None = None
    schema: str | None = None
    tokenizer: str | None = field(default=None, metadata={"help": "tokenizer hub id or local dir (default: $DOLLY_TOKENIZER)"})
    stages: tuple[str, ...] = field(default=PIPELINE_STAGES, metadata={"help": "stages to run, in DAG order"})
    skip: tuple[str, ...] = field(default=(), metadata={"help": "stages to skip"})
    experiment: str | None = field(default=None, metadata={"help": "MLflow experiment (default: dolly_spark)"})
    # train
    base_model: str = field(default="EleutherAI/pythia-12b", metadata={"help": "hub id, local dir or config.json"})
    tiny: bool = field(default=True, metadata={"help": "tiny Pythia-style model (local runs)"})
    max_steps: int = field(default=40, metadata={"help": "training steps (-1: Dolly's 2 epochs)"})
    train_max_eval_records: int = field(default=16, metadata={"help": "eval records per category the tiny run evaluates on"})
    train_max_seq_len: int = field(default=512, metadata={"help": "row length for the tiny run (longer records are cut)"})
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
    from dolly_spark import stages as S
    from dolly_spark.tracking import job_run

    if cfg.tokenizer:
        os.environ["DOLLY_TOKENIZER"] = cfg.tokenizer
    todo = selected_stages(cfg)
    outcomes: list[StageOutcome] = []
    state: dict = {}
    with job_run("pipeline", cfg, output_root=cfg.output_root, catalog=cfg.catalog, experiment=cfg.experiment) as parent:
        os.environ["DOLLY_PARENT_RUN_ID"] = parent.info.run_id
        try:
            for i, stage in enumerate(todo, 1):
                print(f"[{i}/{len(todo)}] {stage} ...", flush=True)
                t0 = time.time()
                summary = getattr(S, f"run_{stage}")(cfg, spark, state)
                outcomes.append(StageOutcome(stage, time.time() - t0, summary))
                print(f"[{i}/{len(todo)}] {stage} done in {time.time() - t0:.1f}s: {S.one_line(summary)}", flush=True)
        finally:
            os.environ.pop("DOLLY_PARENT_RUN_ID", None)
    return outcomes


def format_summary(cfg: RunConfig, outcomes: list[StageOutcome]) -> str:
    from dolly_spark.stages import summary_lines

    return "\n".join(summary_lines(cfg, outcomes))


def main(argv: list[str] | None = None) -> int:
    from dolly_spark.session import get_spark

    cfg = parse_config(RunConfig, argv, prog="dolly-spark run", description=__doc__)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    t0 = time.time()
    outcomes = run(cfg, get_spark())
    print(format_summary(cfg, outcomes))
    print(f"total: {time.time() - t0:.0f}s")
    return 0
