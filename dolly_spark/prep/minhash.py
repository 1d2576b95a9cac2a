"""MinHash LSH arithmetic in numpy, no Spark: band/row choice, shingle hashes, signatures, bands.

``dolly_spark.prep.dedup`` wraps these in pandas UDFs; keeping them pure makes them testable
against brute-force Jaccard and reusable by the benchmarks' single-process baseline.
"""

from __future__ import annotations

import functools
import itertools

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

_MASK32 = np.uint64(0xFFFFFFFF)


# Shingles hashed per numpy chunk: a (shingles x num_perm) uint64 block of ~1 MB stays in L2
# (4096, a 4 MB block, ran 2.8x slower on 15k records).
_SIGNATURE_CHUNK = 1024


def _integrate(f, lo: float, hi: float, n: int = 2000) -> float:
    """Composite Simpson's rule (n even); the integrands are smooth polynomials on [0, 1]."""
    if hi <= lo:
        return 0.0
    x = np.linspace(lo, hi, n + 1)
    y = f(x)
    h = (hi - lo) / n
    return float(h / 3 * (y[0] + y[-1] + 4 * y[1:-1:2].sum() + 2 * y[2:-1:2].sum()))


def false_positive_probability(threshold: float, bands: int, rows: int) -> float:
    """Area under P(candidate | s) for s below the threshold."""
    return _integrate(lambda s: 1 - (1 - s**rows) ** bands, 0.0, threshold)


def false_negative_probability(threshold: float, bands: int, rows: int) -> float:
    """Area under P(not candidate | s) for s above the threshold."""
    return _integrate(lambda s: (1 - s**rows) ** bands, threshold, 1.0)


@functools.lru_cache(maxsize=64)
def optimal_bands_rows(
    threshold: float, num_perm: int, fp_weight: float = 0.5, fn_weight: float = 0.5
) -> tuple[int, int]:
    """(bands, rows) with bands * rows <= num_perm minimising the weighted FP + FN areas.

    The datasketch ``_optimal_param`` search: every (b, r), first minimum wins on ties.
    """
    best, best_err = (1, 1), float("inf")
    for b in range(1, num_perm + 1):
        for r in range(1, num_perm // b + 1):
            err = fp_weight * false_positive_probability(threshold, b, r) + fn_weight * false_negative_probability(
                threshold, b, r
            )
            if err < best_err:
                best, best_err = (b, r), err
    return best


def collision_probability(s: float, bands: int, rows: int) -> float:
    """P(a pair of Jaccard ``s`` shares at least one of ``bands`` buckets of ``rows`` values)."""
    return 1.0 - (1.0 - s**rows) ** bands


@functools.lru_cache(maxsize=64)
def bands_rows_for_recall(threshold: float, num_perm: int, recall: float) -> tuple[int, int]:
    """(bands, rows): the most rows per band (fewest chance candidates) with bands = num_perm // rows
    such that a pair at Jaccard ``threshold`` collides with probability at least ``recall``."""
    for r in range(num_perm, 0, -1):
        b = num_perm // r
        if collision_probability(threshold, b, r) >= recall:
            return b, r
    raise ValueError(f"no bands x rows within {num_perm} permutations reach recall {recall} at {threshold}")


_GRAM_COEF = np.random.default_rng(0x5EED).integers(1, 1 << 63, size=64, dtype=np.uint64) | np.uint64(1)


def mix64(h: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser, in place: spreads a linear combination over all 64 bits."""
    with np.errstate(over="ignore"):
        h ^= h >> np.uint64(30)
        h *= np.uint64(0xBF58476D1CE4E5B9)
        h ^= h >> np.uint64(27)
        h *= np.uint64(0x94D049BB133111EB)
        h ^= h >> np.uint64(31)
    return h


def word_hashes(texts) -> tuple[np.ndarray, np.ndarray]:
    """Units per text (split on " "; None is "") and each unit's hash, row after row.

    Split and deduplicated in Arrow's kernels; only the distinct words are hashed (pandas' SipHash,
    the same values as hashing every word): no Python string per word.
    """
    arr = texts if isinstance(texts, pa.Array | pa.ChunkedArray) else pa.array(texts, pa.string())
    words = pc.split_pattern(pc.fill_null(arr, ""), " ")
    if isinstance(words, pa.ChunkedArray):
        words = words.combine_chunks()
    lens = pc.list_value_length(words).to_numpy(zero_copy_only=False).astype(np.int64)
    return lens, string_hashes(words.flatten())


def string_hashes(strings: pa.Array) -> np.ndarray:
    """pandas' SipHash of each string, computed on the distinct strings only (Arrow's
    ``dictionary_encode``): the same values as hashing every one."""
    coded = pc.dictionary_encode(strings)
    distinct = pd.util.hash_array(coded.dictionary.to_numpy(zero_copy_only=False), categorize=False)
    return distinct[coded.indices.to_numpy(zero_copy_only=False)].astype(np.uint64)


def char_hashes(texts) -> tuple[np.ndarray, np.ndarray]:
    """Units per text (its characters; "" for an empty or None text) and each unit's hash."""
    texts = texts.to_pylist() if isinstance(texts, pa.Array | pa.ChunkedArray) else texts
    units = [list(t or "") or [""] for t in texts]
    lens = np.fromiter((len(u) for u in units), dtype=np.int64, count=len(units))
    flat = np.fromiter(itertools.chain.from_iterable(units), dtype=object, count=int(lens.sum()))
    return lens, pd.util.hash_array(flat, categorize=True)


