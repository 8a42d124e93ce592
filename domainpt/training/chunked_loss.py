"""Causal-LM cross-entropy without materialising the whole (tokens x vocabulary) logit matrix.

A Hugging Face causal LM computes fp32 logits for every position before its loss: for 16k tokens and
a 49k vocabulary that is 3 GiB, and its gradient as much again. With `train.loss_chunk_tokens: N`, the
model's output head returns the final hidden states instead, and the loss is computed N tokens at a
time; each chunk's logits are recomputed in the backward pass (activation checkpointing), so only one
chunk's logits exist at any moment. The mean over predicted tokens is the same as the model's own
loss (labels shifted by one, -100 ignored) to float tolerance — tested.

Not with: FSDP / DeepSpeed ZeRO-3 (the head's weight is used outside the model's forward, where it is
not gathered), torch.compile (the head is swapped at run time), models that transform their logits
(soft-capping, scaling) — each refused in one line.
"""
from __future__ import annotations

import contextlib

import torch
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

from domainpt.errors import DomainptError

LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")


def check_supported(model, distributed_type: str, zero_stage: int | None, compiled: bool) -> None:
    """One-line errors for the setups the chunked loss cannot serve."""
    if compiled:
        raise DomainptError("train.loss_chunk_tokens with train.compile is not supported yet; choose one")
    if distributed_type == "FSDP" or zero_stage == 3:
        raise DomainptError("train.loss_chunk_tokens needs the output head's full weight outside the forward pass: "
                            "not available under FSDP or DeepSpeed ZeRO-3 (use DDP or ZeRO-1/2)")
    config = model.config
    for key in LOGIT_TRANSFORMS:
        value = getattr(config, key, None)
        if value not in (None, 1, 1.0):
            raise DomainptError(f"train.loss_chunk_tokens: {config.model_type} transforms its logits ({key}={value}); "
                                f"the chunked loss would not match the model's, set train.loss_chunk_tokens=0")
    if model.get_output_embeddings() is None:
        raise DomainptError(f"train.loss_chunk_tokens: {config.model_type} has no output head to chunk")


@contextlib.contextmanager
def head_returns_hidden(model):
    """Inside: the output head is the identity, so the model's `logits` are its final hidden states."""
    head = model.get_output_embeddings()
    head.forward = lambda hidden: hidden  # instance attribute: shadows the class's forward
    try:
        yield head
    finally:
        del head.forward


def _chunk_nll_sum(hidden: torch.Tensor, weight: torch.Tensor, bias, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(F.linear(hidden, weight, bias).float(), targets, reduction="sum")


def chunked_lm_loss(hidden: torch.Tensor, head: torch.nn.Linear, labels: torch.Tensor, chunk_tokens: int) -> torch.Tensor:
    """Mean next-token cross-entropy: position t predicts labels[t + 1]; -100 labels are not predicted."""
    h = hidden[:, :-1].reshape(-1, hidden.size(-1))
    y = labels[:, 1:].reshape(-1)
    keep = y != -100
    h, y = h[keep], y[keep]
    total = hidden.new_zeros((), dtype=torch.float32)
    for i in range(0, y.numel(), chunk_tokens):
        total = total + checkpoint(_chunk_nll_sum, h[i:i + chunk_tokens], head.weight, head.bias, y[i:i + chunk_tokens],
                                   use_reentrant=False)
    return total / max(1, y.numel())
