"""Held-out perplexity and bits per byte with a sliding window.

Every token of every document is scored once, with up to `window` tokens of context (the first one
after the end-of-text separator). Bits per byte = total NLL / (ln 2 * UTF-8 bytes): comparable across
tokenizers, unlike perplexity.
"""
from __future__ import annotations

import math

import torch
from torch.nn import functional as F


def windows_for(ids: list[int], window: int, stride: int, bos: int) -> list[tuple[list[int], int]]:
    """(input ids, number of trailing positions to score) for one document; `bos` gives the first token context."""
    seq = [bos] + ids
    out, prev_end = [], 1  # position 0 (bos) is context only
    for begin in range(0, len(seq) - 1, stride):
        end = min(begin + window + 1, len(seq))  # window predictions need window+1 tokens
        n_new = end - max(prev_end, begin + 1)
        if n_new > 0:
            out.append((seq[begin:end], n_new))
        prev_end = end
        if end == len(seq):
            break
    return out


@torch.no_grad()
def score_windows(model, windows, batch_size: int, device, pad_id: int = 0) -> tuple[float, int]:
    """Sum of NLL (nats) over the scored positions, and their count. Batches are length-sorted."""
    model.eval()
    order = sorted(range(len(windows)), key=lambda i: len(windows[i][0]))
    total, count = 0.0, 0
    for b in range(0, len(order), batch_size):
        batch = [windows[i] for i in order[b:b + batch_size]]
        L = max(len(w) for w, _ in batch)
        ids = torch.full((len(batch), L), pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), L), dtype=torch.long)
        score = torch.zeros((len(batch), L - 1), dtype=torch.bool)
        for r, (w, n_new) in enumerate(batch):
            ids[r, :len(w)] = torch.tensor(w)
            mask[r, :len(w)] = 1
            score[r, len(w) - 1 - n_new:len(w) - 1] = True
        ids, mask, score = ids.to(device), mask.to(device), score.to(device)
        logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, :-1].float()
        nll = F.cross_entropy(logits.reshape(-1, logits.size(-1)), ids[:, 1:].reshape(-1), reduction="none")
        total += nll.view(len(batch), -1)[score].sum().item()
        count += int(score.sum().item())
    return total, count


def perplexity(model, tokenizer, texts: list[str], window: int, stride: int, max_tokens: int, batch_size: int,
               bos: int, device=None) -> dict:
    """{'ppl', 'bpb', 'nll', 'tokens', 'bytes', 'documents'} on the texts (documents taken until max_tokens)."""
    device = device or next(model.parameters()).device
    windows, n_bytes, n_tokens, n_docs = [], 0, 0, 0
    for text in texts:
        if n_tokens >= max_tokens:
            break
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) > max_tokens - n_tokens:  # cut the last document at a token boundary; count its bytes exactly
            ids = ids[:max_tokens - n_tokens]
            text = tokenizer.decode(ids)
        windows += windows_for(ids, window, stride, bos)
        n_bytes += len(text.encode("utf-8"))
        n_tokens += len(ids)
        n_docs += 1
    nll, count = score_windows(model, windows, batch_size, device, pad_id=tokenizer.pad_token_id or 0)
    return {"ppl": math.exp(nll / count), "bpb": nll / (math.log(2) * n_bytes), "nll": nll,
            "tokens": count, "bytes": n_bytes, "documents": n_docs, "method": "causal"}


def heldout_perplexity(model, tokenizer, texts: list[str], objective: str, window: int, stride: int, max_tokens: int,
                       batch_size: int, bos: int, device=None) -> dict:
    """Perplexity for a causal LM, pseudo-perplexity for a masked LM ('method' says which)."""
    if objective == "mlm":
        from domainpt.eval.masked import pseudo_perplexity

        return pseudo_perplexity(model, tokenizer, texts, window, stride, max_tokens, batch_size, device)
    return perplexity(model, tokenizer, texts, window, stride, max_tokens, batch_size, bos, device)
