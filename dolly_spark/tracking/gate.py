"""The evaluation gate: a new version takes the alias only if it is not worse than the holder.

Both models are measured on the same pinned eval set, the eval split of gold at the version the
candidate's training lineage names: token-weighted response loss per category (as ``evaluate``
computes it) and generation checks on a fixed, hash-chosen sample of prompts with greedy
decoding (the share of responses that stop at ``### End``, the share that are empty, the median
length). Numbers an ``evaluate`` run already logged for exactly that model, gold table, version
and split (and, for the generation checks, that sample and decoding) are reused.

The rule (``decide``): the overall eval loss may be at most ``tolerance`` worse (relative), and
no category more than ``category_tolerance`` worse. The generation checks are reported, not
enforced. With no alias holder, or the holder being the candidate's own model, the gate passes.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass, field

import pandas as pd

from dolly_spark.serve.evaluate import ALL

log = logging.getLogger(__name__)

PASSED, FAILED, SKIPPED = "passed", "failed", "skipped"
TAG_GATE = "gate"  # passed | failed | skipped, on the model version and the register run
TAG_REASON = "gate.reason"
TAG_CANDIDATE = "gate.candidate"  # JSON: the candidate's numbers
TAG_CHAMPION = "gate.champion"  # JSON: the alias holder's numbers
TAG_CHAMPION_VERSION = "gate.champion_version"
TAG_EVAL_SET = "gate.eval_set"
# What an evaluate run measured: the gate finds reusable numbers by these.
TAG_EVAL_MODEL_SOURCE = "dolly.eval.model_source"
TAG_EVAL_GOLD_TABLE = "dolly.eval.gold_table"
TAG_EVAL_GOLD_VERSION = "dolly.eval.gold_version"
TAG_EVAL_SPLIT = "dolly.eval.split"
GEN_METRIC_PREFIX = "eval_gen_"  # evaluate logs generation_checks() as eval_gen_<check>
CHECKS = ("end_share", "empty_share", "median_tokens")
TABLE_ARTIFACT = "gate/comparison.json"
_EPS = 1e-12  # a worsening exactly at the tolerance passes


class GateFailedError(RuntimeError):
    """The candidate is worse than the alias holder beyond the tolerances (one line: why)."""


@dataclass
class GateConfig:
    tolerance: float = field(
        default=0.02,
        metadata={"help": "most the overall eval loss may be worse than the holder's (relative: 0.02 is 2 percent)"},
    )
    category_tolerance: float = field(
        default=0.05, metadata={"help": "most any category's eval loss may be worse (relative: 0.05 is 5 percent)"}
    )
    warn_only: bool = field(default=False, metadata={"help": "a failed gate exits 0 (the alias still does not move)"})
    split: str = field(default="eval", metadata={"help": "gold split both models are measured on"})
    sample_size: int = field(
        default=16, metadata={"help": "prompts for the generation checks (fixed, chosen by hash as in evaluate)"}
    )
    sample_seed: int = field(default=0, metadata={"help": "changes which records the hash picks"})
    max_new_tokens: int = field(default=32, metadata={"help": "tokens per generation check response (greedy)"})
    loss_batch_size: int = field(default=8, metadata={"help": "sequences per forward pass for the loss"})

    def __post_init__(self):
        for name in ("tolerance", "category_tolerance"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise ValueError(f"gate {name} must be a number >= 0, got {v!r}")
        if self.sample_size < 0 or self.max_new_tokens < 1 or self.loss_batch_size < 1:
            raise ValueError("gate sample_size must be >= 0, max_new_tokens and loss_batch_size >= 1")


@dataclass
class ModelScores:
    """One model's numbers on the pinned eval set: loss per category (and ``all``), generation
    checks, and where each came from (``computed`` or ``evaluate run <id>``)."""

    losses: dict[str, float]
    checks: dict[str, float] = field(default_factory=dict)
    loss_from: str = "computed"
    checks_from: str = "computed"

    def as_json(self) -> str:
        numbers = {"loss": _rounded(self.losses), "checks": _rounded(self.checks)}
        return json.dumps({**numbers, "loss_from": self.loss_from, "checks_from": self.checks_from}, sort_keys=True)


@dataclass
class GateDecision:
    status: str  # passed | failed | skipped
    reason: str  # one line
    champion_version: str | None = None
    candidate: ModelScores | None = None
    champion: ModelScores | None = None
    eval_set: str = ""  # "gold@v3 (eval)"
    table: pd.DataFrame | None = field(default=None, repr=False)

    @property
    def moves_alias(self) -> bool:
        return self.status != FAILED


def _rounded(d: dict[str, float]) -> dict[str, float]:
    return {k: round(float(v), 6) for k, v in sorted(d.items())}


# ---------------------------------------------------------------------------------------------
# The rule, on plain numbers.


def relative_worsening(candidate: float, champion: float) -> float:
    """How much worse (higher) the candidate's loss is, relative to the champion's (< 0: better)."""
    if champion > 0:
        return (candidate - champion) / champion
    return candidate - champion


def _finite(*values) -> bool:
    return all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)


def decide(candidate: dict[str, float], champion: dict[str, float], tolerance: float, category_tolerance: float):
    """(passed, one-line reason) for two ``{category: loss}`` maps with an ``all`` entry.

    Categories missing on either side, or without a finite loss, are not compared."""
    if not _finite(candidate.get(ALL), champion.get(ALL)):
        raise ValueError("the gate needs both models' overall eval loss")
    overall = relative_worsening(candidate[ALL], champion[ALL])
    summary = f"eval loss {candidate[ALL]:.4f} vs {champion[ALL]:.4f} ({overall:+.1%})"
    if overall > tolerance + _EPS:
        return False, f"{summary}: more than {tolerance:.1%} worse"
    worse = []
    for cat in sorted(set(candidate) & set(champion) - {ALL}):
        if _finite(candidate[cat], champion[cat]):
            change = relative_worsening(candidate[cat], champion[cat])
            if change > category_tolerance + _EPS:
                worse.append((change, cat))
    if worse:
        change, cat = max(worse)
        more = f" (and {len(worse) - 1} more)" if len(worse) > 1 else ""
        detail = f"{candidate[cat]:.4f} vs {champion[cat]:.4f} ({change:+.1%})"
        return False, f"{summary}, but category {cat} loss {detail}: more than {category_tolerance:.1%} worse{more}"
    return True, f"{summary}, no category more than {category_tolerance:.1%} worse"


def comparison_table(candidate: ModelScores, champion: ModelScores) -> pd.DataFrame:
    """metric, kind (loss | generation), candidate, champion, delta, relative_delta: a row per
    category's loss, the overall loss (``eval_loss``) and each generation check."""
    rows = []
    cats = sorted(set(candidate.losses) | set(champion.losses), key=lambda c: (c == ALL, c))
    for cat in cats:
        rows.append(("eval_loss" if cat == ALL else f"eval_loss.{cat}", "loss", cat, candidate.losses, champion.losses))
    for check in CHECKS:
        rows.append((f"gen.{check}", "generation", check, candidate.checks, champion.checks))
    out = []
    for metric, kind, key, cand, champ in rows:
        a, b = cand.get(key, math.nan), champ.get(key, math.nan)
        delta = a - b if _finite(a, b) else math.nan
        rel = delta / b if _finite(delta, b) and b else math.nan
        out.append(
            {"metric": metric, "kind": kind, "candidate": a, "champion": b, "delta": delta, "relative_delta": rel}
        )
    return pd.DataFrame(out, columns=["metric", "kind", "candidate", "champion", "delta", "relative_delta"])