def shingle_hashes(texts, kind: str, k: int) -> list[np.ndarray]:
    """Per text, the sorted distinct 64-bit hashes of its word (split on " ") or character
    n-grams; a text shorter than one n-gram is a single shingle (itself). Never empty.

    Each unit (word or character) is hashed once for the whole batch (pandas' keyed SipHash:
    stable across runs and machines); an n-gram's hash is a position-weighted sum of its
    units' hashes, mixed. Vectorised numpy (and one in-place sort per row): no per-n-gram Python strings.
    """
    if k > len(_GRAM_COEF):
        raise ValueError(f"ngram must be at most {len(_GRAM_COEF)}")
    n = len(texts)
    lens, unit_hash = word_hashes(texts) if kind == "word" else char_hashes(texts)
    row_start = np.cumsum(lens) - lens
    grams_per_row = np.maximum(lens - k + 1, 1)
    gram_row = np.repeat(np.arange(n), grams_per_row)
    first_gram = np.cumsum(grams_per_row) - grams_per_row
    gram_start = row_start[gram_row] + np.arange(len(gram_row)) - first_gram[gram_row]
    gram_len = np.minimum(lens, k)[gram_row]
    acc = np.zeros(len(gram_row), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(k):
            m = gram_len > j
            acc[m] += unit_hash[gram_start[m] + j] * _GRAM_COEF[j]
    return distinct_per_row(mix64(acc).view(np.int64), gram_row, grams_per_row, n)


def distinct_per_row(values: np.ndarray, row: np.ndarray, per_row: np.ndarray, n: int) -> list[np.ndarray]:
    """The sorted distinct ``values`` of each of ``n`` rows; ``row`` holds each value's row, in
    contiguous runs of ``per_row`` values. Sorts ``values`` in place."""
    if n == 0:
        return []  # np.split would return one empty piece
    # Rows are contiguous: sorting each row's slice in place is ~10x faster than one lexsort.
    ends = np.cumsum(per_row)
    for lo, hi in zip((ends - per_row).tolist(), ends.tolist()):
        values[lo:hi].sort()
    first = np.ones(len(values), dtype=bool)
    first[1:] = (values[1:] != values[:-1]) | (row[1:] != row[:-1])
    values, row = values[first], row[first]
    return np.split(values, np.cumsum(np.bincount(row, minlength=n))[:-1])


def permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Parameters of the multiply-add-shift hashes h(x) = ((a x + b) mod 2^64) >> 32, x < 2^32.

    A strongly universal family (Dietzfelbinger) that numpy evaluates with one multiply, one
    add and one shift per value: no modulo, and uint64 wrap-around is the intended mod 2^64.
    """
    rng = np.random.default_rng(seed)
    a = rng.integers(1, np.iinfo(np.uint64).max, size=num_perm, dtype=np.uint64, endpoint=True) | np.uint64(1)
    b = rng.integers(0, np.iinfo(np.uint64).max, size=num_perm, dtype=np.uint64, endpoint=True)
    return a, b


def minhash_signatures(shingle_sets: list[np.ndarray], a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(rows, num_perm) uint32 minimum of each hash function over each row's shingles.

    Vectorised over all shingles of a chunk of rows at once; an empty set gives all 2^32-1.
    """
    n, p = len(shingle_sets), len(a)
    out = np.full((n, p), 0xFFFFFFFF, dtype=np.uint32)
    lengths = np.fromiter((len(s) for s in shingle_sets), dtype=np.int64, count=n)
    nonempty = np.flatnonzero(lengths)
    if len(nonempty) == 0:
        return out
    flat = np.concatenate([np.asarray(shingle_sets[i], dtype=np.int64) for i in nonempty]).view(np.uint64) & _MASK32
    lens = lengths[nonempty]
    ends = np.cumsum(lens)
    starts = ends - lens
    # One buffer for every chunk (a chunk is longer only when one row alone is).
    buf = np.empty((max(_SIGNATURE_CHUNK, int(lens.max())), p), dtype=np.uint64)
    i = 0
    with np.errstate(over="ignore"):
        while i < len(nonempty):
            # rows i..j-1: as many as fit in one chunk, at least one
            j = max(i + 1, int(np.searchsorted(ends, starts[i] + _SIGNATURE_CHUNK, side="right")))
            lo, hi = starts[i], ends[j - 1]
            hashed = np.multiply(flat[lo:hi, None], a, out=buf[: hi - lo])
            hashed += b
            # the shift is monotone, so it commutes with the minimum: shift p values per row, not all
            mins = np.minimum.reduceat(hashed, starts[i:j] - lo, axis=0)
            mins >>= np.uint64(32)
            out[nonempty[i:j]] = mins
            i = j
    return out


def rminhash_signatures(shingle_sets: list[np.ndarray], num_perm: int, seed: int) -> np.ndarray:
    """(rows, num_perm) uint32 R-MinHash signatures (``rensa``, Rust) of each row's shingle hashes.

    Each slot of two rows agrees with probability their Jaccard, as with ``minhash_signatures``
    (measured in the tests); 3.4x faster than it on 150k records (benchmarks/README.md).
    """
    n = len(shingle_sets)
    if n == 0:
        return np.zeros((0, num_perm), dtype=np.uint32)
    offsets = np.zeros(n + 1, dtype=np.uint64)
    np.cumsum(np.fromiter((len(s) for s in shingle_sets), dtype=np.int64, count=n), out=offsets[1:])
    flat = np.concatenate(shingle_sets).astype(np.int64, copy=False).view(np.uint64)
    matrix = _rensa().RMinHash.digest_matrix_from_flat_token_hashes(flat, offsets, num_perm, seed)
    return np.array(matrix.to_rows(), dtype=np.uint32).reshape(n, num_perm)


@functools.cache
def _rensa():
    """rensa, checked for the flat-buffer API this module calls (0.5 and newer)."""
    try:
        import rensa
    except ImportError as err:
        raise ImportError("near-duplicate detection needs rensa (pip install 'rensa>=0.5,<0.6')") from err
    if not hasattr(rensa.RMinHash, "digest_matrix_from_flat_token_hashes"):
        raise ImportError("rensa has no RMinHash.digest_matrix_from_flat_token_hashes: install 'rensa>=0.5,<0.6'")
    return rensa


_BAND_SEED = 0x9E3779B97F4A7C15


def band_hashes(signatures: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """(n, bands) int64: a 64-bit hash of each band's ``rows`` values (a random linear
    combination mod 2^64, then the splitmix64 finaliser to spread the bits)."""
    n = signatures.shape[0]
    coef = np.random.default_rng(_BAND_SEED).integers(1, 1 << 63, size=rows, dtype=np.uint64) | np.uint64(1)
    values = signatures[:, : bands * rows].astype(np.uint32).astype(np.uint64).reshape(n, bands, rows)
    with np.errstate(over="ignore"):
        h = (values * coef).sum(axis=2, dtype=np.uint64)
    return mix64(h).view(np.int64)
