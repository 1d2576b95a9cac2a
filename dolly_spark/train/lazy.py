"""Training and eval examples built on demand from the Arrow-backed shards, not held as Python lists.

``datasets`` memory-maps the Parquet shards' Arrow cache; the plan (which rows form each packed
example) reads only the small columns and the token-list lengths, and ``LazyExamples`` gathers an
example's rows and builds it when the Trainer asks for it. Same examples, same order and same
``BuildStats`` as ``data.build_examples`` over the same rows.
"""

from __future__ import annotations

import logging

from dolly_spark.train.data import BuildStats, build_example, record_labels

log = logging.getLogger(__name__)


def _keeps_a_response(length: int, prompt_len: int, max_seq_len: int) -> bool:
    n = min(int(length), max_seq_len)
    return any(t != -100 for t in record_labels([0] * n, prompt_len))


def plan_examples(ds, pack: bool, max_seq_len: int) -> tuple[list[list[int]], list[int], BuildStats]:
    """Row indices of each training example in ``build_examples``' order, each example's token count,
    and the stats."""
    import pyarrow.compute as pc

    table = ds.with_format("arrow")[:]  # a zero-copy view of the memory-mapped table
    rid = table.column("record_id").to_pylist()
    pid = table.column("pack_id").to_pylist() if pack else [None] * table.num_rows
    plen = table.column("prompt_len").to_pylist()
    length = pc.list_value_length(table.column("input_ids")).to_pylist()
    stats = BuildStats(records_in=table.num_rows)

    def key(i):  # as data._group_rows: a row without a pack_id trains alone
        if not pack:
            return (0, 0, "")
        return (0, int(pid[i]), "") if pid[i] is not None else (1, 0, rid[i])

    order = sorted(range(table.num_rows), key=lambda i: (key(i), rid[i]))
    groups: list[list[int]] = []
    last = object()
    for i in order:
        k = key(i)
        if not pack or k != last:
            groups.append([])
            last = k
        groups[-1].append(i)

    examples: list[list[int]] = []
    lengths: list[int] = []  # tokens of each example, for length-grouped batches and the pad fraction
    for group in groups:
        parts: list[list[int]] = [[]]
        used = 0
        for i in group:  # as data._fit_to_length
            if parts[-1] and used + length[i] > max_seq_len:
                parts.append([])
                used = 0
            parts[-1].append(i)
            used += length[i]
        stats.split_packs += len(parts) > 1
        for part in parts:
            tokens = 0
            for i in part:  # as data.build_example
                stats.truncated_records += length[i] > max_seq_len
                if _keeps_a_response(length[i], plen[i], max_seq_len):
                    tokens += min(length[i], max_seq_len)
                else:
                    stats.dropped["no_response_tokens"] += 1
            if tokens:
                examples.append(part)
                lengths.append(tokens)
    stats.examples_out = len(examples)
    for reason, n in stats.dropped.items():
        log.warning("dropped %d records: %s", n, reason)
    return examples, lengths, stats


class LazyExamples:
    """A map-style dataset of packed examples (with ``sample_index``), built when indexed."""

    def __init__(self, ds, plan: list[list[int]], lengths: list[int], max_seq_len: int):
        self.ds, self.plan, self.lengths, self.max_seq_len = ds, plan, lengths, max_seq_len

    def __len__(self) -> int:
        return len(self.plan)

    def __getitem__(self, i: int) -> dict:
        cols = self.ds[self.plan[i]]  # the rows, in plan order, as columns
        part = [dict(zip(cols, values)) for values in zip(*cols.values())]
        example = build_example(part, self.max_seq_len, BuildStats())
        return dict(example, sample_index=int(i))


def lazy_examples(ds, pack: bool, max_seq_len: int) -> tuple[LazyExamples, BuildStats]:
    plan, lengths, stats = plan_examples(ds, pack, max_seq_len)
    return LazyExamples(ds, plan, lengths, max_seq_len), stats


def lazy_eval_sets(ds, max_seq_len: int, max_per_category: int | None = None) -> dict[str, LazyExamples]:
    """One unpacked eval set per category from the memory-mapped eval shards, as
    unpacked examples of each category's records in ``record_id`` order, the first
    ``max_per_category`` kept, categories without an example left out."""
    table = ds.with_format("arrow")[:]
    by_cat: dict[str, list[tuple[str, int]]] = {}
    for i, (cat, rid) in enumerate(zip(table.column("category").to_pylist(), table.column("record_id").to_pylist())):
        by_cat.setdefault(cat, []).append((rid, i))
    out = {}
    for cat in sorted(by_cat):
        rows = [i for _, i in sorted(by_cat[cat])][: max_per_category or None]
        examples, _ = lazy_examples(ds.select(rows), pack=False, max_seq_len=max_seq_len)
        if len(examples):
            out[cat] = examples
    return out
