"""Gold shards -> training examples -> padded batches.

Completion-only loss: labels are -100 over each record's prompt, taken from the stored
``prompt_len`` (no token search). Packing follows gold's plan: records sharing a ``pack_id``
become one row; ``position_ids`` restart at 0 for every record and ``packed_attention_mask``
turns them into an explicit block-diagonal causal mask (no attention across records, on every
supported transformers release), and the first token of every
record is unlabelled, so no record is trained to predict the next one.
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any, Iterable

log = logging.getLogger(__name__)

IGNORE_INDEX = -100
TRAIN_COLUMNS = ("record_id", "category", "split", "input_ids", "prompt_len", "seq_len", "pack_id")


@dataclass
class BuildStats:
    records_in: int = 0
    examples_out: int = 0
    truncated_records: int = 0
    split_packs: int = 0  # packs longer than max_seq_len, split greedily
    dropped: Counter = field(default_factory=Counter)  # reason -> records

    def as_dict(self) -> dict[str, Any]:
        return {
            "records_in": self.records_in,
            "examples_out": self.examples_out,
            "truncated_records": self.truncated_records,
            "split_packs": self.split_packs,
            "dropped": dict(self.dropped),
        }


def load_shards(files: list[str], cache_dir: str | None = None):
    """Parquet shards written by the driver, loaded with ``datasets``."""
    import datasets

    return datasets.load_dataset("parquet", data_files=list(files), split="train", cache_dir=cache_dir)


def record_labels(input_ids: list[int], prompt_len: int) -> list[int]:
    """Labels for one record: -100 up to ``prompt_len`` (and always on the first token)."""
    cut = max(1, min(int(prompt_len), len(input_ids)))
    return [IGNORE_INDEX] * cut + list(input_ids[cut:])


def _group_rows(rows: list[dict], pack: bool) -> list[list[dict]]:
    # A row without a pack_id (gold should have none) trains alone rather than being dropped.
    def key(r):
        return (0, int(r["pack_id"]), "") if r.get("pack_id") is not None else (1, 0, r["record_id"])

    rows = sorted(rows, key=lambda r: (key(r) if pack else (0, 0, ""), r["record_id"]))
    if not pack:
        return [[r] for r in rows]
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        groups[key(r)].append(r)
    return [groups[k] for k in sorted(groups)]


def _fit_to_length(group: list[dict], max_seq_len: int, stats: BuildStats) -> list[list[dict]]:
    """Split a pack whose total length exceeds ``max_seq_len`` (gold should not produce one)."""
    out: list[list[dict]] = [[]]
    used = 0
    for r in group:
        n = len(r["input_ids"])
        if out[-1] and used + n > max_seq_len:
            out.append([])
            used = 0
        out[-1].append(r)
        used += n
    if len(out) > 1:
        stats.split_packs += 1
    return out


def build_examples(rows: Iterable[dict], pack: bool, max_seq_len: int) -> tuple[list[dict], BuildStats]:
    """Rows of gold (dicts with TRAIN_COLUMNS) -> one example per packed row.

    An example holds the concatenated ``input_ids``, ``labels``, per-record ``position_ids``
    and the ``record_ids`` it contains (for data-order checks).
    """
    stats = BuildStats()
    rows = list(rows)
    stats.records_in = len(rows)
    examples: list[dict] = []
    for group in _group_rows(rows, pack):
        for part in _fit_to_length(group, max_seq_len, stats):
            example = build_example(part, max_seq_len, stats)
            if example is not None:
                examples.append(example)
    stats.examples_out = len(examples)
    for reason, n in stats.dropped.items():
        log.warning("dropped %d records: %s", n, reason)
    return examples, stats


def build_example(part: list[dict], max_seq_len: int, stats: BuildStats) -> dict | None:
    """One packed row from the records of ``part`` (None when none has a response token)."""
    ids: list[int] = []
    labels: list[int] = []
    pos: list[int] = []
    record_ids: list[str] = []
    for r in part:
        rec = list(r["input_ids"])
        if len(rec) > max_seq_len:
            rec = rec[:max_seq_len]
            stats.truncated_records += 1
        lab = record_labels(rec, r["prompt_len"])
        if all(t == IGNORE_INDEX for t in lab):
            stats.dropped["no_response_tokens"] += 1
            continue
        ids += rec
        labels += lab
        pos += list(range(len(rec)))
        record_ids.append(r["record_id"])
    if not record_ids:
        return None
    return {
        "input_ids": ids,
        "labels": labels,
        "position_ids": pos,
        "record_ids": record_ids,
        "category": part[0]["category"],
    }


def to_dataset(examples: list[dict]):
    import datasets

    indexed = [dict(e, sample_index=i) for i, e in enumerate(examples)]
    return datasets.Dataset.from_list(indexed)


def label_token_counts(datasets_by_cat: dict) -> dict[str, int]:
    """Label tokens per category; each set is a ``datasets.Dataset`` or ``lazy.LazyExamples``."""
    return {
        cat: sum(sum(1 for t in ds[i]["labels"] if t != IGNORE_INDEX) for i in range(len(ds)))
        for cat, ds in datasets_by_cat.items()
    }


class PackedCollator:
    """Right-pads examples into a batch.

    Padding gets label -100 and its own position run starting at 0, so it forms a separate
    (ignored) segment and never joins the last record's attention block.
    """

    def __init__(self, pad_token_id: int):
        self.pad_token_id = int(pad_token_id)

    def __call__(self, features: list[dict]) -> dict:
        import torch

        width = max(len(f["input_ids"]) for f in features)
        ids, labels, pos, real = [], [], [], []
        for f in features:
            n = len(f["input_ids"])
            pad = width - n
            ids.append(list(f["input_ids"]) + [self.pad_token_id] * pad)
            labels.append(list(f["labels"]) + [IGNORE_INDEX] * pad)
            pos.append(list(f["position_ids"]) + list(range(pad)))
            real.append(n)
        batch = {
            "input_ids": torch.tensor(ids, dtype=torch.long),
            "labels": torch.tensor(labels, dtype=torch.long),
            "position_ids": torch.tensor(pos, dtype=torch.long),
            "num_real_tokens": torch.tensor(real, dtype=torch.long),
        }
        if "sample_index" in features[0]:
            batch["sample_index"] = torch.tensor([int(f["sample_index"]) for f in features], dtype=torch.long)
        return batch


# Keys the collator adds for bookkeeping; popped before the model's forward.
BOOKKEEPING_KEYS = ("num_real_tokens", "sample_index")


def packed_attention_mask(position_ids, dtype):
    """Block-diagonal causal mask, shape (batch, 1, L, L), additive (0 = attend, dtype min =
    blocked): a token sees only earlier tokens of its own record, a record starting wherever
    ``position_ids`` restarts at 0.

    Restarting ``position_ids`` alone isolates records only where transformers infers the blocks
    from them (4.57+); an explicit 4-D mask is honoured as given on every supported release, so
    packed training is exact on each runtime row."""
    import torch

    segment = torch.cumsum((position_ids == 0).long(), dim=-1)
    same_record = segment[:, :, None] == segment[:, None, :]
    width = position_ids.shape[-1]
    causal = torch.ones(width, width, dtype=torch.bool, device=position_ids.device).tril()
    mask = torch.zeros(same_record.shape, dtype=dtype, device=position_ids.device)
    mask.masked_fill_(~(same_record & causal), torch.finfo(dtype).min)
    return mask[:, None]
