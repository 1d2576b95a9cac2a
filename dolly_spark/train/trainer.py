"""``DollyTrainer``: the HF Trainer with the collator's bookkeeping and packed rows' masks handled."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, SequentialSampler
from transformers import Trainer

from dolly_spark.train.callbacks import StepLog
from dolly_spark.train.data import BOOKKEEPING_KEYS, packed_attention_mask


class DollyTrainer(Trainer):
    """Pops the collator's bookkeeping keys before the model sees the batch, and gives it the
    packed rows' block-diagonal mask (exact isolation of packed records on every release)."""

    def __init__(self, *args, step_log: StepLog, sequential_train_order: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.step_log = step_log
        self.sequential_train_order = sequential_train_order

    def get_train_dataloader(self):
        """Releases without ``train_sampling_strategy`` always shuffle: when the dataset already
        holds the epoch's order (length-grouped), read it in order, through the same accelerator."""
        if not self.sequential_train_order:
            return super().get_train_dataloader()
        loader = DataLoader(
            self.train_dataset,
            batch_size=self.args.train_batch_size,
            sampler=SequentialSampler(self.train_dataset),
            collate_fn=self.data_collator,
            num_workers=self.args.dataloader_num_workers,
            drop_last=self.args.dataloader_drop_last,
        )
        return self.accelerator.prepare(loader)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        extra = {k: inputs.pop(k, None) for k in BOOKKEEPING_KEYS}
        if model.training:
            self.step_log.add(extra["num_real_tokens"], extra["sample_index"])
        if "position_ids" in inputs and "attention_mask" not in inputs:
            inputs["attention_mask"] = packed_attention_mask(inputs["position_ids"], self._mask_dtype())
        return super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)

    def _mask_dtype(self):
        return torch.bfloat16 if self.args.bf16 else torch.float16 if self.args.fp16 else torch.float32
