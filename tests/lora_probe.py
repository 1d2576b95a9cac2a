"""A ``--callbacks`` probe for the LoRA tests: hashes of the frozen and the trainable weights at the
start and the end of training, per rank, written to ``$DOLLY_LORA_PROBE/rank<N>.json``."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from transformers import TrainerCallback

PROBE_ENV = "DOLLY_LORA_PROBE"
PROBE_SPEC = "tests.lora_probe:WeightProbe"


def weight_hashes(model) -> dict:
    """SHA-256 over the bytes of the frozen and of the trainable parameters (ZeRO-2: whole on every rank)."""
    frozen, trainable, names, dtypes = hashlib.sha256(), hashlib.sha256(), [], set()
    for name, p in model.named_parameters():
        h = trainable if p.requires_grad else frozen
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
        if p.requires_grad:
            names.append(name)
        else:
            dtypes.add(str(p.dtype))
    return {
        "frozen": frozen.hexdigest(),
        "trainable": trainable.hexdigest(),
        "trainable_names": names,
        "frozen_dtypes": sorted(dtypes),
    }


class WeightProbe(TrainerCallback):
    def __init__(self):
        self.out = os.environ.get(PROBE_ENV)
        self.begin = None

    def on_train_begin(self, args, state, control, model=None, **kw):
        if self.out:
            self.begin = weight_hashes(model)

    def on_train_end(self, args, state, control, model=None, **kw):
        if self.out:
            rank = os.environ.get("RANK", "0")
            path = Path(self.out, f"rank{rank}.json")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({"begin": self.begin, "end": weight_hashes(model)}))
