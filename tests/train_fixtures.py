"""A small gold-like table built from real dolly-15k records (stand-in for dolly_spark.prep.gold)."""

from __future__ import annotations

import json
from pathlib import Path

from dolly_spark.ops import tables
from dolly_spark.text.prompts import format_prompt, format_text
from dolly_spark.text.tokenizer import load_fast_tokenizer


def gold_rows(
    jsonl: Path, tokenizer_dir: Path, n: int = 300, max_tokens: int = 256, max_seq_len: int = 512, eval_every: int = 8
) -> list[dict]:
    """The first ``n`` records with at most ``max_tokens`` tokens, formatted and tokenised like gold.

    Every ``eval_every``-th record goes to eval. Train records are packed greedily in file order
    into packs of at most ``max_seq_len`` tokens; eval records get one pack each.
    """
    tok = load_fast_tokenizer(str(tokenizer_dir))
    rows: list[dict] = []
    with open(jsonl) as f:
        for i, line in enumerate(f):
            if len(rows) >= n:
                break
            rec = json.loads(line)
            prompt = format_prompt(rec["instruction"], rec["context"])
            text = format_text(rec["instruction"], rec["context"], rec["response"])
            ids = tok.encode(text, add_special_tokens=False).ids
            if len(ids) > max_tokens:
                continue
            prompt_len = len(tok.encode(prompt, add_special_tokens=False).ids)
            rows.append(
                {
                    "record_id": f"r{i:05d}",
                    "category": rec["category"],
                    "instruction": rec["instruction"],
                    "context": rec["context"],
                    "response": rec["response"],
                    "prompt": prompt,
                    "text": text,
                    "input_ids": ids,
                    "prompt_len": prompt_len,
                    "seq_len": len(ids),
                }
            )
    pack_id, used = 0, 0
    for j, r in enumerate(rows):
        if j % eval_every == eval_every - 1:
            r["split"] = "eval"
            r["pack_id"] = 1_000_000 + j
            continue
        r["split"] = "train"
        if used and used + r["seq_len"] > max_seq_len:
            pack_id, used = pack_id + 1, 0
        r["pack_id"] = pack_id
        used += r["seq_len"]
    for r in rows:
        r["silver_version"] = 3
    return rows


GOLD_DDL = (
    "record_id string, category string, split string, instruction string, context string, response string, "
    "prompt string, text string, input_ids array<int>, prompt_len int, seq_len int, pack_id long, silver_version long"
)


def write_gold(spark, root: Path, rows: list[dict]) -> int:
    """Write ``rows`` as the gold table under ``root``; returns the Delta version."""
    cols = [c.split()[0] for c in GOLD_DDL.split(", ")]
    df = spark.createDataFrame([tuple(r[c] for c in cols) for r in rows], GOLD_DDL)
    return tables.write_table(spark, df, tables.TableNames(root=str(root)).gold)


def tiny_train_config(output_root: str, tokenizer: str):
    """Two CPU steps of the tiny model on one process: the train job of the end-to-end tests."""
    from dolly_spark.launch.config import TrainJobConfig

    return TrainJobConfig(
        output_root=output_root,
        base_model="tiny",
        max_steps=2,
        gpu_family="cpu",
        num_processes=1,
        launcher="torchrun",
        eval_steps=2,
        save_steps=100,
        max_seq_len=256,
        max_eval_records=4,
        tokenizer=tokenizer,
    )
