"""The data side of the pre-training loop: the order blocks are read in, how a batch is put together, and which
parameters get weight decay."""
from __future__ import annotations

import numpy as np
import torch

from domainpt.training.attention import flatten_rows


class EpochSampler(torch.utils.data.Sampler):
    """Block indices: a seeded permutation per epoch, concatenated, cut to `length`. Lazy, so the
    margin kept for rollbacks costs no memory."""

    def __init__(self, n_blocks: int, length: int, seed: int):
        self.n_blocks, self.length, self.seed = n_blocks, length, seed

    def __len__(self) -> int:
        return self.length

    def __iter__(self):
        given, epoch = 0, 0
        while given < self.length:
            for i in np.random.default_rng(self.seed + epoch).permutation(self.n_blocks)[:self.length - given].tolist():
                yield i
                given += 1
            epoch += 1


def param_groups(model, weight_decay: float) -> list[dict]:
    """AdamW groups: no decay on biases and norm weights (1-D parameters)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_collate(objective: str, tokenizer, doc_isolation: bool, whole_word_mask: bool = False, flatten: bool = False):
    if objective == "mlm" and whole_word_mask:
        from domainpt.training.masking import WholeWordMasker

        return WholeWordMasker(tokenizer)
    if objective == "mlm":
        from transformers import DataCollatorForLanguageModeling

        mlm = DataCollatorForLanguageModeling(tokenizer, mlm=True, mlm_probability=0.15)
        return lambda items: mlm([{"input_ids": it["input_ids"].tolist()} for it in items])

    def collate(items):
        ids = torch.from_numpy(np.stack([it["input_ids"] for it in items]))
        batch = {"input_ids": ids, "labels": ids.clone()}
        if doc_isolation:
            pos = torch.from_numpy(np.stack([it["position_ids"] for it in items]))
            batch["position_ids"] = pos
            # A document's first token is not predicted from the previous document (its end-of-text):
            # the packed loss is then exactly the mean over documents run one by one.
            batch["labels"][pos == 0] = -100
        return flatten_rows(batch, doc_isolation) if flatten else batch

    return collate
