"""Evaluate: per-sequence loss against HF's own loss, per-category aggregation, a fixed generation
sample written to eval_generations, and MLflow metrics + table artifacts."""

import json
import math

import pandas as pd
import pytest
import torch

from dolly_spark.ops import tables
from dolly_spark.prep.gold import tokenize_texts
from dolly_spark.serve import evaluate
from dolly_spark.serve.evaluate import EvaluateConfig
from dolly_spark.serve.generate import GenerationConfig, load_for_generation
from dolly_spark.text.prompts import format_text
from dolly_spark.text.tokenizer import load_fast_tokenizer
from tests.shared_data import DOLLY_JSONL, TOKENIZER_DIR

CATEGORIES = ("open_qa", "classification", "closed_qa")
PER_CATEGORY = 6  # eval rows per category; as many again go to train and must be ignored


def gold_rows() -> list[dict]:
    """A gold-shaped sample of real records: 6 eval + 6 train rows for each of three categories."""
    tok = load_fast_tokenizer(str(TOKENIZER_DIR))
    picked: dict[str, list] = {c: [] for c in CATEGORIES}
    with open(DOLLY_JSONL) as f:
        for i, line in enumerate(f):
            r = json.loads(line)
            c = r["category"]
            if c in picked and len(picked[c]) < 2 * PER_CATEGORY and len(r["context"]) + len(r["response"]) < 800:
                picked[c].append((i, r))
    rows = []
    for c, recs in picked.items():
        texts = [format_text(r["instruction"], r["context"] or None, r["response"]) for _, r in recs]
        ids, prompt_lens = tokenize_texts(tok, texts)
        for k, ((i, r), text, seq, plen) in enumerate(zip(recs, texts, ids, prompt_lens)):
            rows.append(
                dict(
                    record_id=f"dolly-{i}",
                    category=c,
                    split="eval" if k < PER_CATEGORY else "train",
                    instruction=r["instruction"],
                    context=r["context"] or None,
                    response=r["response"],
                    text=text,
                    input_ids=list(seq),
                    prompt_len=int(plen),
                    seq_len=len(seq),
                    source="dolly" if k % 2 else "own",  # two sources: evaluate reports loss per source
                )
            )
    return rows


SCHEMA = (
    "record_id string, category string, split string, instruction string, context string, response string, "
    "text string, input_ids array<int>, prompt_len int, seq_len int, source string"
)


def hf_loss(model, ids: list[int], prompt_len: int) -> tuple[float, int]:
    """HF's own mean loss with labels masked before prompt_len, times the token count."""
    x = torch.tensor([ids])
    labels = x.clone()
    labels[0, :prompt_len] = -100
    with torch.no_grad():
        mean = model(input_ids=x, labels=labels).loss.item()
    n = len(ids) - prompt_len
    return mean * n, n


