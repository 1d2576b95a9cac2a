"""Length-grouped record order: Dolly's records per step, with less padding than random batches.

Dolly draws random batches of single records and pads each to its longest record (about 64% of
the tokens of dolly-15k are then padding). Here the order is still random and still visits every
record once per epoch, but records of similar length share a micro-step:

1. a seeded permutation of the records (seed, epoch), as a random sampler would draw;
2. cut into megabatches of ``MEGABATCH_STEPS`` micro-steps, each sorted by ``seq_len``;
3. each megabatch cut into micro-steps of ``per_device_batch x world`` records (one batch per
   rank, so ranks get similar lengths and do not wait on each other), and the order of those
   micro-steps shuffled, so lengths are not trained longest-first.

The order is a pure function of (lengths, seed, epoch): a resumed run skips exactly the batches
it already trained. ``EpochOrder`` exposes it to the HF Trainer with public hooks only: a
sequential sampler over a dataset view whose ``set_epoch`` (called by accelerate each epoch)
picks the epoch's permutation.
"""

from __future__ import annotations

import random
from typing import Sequence

MEGABATCH_STEPS = 50  # as transformers' LengthGroupedSampler (50 batches per megabatch)


def grouped_order(lengths: Sequence[int], micro_step: int, seed: int, epoch: int = 0) -> list[int]:
    """Record indices for one epoch; every ``micro_step`` consecutive ones have similar lengths."""
    if micro_step < 1:
        raise ValueError("micro_step must be >= 1")
    rng = random.Random(f"{seed}:{epoch}")
    order = list(range(len(lengths)))
    rng.shuffle(order)
    mega = micro_step * MEGABATCH_STEPS
    out: list[int] = []
    for start in range(0, len(order), mega):
        block = sorted(order[start : start + mega], key=lambda i: (lengths[i], i))
        steps = [block[j : j + micro_step] for j in range(0, len(block), micro_step)]
        rng.shuffle(steps)
        out += [i for step in steps for i in step]
    return out


def random_order(n: int, seed: int, epoch: int = 0) -> list[int]:
    rng = random.Random(f"{seed}:{epoch}")
    order = list(range(n))
    rng.shuffle(order)
    return order


def pad_fraction(lengths: Sequence[int], order: Sequence[int], per_device_batch: int, world: int = 1) -> float:
    """Padding share of the tokens the model sees when each rank's batch is padded to its longest.

    Batches are dealt to ranks round-robin, as accelerate's ``BatchSamplerShard`` does; which rank
    gets a batch does not change its padding.
    """
    padded = real = 0
    for s in range(0, len(order), per_device_batch):
        batch = [lengths[i] for i in order[s : s + per_device_batch]]
        padded += max(batch) * len(batch)
        real += sum(batch)
    return 1.0 - real / padded if padded else 0.0


class EpochOrder:
    """A map-style dataset presenting ``base`` in ``grouped_order`` for the current epoch."""

    def __init__(self, base, lengths: Sequence[int], micro_step: int, seed: int):
        self.base, self.lengths, self.micro_step, self.seed = base, list(lengths), int(micro_step), int(seed)
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        self.order = grouped_order(self.lengths, self.micro_step, self.seed, self.epoch)

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, i: int):
        return self.base[self.order[i]]
