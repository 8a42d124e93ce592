"""Scoring with a masked LM (BERT-style encoders): pseudo-log-likelihood, one masked token at a time.

An encoder has no left-to-right likelihood. Salazar et al. (2020, "Masked Language Model Scoring")
score a sequence by masking each token in turn and summing log p(token | every other token): the
pseudo-log-likelihood (PLL). domainpt uses it wherever a decoder is scored by likelihood:
held-out pseudo-perplexity and pseudo bits per byte, and choices after a prompt (zero-shot and
LoRA-tuned classification / multiple choice). Fine-tuning an encoder on a likelihood-scored task
trains the same quantity (finetune's `masked_answer_loss`), so what is trained is what is scored.

One forward pass per scored token: a window of W tokens costs W passes, not one. Batches are
length-sorted copies of a window that differ only in where the mask sits.
"""
from __future__ import annotations

import torch
from torch.nn import functional as F
from tqdm.auto import tqdm

from domainpt.encoding import answer_sequence, pad_right, special_ids

# One scoring item: (ids with [CLS]/[SEP], position to mask and score).
Item = tuple[list[int], int]


def masked_batch(items: list[Item], mask_id: int, pad_id: int) -> dict:
    """Right-padded ids with each item's position replaced by [MASK]; the targets are the original ids."""
    ids, attn = pad_right([seq for seq, _ in items], pad_id)
    pos = torch.tensor([p for _, p in items])
    rows = torch.arange(len(items))
    targets = ids[rows, pos].clone()
    ids[rows, pos] = mask_id
    return {"input_ids": ids, "attention_mask": attn, "positions": pos, "targets": targets}


def masked_logprobs(model, batch: dict, device) -> torch.Tensor:
    """log p(target | sequence with the target masked), one value per item (keeps the graph for training)."""
    ids, attn = batch["input_ids"].to(device), batch["attention_mask"].to(device)
    logits = model(input_ids=ids, attention_mask=attn).logits
    rows = torch.arange(ids.size(0), device=device)
    picked = logits[rows, batch["positions"].to(device)].float()  # only the masked position's row of the vocabulary
    return F.log_softmax(picked, -1).gather(1, batch["targets"].to(device)[:, None])[:, 0]


@torch.no_grad()
def score_items(model, items: list[Item], mask_id: int, pad_id: int, batch_size: int, desc: str = "pseudo-ll") -> list[float]:
    """log-probabilities of every item, in the items' order; batches of similar lengths."""
    model.eval()
    device = next(model.parameters()).device
    order = sorted(range(len(items)), key=lambda i: -len(items[i][0]))
    out = [0.0] * len(items)
    for b in tqdm(range(0, len(order), batch_size), desc=desc, unit="batch", leave=False):
        idx = order[b:b + batch_size]
        lp = masked_logprobs(model, masked_batch([items[i] for i in idx], mask_id, pad_id), device).tolist()
        for i, v in zip(idx, lp):
            out[i] = v
    return out


def pll_windows(ids: list[int], window: int, stride: int, cls: int, sep: int) -> list[Item]:
    """Items scoring each token of a document once: windows of `window` tokens ([CLS] and [SEP] included),
    `stride` apart; a token is scored in the first window that holds it, with that window as context."""
    content = window - 2
    items, prev_end = [], 0
    for begin in range(0, max(1, len(ids)), min(stride, content)):
        end = min(begin + content, len(ids))
        seq = [cls] + ids[begin:end] + [sep]
        items += [(seq, 1 + j - begin) for j in range(max(prev_end, begin), end)]
        prev_end = end
        if end == len(ids):
            break
    return items


def answer_items(prompt: list[int], answer: list[int], cls: int, sep: int) -> list[Item]:
    """answer_sequence(), once per answer token (that token masked)."""
    seq = answer_sequence(prompt, answer, cls, sep)
    return [(seq, 1 + len(prompt) + j) for j in range(len(answer))]


def masked_choice_logliks(model, tokenizer, prompts: list[list[int]], choices: list[list[list[int]]], batch_size: int,
                          desc: str) -> list[list[float]]:
    """Pseudo-log-likelihood of each choice after its prompt (prompt and choices without special tokens)."""
    cls, sep, mask = special_ids(tokenizer)
    items, owner = [], []
    for b, (p, cs) in enumerate(zip(prompts, choices)):
        for c, toks in enumerate(cs):
            new = answer_items(p, toks, cls, sep)
            items += new
            owner += [(b, c)] * len(new)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else sep
    lps = score_items(model, items, mask, pad, batch_size, desc=desc)
    out = [[0.0] * len(cs) for cs in choices]
    for (b, c), lp in zip(owner, lps):
        out[b][c] += lp
    return out