@pytest.fixture(scope="module")
def gold(spark, tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    rows = gold_rows()
    tables.write_table(spark, spark.createDataFrame(rows, SCHEMA), tables.TableNames(root=str(root)).gold)
    return root, rows


def test_sequence_losses_match_hf_loss(tiny_model_dir, gold):
    _, rows = gold
    model, _ = load_for_generation(str(tiny_model_dir))
    sample = rows[:5]
    got = evaluate.sequence_losses(
        model, [r["input_ids"] for r in sample], [r["prompt_len"] for r in sample], batch_size=3
    )
    for r, (s, n) in zip(sample, got):
        ref_s, ref_n = hf_loss(model, r["input_ids"], r["prompt_len"])
        assert n == ref_n and n > 0
        assert s == pytest.approx(ref_s, rel=1e-4)


def test_loss_by_category_is_token_weighted():
    rows = pd.DataFrame({"category": ["b", "a"], "records": [1, 3], "loss_sum": [10.0, 2.0], "loss_tokens": [5, 4]})
    out = evaluate.loss_by_category(rows).set_index("category")
    assert list(out.index) == ["a", "b", evaluate.ALL]
    assert out.loc["a", "loss"] == pytest.approx(0.5) and out.loc["b", "loss"] == pytest.approx(2.0)
    assert out.loc[evaluate.ALL, "loss"] == pytest.approx(12.0 / 9)
    assert out.loc[evaluate.ALL, "records"] == 4
    assert out.loc["a", "perplexity"] == pytest.approx(math.exp(0.5))


def test_summarise_losses_weights_sources_by_tokens_and_skips_unnamed_ones():
    agg = pd.DataFrame(
        {
            "category": ["a", "a", "b", "b"],
            "source": ["own", "dolly", "own", ""],
            "records": [1, 2, 3, 4],
            "loss_sum": [1.0, 6.0, 9.0, 8.0],
            "loss_tokens": [1, 3, 3, 4],
        }
    )
    losses, by_source = evaluate.summarise_losses(agg)
    assert by_source == {"dolly": pytest.approx(2.0), "own": pytest.approx(2.5)}  # (1 + 9) / (1 + 3)
    per_category = losses.set_index("category")
    assert per_category.loc["a", "loss"] == pytest.approx(7.0 / 4) and per_category.loc["b", "records"] == 7
    assert per_category.loc[evaluate.ALL, "loss"] == pytest.approx(24.0 / 11)


def test_fixed_sample_is_deterministic_and_seeded(spark):
    df = spark.createDataFrame([(f"r{i}",) for i in range(50)], "record_id string")
    a = [r["record_id"] for r in evaluate.fixed_sample(df, 7).collect()]
    b = [r["record_id"] for r in evaluate.fixed_sample(df.orderBy("record_id", ascending=False), 7).collect()]
    assert a == b and len(set(a)) == 7
    assert set(a) != {r["record_id"] for r in evaluate.fixed_sample(df, 7, seed=1).collect()}


def test_evaluate_writes_generations_and_logs_to_mlflow(spark, gold, tiny_model_dir):
    import mlflow

    from dolly_spark.commands import evaluate as evaluate_cmd

    root, rows = gold
    cfg = EvaluateConfig(
        model_uri=str(tiny_model_dir),
        output_root=str(root),
        sample_size=8,
        generation=GenerationConfig(greedy=True, max_new_tokens=6, batch_size=4),
    )
    res, run_id = evaluate_cmd.run(cfg, spark)  # the command: evaluate.run under its MLflow run
    # loss per category from the UDF equals HF's loss summed over the eval rows, category by category
    model, _ = load_for_generation(str(tiny_model_dir))
    for c in CATEGORIES:
        parts = [
            hf_loss(model, r["input_ids"], r["prompt_len"]) for r in rows if r["category"] == c and r["split"] == "eval"
        ]
        assert res.loss_by_category[c] == pytest.approx(sum(s for s, _ in parts) / sum(n for _, n in parts), rel=1e-4)
        assert res.ppl_by_category[c] == pytest.approx(math.exp(res.loss_by_category[c]), rel=1e-6)
    assert res.records == len(CATEGORIES) * PER_CATEGORY
    for src in ("dolly", "own"):
        parts = [
            hf_loss(model, r["input_ids"], r["prompt_len"]) for r in rows if r["source"] == src and r["split"] == "eval"
        ]
        assert res.loss_by_source[src] == pytest.approx(sum(s for s, _ in parts) / sum(n for _, n in parts), rel=1e-4)
    assert math.isfinite(res.eval_loss) and res.perplexity == pytest.approx(math.exp(res.eval_loss))

    names = tables.TableNames(root=str(root))
    gens = tables.read_table(spark, names.eval_generations).toPandas()
    assert len(gens) == res.generations == 8 and set(gens["eval_id"]) == {res.eval_id}
    eval_ids = {r["record_id"] for r in rows if r["split"] == "eval"}
    assert set(gens["record_id"]) <= eval_ids
    assert gens["error"].isna().all() and gens["completion_tokens"].between(1, 6).all()
    assert (gens["reference_response"] == gens["record_id"].map({r["record_id"]: r["response"] for r in rows})).all()

    run = mlflow.get_run(run_id)
    assert run.data.metrics["eval_loss"] == pytest.approx(res.eval_loss)
    assert run.data.metrics["eval_loss.open_qa"] == pytest.approx(res.loss_by_category["open_qa"])
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id, "eval")}
    assert artifacts == {"eval/loss_by_category.json", "eval/eval_generations.json"}

    # a second evaluation picks the same records and appends under a new eval_id
    again = evaluate.run(cfg, spark)
    gens2 = tables.read_table(spark, names.eval_generations).toPandas()
    assert len(gens2) == 16
    assert set(gens2[gens2["eval_id"] == again.eval_id]["record_id"]) == set(gens["record_id"])
    assert again.eval_loss == pytest.approx(res.eval_loss)
