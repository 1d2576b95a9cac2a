"""Lazy training examples over the Arrow-backed shards equal ``build_examples`` over Python rows."""

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dolly_spark.train import data
from dolly_spark.train.lazy import lazy_examples
from tests.shared_data import DOLLY_JSONL, TOKENIZER_DIR
from tests.train_fixtures import gold_rows


@pytest.fixture(scope="module")
def rows():
    return gold_rows(DOLLY_JSONL, TOKENIZER_DIR, n=60, max_tokens=160, max_seq_len=400)


def edge_rows() -> list[dict]:
    """An oversized pack, a truncated record, a record without response tokens and one without a pack_id."""
    base = dict(category="open_qa", split="train", prompt_len=3)
    return [
        dict(base, record_id="a", input_ids=list(range(60)), seq_len=60, pack_id=1),
        dict(base, record_id="b", input_ids=list(range(60)), seq_len=60, pack_id=1),  # pack 1 > 100: split
        dict(base, record_id="c", input_ids=list(range(150)), seq_len=150, pack_id=2),  # truncated to 100
        dict(base, record_id="d", input_ids=[1, 2, 3], seq_len=3, pack_id=3, prompt_len=5),  # no response: dropped
        dict(base, record_id="e", input_ids=[4, 5, 6, 7], seq_len=4, pack_id=None),
    ]


def shards(tmp_path, rows, per_file: int) -> list[str]:
    cols = list(data.TRAIN_COLUMNS)
    files = []
    for k, start in enumerate(range(0, len(rows), per_file)):
        part = rows[start : start + per_file]
        path = tmp_path / f"part-{k:03d}.parquet"
        pq.write_table(pa.Table.from_pylist([{c: r[c] for c in cols} for r in part]), path)
        files.append(str(path))
    return files


@pytest.mark.parametrize("pack", [True, False])
@pytest.mark.parametrize("case", ["dolly", "edges"])
def test_lazy_examples_equal_build_examples(tmp_path, rows, pack, case):
    source = [r for r in rows if r["split"] == "train"] if case == "dolly" else edge_rows()
    max_seq_len = 400 if case == "dolly" else 100
    files = shards(tmp_path, list(reversed(source)), per_file=7)  # file order is not the plan's order
    ds = data.load_shards(files, str(tmp_path / "cache"))
    lazy, lazy_stats = lazy_examples(ds, pack, max_seq_len)
    eager, eager_stats = data.build_examples(source, pack, max_seq_len)
    assert lazy_stats.as_dict() == eager_stats.as_dict()
    assert len(lazy) == len(eager)
    assert [dict(lazy[i]) for i in range(len(lazy))] == [dict(e, sample_index=i) for i, e in enumerate(eager)]
    assert lazy.lengths == [len(e["input_ids"]) for e in eager]  # what the length-grouped sampler sorts by
    if case == "edges":
        assert eager_stats.split_packs == int(pack) and eager_stats.truncated_records == 1
        assert eager_stats.dropped["no_response_tokens"] == 1


def test_lazy_examples_keep_the_arrow_table_not_python_rows(tmp_path, rows):
    ds = data.load_shards(shards(tmp_path, rows, per_file=20), str(tmp_path / "cache"))
    lazy, _ = lazy_examples(ds, True, 400)
    assert isinstance(lazy.ds, datasets.Dataset) and lazy.ds.cache_files, "backed by memory-mapped Arrow files"
    batch = data.PackedCollator(pad_token_id=0)([lazy[0], lazy[1]])
    assert batch["input_ids"].shape[0] == 2 and batch["sample_index"].tolist() == [0, 1]


def eager_eval_sets(rows, max_seq_len, max_per_category=None) -> dict:
    """The eval sets from Python rows (what the worker built before ``lazy_eval_sets``)."""
    by_cat: dict[str, list[dict]] = {}
    for r in rows:
        by_cat.setdefault(r["category"], []).append(r)
    out = {}
    for cat in sorted(by_cat):
        cat_rows = sorted(by_cat[cat], key=lambda r: r["record_id"])[: max_per_category or None]
        examples, _ = data.build_examples(cat_rows, pack=False, max_seq_len=max_seq_len)
        if examples:
            out[cat] = data.to_dataset(examples)
    return out


@pytest.mark.parametrize("cap", [None, 2])
def test_lazy_eval_sets_equal_the_eager_ones(tmp_path, rows, cap):
    from dolly_spark.train.lazy import lazy_eval_sets

    source = [dict(r, category=("a", "b", "c")[i % 3]) for i, r in enumerate(rows)]
    files = shards(tmp_path, list(reversed(source)), per_file=9)
    lazy = lazy_eval_sets(data.load_shards(files, str(tmp_path / "cache")), 400, cap)
    eager = eager_eval_sets(source, 400, cap)
    assert sorted(lazy) == sorted(eager) == ["a", "b", "c"]
    for cat in eager:
        assert [dict(lazy[cat][i]) for i in range(len(lazy[cat]))] == eager[cat].to_list()
    assert data.label_token_counts(lazy) == data.label_token_counts(eager) and all(
        data.label_token_counts(lazy).values()
    )
    if cap:
        assert {len(v) for v in lazy.values()} == {cap}