# ---------------------------------------------------------------------------------------------
# Which model is which, and where a model's numbers were already logged.


def model_source(version: str) -> str | None:
    """The logged model behind a resolved model version (``serve.score.ResolvedModel.version``):
    ``models:/m-<id>`` (or ``runs:/...``), the same key for a registered version and the logged
    model it came from; None for a local directory."""
    if version.startswith("dir:"):
        return None
    if version.startswith("run:"):
        return "runs:/" + version[len("run:") :]
    if version.startswith("m-"):
        return f"models:/{version}"
    from mlflow import MlflowClient

    name, number = version.rsplit("/", 1)
    return MlflowClient().get_model_version(name, number).source


def table_key(table: str) -> str:
    """A gold table as a comparable string: a resolved path, or the catalog name."""
    return os.path.realpath(table) if ("/" in table or os.sep in table) else table


def evaluation_tags(model_version: str, gold_table: str, gold_version: int | None, split: str) -> dict[str, str]:
    """Tags of an evaluate run naming exactly what it measured (what ``logged_scores`` matches)."""
    source = model_source(model_version)
    if source is None or gold_version is None:
        return {}
    return {
        TAG_EVAL_MODEL_SOURCE: source,
        TAG_EVAL_GOLD_TABLE: table_key(gold_table),
        TAG_EVAL_GOLD_VERSION: str(int(gold_version)),
        TAG_EVAL_SPLIT: split,
    }


