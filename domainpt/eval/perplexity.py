"""Held-out perplexity and bits per byte with a sliding window.

Every token of every document is scored once, with up to `window` tokens of context (the first one
after the end-of-text separator). Bits per byte = total NLL / (ln 2 * UTF-8 bytes): comparable across
tokenizers, unlike perplexity. A masked LM gets pseudo-perplexity (pseudo_perplexity, from eval/masked.py's scoring).
"""
from __future__ import annotations

import itertools
import math

import torch
from torch.nn import functional as F

from domainpt.encoding import pad_left, special_ids
from domainpt.eval.masked import pll_windows, score_items


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
def score_windows(model, windows, batch_size: int, device, pad_id: int = 0) -> list[float]:
    """Sum of NLL (nats) over each window's scored positions, in the windows' order.

    Windows are batched by how many positions they score, then by length, and left-padded, so that every row's
    scored positions are its last ones: the LM head (a vocabulary-sized projection) runs on those positions only,
    and with stride < window the context-only positions cost it nothing."""
    model.eval()
    order = sorted(range(len(windows)), key=lambda i: (windows[i][1], len(windows[i][0])))
    nll_of = [0.0] * len(windows)
    for b in range(0, len(order), batch_size):
        idx = order[b:b + batch_size]
        batch = [windows[i] for i in idx]
        ids, mask, pos = (t.to(device) for t in pad_left([w for w, _ in batch], pad_id))
        n_new = torch.tensor([k for _, k in batch], device=device)  # positions each row scores
        n = int(n_new.max())
        logits = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False,
                       logits_to_keep=n + 1).logits  # each position predicts the next token; the last one none
        scored = torch.arange(n, device=device)[None] >= (n - n_new)[:, None]
        targets = F.pad(torch.where(scored, ids[:, -n:], -100), (0, 1), value=-100)  # -100: not scored
        nll = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), reduction="none")  # a view, no copy
        per_row = nll.view(len(batch), -1).sum(-1).tolist()
        for i, v in zip(idx, per_row):
            nll_of[i] = v
    return nll_of


def take_documents(tokenizer, texts: list[str], max_tokens: int | None) -> list[tuple[str, list[int]]]:
    """(text, ids) of documents taken in order until `max_tokens` (None: all), the last one cut at a token
    boundary (its text decoded from the kept tokens, so its bytes are counted exactly)."""
    docs, n_tokens = [], 0
    for text in texts:
        if max_tokens is not None and n_tokens >= max_tokens:
            break
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if max_tokens is not None and len(ids) > max_tokens - n_tokens:
            ids = ids[:max_tokens - n_tokens]
            text = tokenizer.decode(ids)
        docs.append((text, ids))
        n_tokens += len(ids)
    return docs


def summary(nll: list[float], tokens: list[int], texts: list[str], method: str) -> dict:
    """The held-out scores of one model on one kind of text, with the per-document sums that paired
    intervals need (documents, not tokens, are the unit two models share when their tokenizers differ)."""
    n_bytes = [len(t.encode("utf-8")) for t in texts]
    total, count = float(sum(nll)), int(sum(tokens))
    return {"ppl": math.exp(total / count), "bpb": total / (math.log(2) * sum(n_bytes)), "nll": total,
            "tokens": count, "bytes": sum(n_bytes), "documents": len(texts), "method": method,
            "per_document": {"nll": [round(float(v), 4) for v in nll], "tokens": [int(t) for t in tokens], "bytes": n_bytes}}


def perplexity(model, tokenizer, texts: list[str], window: int, stride: int, max_tokens: int | None, batch_size: int,
               bos: int, device=None) -> dict:
    """{'ppl', 'bpb', 'nll', 'tokens', 'bytes', 'documents', 'per_document'} on the texts (documents taken until
    max_tokens; None scores every text whole)."""
    device = device or next(model.parameters()).device
    docs = take_documents(tokenizer, texts, max_tokens)
    windows, owner = [], []
    for d, (_, ids) in enumerate(docs):
        w = windows_for(ids, window, stride, bos)
        windows += w
        owner += [d] * len(w)
    per_window = score_windows(model, windows, batch_size, device, pad_id=tokenizer.pad_token_id or 0)
    nll, tokens = [0.0] * len(docs), [0] * len(docs)
    for d, v, (_, n_new) in zip(owner, per_window, windows):
        nll[d] += v
        tokens[d] += n_new
    return summary(nll, tokens, [t for t, _ in docs], "causal")


def heldout_perplexity(model, tokenizer, texts: list[str], objective: str, window: int, stride: int, max_tokens: int | None,
                       batch_size: int, bos: int, device=None) -> dict:
    """Perplexity for a causal LM, pseudo-perplexity for a masked LM ('method' says which)."""
    if objective == "mlm":
        return pseudo_perplexity(model, tokenizer, texts, window, stride, max_tokens, batch_size, device)
    return perplexity(model, tokenizer, texts, window, stride, max_tokens, batch_size, bos, device)


def pseudo_perplexity(model, tokenizer, texts: list[str], window: int, stride: int, max_tokens: int | None, batch_size: int,
                      device=None) -> dict:
    """perplexity()'s dict, from the pseudo-log-likelihood: 'ppl' is pseudo-perplexity and 'bpb' pseudo bits per byte."""
    cls, sep, mask = special_ids(tokenizer)
    docs = take_documents(tokenizer, texts, max_tokens)
    items, counts = [], []
    for _, ids in docs:
        new = pll_windows(ids, window, stride, cls, sep)
        items += new
        counts.append(len(new))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else sep
    ll = score_items(model, items, mask, pad, batch_size, desc="pseudo-perplexity")
    bounds = [0, *itertools.accumulate(counts)]
    nll = [-float(sum(ll[a:b])) for a, b in zip(bounds, bounds[1:])]
    return summary(nll, counts, [t for t, _ in docs], "pseudo-log-likelihood")