def _evaluate_runs(experiment_id: str, source: str, gold_table: str, gold_version: int, split: str) -> list:
    import mlflow

    query = (
        f"tags.`{TAG_EVAL_MODEL_SOURCE}` = '{source}' and tags.`{TAG_EVAL_GOLD_VERSION}` = '{int(gold_version)}'"
        f" and tags.`{TAG_EVAL_SPLIT}` = '{split}' and attributes.status = 'FINISHED'"
    )
    runs = mlflow.search_runs(
        experiment_ids=[experiment_id],
        filter_string=query,
        order_by=["attributes.start_time DESC"],
        output_format="list",
    )
    return [r for r in runs if r.data.tags.get(TAG_EVAL_GOLD_TABLE) == table_key(gold_table)]


def _logged_losses(run, categories: list[str]) -> dict[str, float] | None:
    from dolly_spark.tracking.metrics import metric_key

    m = run.data.metrics
    keys = {ALL: "eval_loss", **{c: metric_key("eval_loss", c) for c in categories}}
    if not all(k in m for k in keys.values()):
        return None
    return {c: float(m[k]) for c, k in keys.items()}


def _logged_checks(run, cfg: GateConfig) -> dict[str, float] | None:
    p, m = run.data.params, run.data.metrics
    same_sample = (
        p.get("sample_size") == str(cfg.sample_size)
        and p.get("sample_seed") == str(cfg.sample_seed)
        and p.get("generation.max_new_tokens") == str(cfg.max_new_tokens)
        and p.get("generation.greedy") == "true"
    )
    if not same_sample or not all(GEN_METRIC_PREFIX + c in m for c in CHECKS):
        return None
    return {c: float(m[GEN_METRIC_PREFIX + c]) for c in CHECKS}


def logged_scores(experiment_id: str, source: str, eval_set: EvalSet, cfg: GateConfig) -> ModelScores | None:
    """What the latest matching evaluate runs logged for this model on this eval set (loss and
    checks each from the newest run that has them), or None when no run measured the loss."""
    if not source:
        return None
    losses = checks = None
    loss_from = checks_from = ""
    for run in _evaluate_runs(experiment_id, source, eval_set.table, eval_set.version, eval_set.split):
        if losses is None and (found := _logged_losses(run, eval_set.categories)) is not None:
            losses, loss_from = found, f"evaluate run {run.info.run_id}"
        if checks is None and (found := _logged_checks(run, cfg)) is not None:
            checks, checks_from = found, f"evaluate run {run.info.run_id}"
    if losses is None:
        return None
    return ModelScores(losses, checks or {}, loss_from, checks_from if checks is not None else "")


# ---------------------------------------------------------------------------------------------
# Measuring a model on the pinned eval set.


@dataclass
class EvalSet:
    """The pinned eval set: the ``split`` rows of a gold table at one Delta version."""

    table: str  # path, or catalog name
    version: int
    split: str
    frame: object = field(repr=False)  # the Spark DataFrame
    categories: list[str] = field(default_factory=list)

    def describe(self) -> str:
        return f"{os.path.basename(self.table.rstrip('/')) or self.table}@v{self.version} ({self.split})"


def pinned_eval_set(spark, lineage: dict[str, str], names, split: str) -> EvalSet:
    """Gold at the version the candidate trained on (its lineage tags), else the committed one."""
    from dolly_spark.ops import tables
    from dolly_spark.serve import evaluate
    from dolly_spark.tracking.lineage import TAG_GOLD_TABLE, TAG_GOLD_VERSION

    if lineage.get(TAG_GOLD_TABLE) and lineage.get(TAG_GOLD_VERSION):
        table, version = lineage[TAG_GOLD_TABLE], int(lineage[TAG_GOLD_VERSION])
        is_path = "/" in table or os.sep in table
        ref = tables.TableRef(
            "gold", os.path.basename(table.rstrip("/")) if is_path else table, table if is_path else None
        )
        frame = evaluate.split_frame(spark, ref, version, split)
    else:
        log.warning("the candidate's run names no gold version: the gate uses gold as last committed")
        frame, version = evaluate.pinned_eval_frame(spark, names, split)
        table = names.gold.path or names.gold.name
    categories = sorted(r["category"] for r in frame.select("category").distinct().collect())
    if not categories:
        raise ValueError(f"gold {table}@v{version} has no rows with split = {split!r}: nothing to gate on")
    return EvalSet(table, version, split, frame, categories)


def measure(spark, eval_set: EvalSet, model_uri: str, cfg: GateConfig, download_dir, need_loss=True, need_checks=True):
    """(losses, checks) of ``model_uri`` on the eval set: what is asked for, else None."""
    from dolly_spark.serve import evaluate
    from dolly_spark.serve.generate import GenerationConfig
    from dolly_spark.serve.score import resolve_model

    model = resolve_model(model_uri, download_dir)
    losses = checks = None
    if need_loss:
        table, _ = evaluate.summarise_losses(
            evaluate.category_loss_sums(eval_set.frame, model, cfg.loss_batch_size, eval_set.split)
        )
        losses = {str(r.category): float(r.loss) for r in table.itertuples()}
    if need_checks:
        checks = {}
        if cfg.sample_size:
            gen = GenerationConfig(max_new_tokens=cfg.max_new_tokens, greedy=True)
            sampled, _ = evaluate.generated_sample(eval_set.frame, model, cfg.sample_size, cfg.sample_seed, gen)
            checks = evaluate.generation_checks(sampled.toPandas())
    return losses, checks


@dataclass
class GateContext:
    """Where the gate reads from: the experiment of evaluate runs, the engine, the download dir."""

    experiment_id: str
    names: object  # TableNames: gold as last committed, for a candidate without lineage
    download_dir: str | None = None
    spark: object = None

    def session(self):
        if self.spark is None:
            from dolly_spark.ops.session import get_spark

            self.spark = get_spark()
        return self.spark


def scores_for(ctx: GateContext, model_uri: str, source: str, eval_set: EvalSet, cfg: GateConfig) -> ModelScores:
    """A model's ModelScores: logged ones where they match exactly, the rest computed here."""
    found = logged_scores(ctx.experiment_id, source, eval_set, cfg)
    need_checks = found is None or (not found.checks_from and cfg.sample_size > 0)
    if found is not None and not need_checks:
        return found
    losses, checks = measure(
        ctx.session(), eval_set, model_uri, cfg, ctx.download_dir, need_loss=found is None, need_checks=need_checks
    )
    if found is not None:
        return ModelScores(found.losses, checks, found.loss_from, "computed")
    return ModelScores(losses, checks)


# ---------------------------------------------------------------------------------------------
# The gate.


def run_gate(cfg: GateConfig, ctx: GateContext, candidate_uri: str, lineage: dict, holder, alias: str) -> GateDecision:
    """Compare the candidate (``candidate_uri``, a logged model) with ``holder`` (the ModelVersion
    holding the alias, or None). Reads MLflow and measures; writes nothing."""
    if holder is None:
        return GateDecision(PASSED, f"no @{alias} yet: the first model passes")
    holder_label = f"@{alias} (version {holder.version})"
    if holder.source and holder.source == candidate_uri:
        return GateDecision(PASSED, f"{holder_label} is this model already", str(holder.version))
    eval_set = pinned_eval_set(ctx.session(), lineage, ctx.names, cfg.split)
    log.info("gate: candidate vs %s on %s", holder_label, eval_set.describe())
    candidate = scores_for(ctx, candidate_uri, candidate_uri, eval_set, cfg)
    champion = scores_for(ctx, f"models:/{holder.name}/{holder.version}", holder.source, eval_set, cfg)
    passed, why = decide(candidate.losses, champion.losses, cfg.tolerance, cfg.category_tolerance)
    return GateDecision(
        PASSED if passed else FAILED,
        f"against {holder_label} on {eval_set.describe()}: {why}",
        str(holder.version),
        candidate,
        champion,
        eval_set.describe(),
        comparison_table(candidate, champion),
    )


def skipped() -> GateDecision:
    return GateDecision(SKIPPED, "gate skipped (--no-gate)")


def version_tags(decision: GateDecision) -> dict[str, str]:
    """What the registered version is tagged with: the outcome, why, and both sets of numbers."""
    tags = {TAG_GATE: decision.status, TAG_REASON: decision.reason[:5000]}
    if decision.champion_version is not None:
        tags[TAG_CHAMPION_VERSION] = decision.champion_version
    if decision.eval_set:
        tags[TAG_EVAL_SET] = decision.eval_set
    if decision.candidate is not None:
        tags[TAG_CANDIDATE] = decision.candidate.as_json()
    if decision.champion is not None:
        tags[TAG_CHAMPION] = decision.champion.as_json()
    return tags


def log_gate(decision: GateDecision, version: int) -> None:
    """Into the active (register) run: the comparison table, both models' numbers as metrics, the
    outcome as tags. The audit trail of why the alias moved or not."""
    import mlflow

    from dolly_spark.tracking.metrics import log_metric_dict

    mlflow.set_tags({**version_tags(decision), "dolly.registered_version": str(version)})
    if decision.table is not None:
        mlflow.log_table(decision.table, artifact_file=TABLE_ARTIFACT)
        metrics = {}
        for r in decision.table.itertuples():
            metrics.update({f"gate.candidate.{r.metric}": r.candidate, f"gate.champion.{r.metric}": r.champion})
        log_metric_dict(metrics)
