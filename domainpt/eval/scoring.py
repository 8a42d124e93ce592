"""Log-likelihood scoring of choices after a prompt (the lm-evaluation-harness way).

The prompt runs once; its KV cache is repeated for every choice, so an example with C choices costs
about one prompt plus C short continuations instead of C full sequences.
"""
from __future__ import annotations

import torch
from torch.nn import functional as F
from tqdm.auto import tqdm


def prompt_ids(tokenizer, prompt: str, bos: int) -> list[int]:
    return [bos] + tokenizer(prompt, add_special_tokens=False)["input_ids"]


@torch.no_grad()
def choice_logliks(model, prompt: list[int], choices: list[list[int]], device) -> list[float]:
    """Sum of log-probabilities of each choice's tokens given the prompt."""
    p = torch.tensor([prompt], device=device)
    out = model(input_ids=p, use_cache=True, logits_to_keep=1)
    last = F.log_softmax(out.logits[0, -1].float(), -1)  # predicts each choice's first token
    cache = out.past_key_values
    C, L = len(choices), max(len(c) for c in choices)
    cache.batch_repeat_interleave(C)
    ids = torch.zeros((C, L), dtype=torch.long, device=device)
    mask = torch.zeros((C, len(prompt) + L), dtype=torch.long, device=device)
    mask[:, :len(prompt)] = 1
    for i, c in enumerate(choices):
        ids[i, :len(c)] = torch.tensor(c, device=device)
        mask[i, len(prompt):len(prompt) + len(c)] = 1
    logp = F.log_softmax(model(input_ids=ids, attention_mask=mask, cache=cache, use_cache=True).logits.float(), -1)
    scores = []
    for i, c in enumerate(choices):
        s = last[c[0]].item()
        for j in range(1, len(c)):
            s += logp[i, j - 1, c[j]].item()
        scores.append(s)
    return scores


def score_examples(model, tokenizer, examples: list[dict], bos: int, desc: str = "score") -> list[dict]:
    """Per-example predictions: argmax of summed log-likelihood (acc) and of per-byte log-likelihood (acc_norm)."""
    model.eval()
    device = next(model.parameters()).device
    choice_cache: dict[str, list[int]] = {}
    rows = []
    for ex in tqdm(examples, desc=desc, unit="ex", leave=False):
        toks = [choice_cache.setdefault(c, tokenizer(c, add_special_tokens=False)["input_ids"]) for c in ex["choices"]]
        ll = choice_logliks(model, prompt_ids(tokenizer, ex["prompt"], bos), toks, device)
        norm = [l / max(1, len(c.encode("utf-8"))) for l, c in zip(ll, ex["choices"])]
        pred = max(range(len(ll)), key=ll.__getitem__)
        pred_norm = max(range(len(norm)), key=norm.__getitem__)
        rows.append({"id": ex["id"], "answer": ex["answer"], "pred": pred, "pred_norm": pred_norm,
                     "correct": int(pred == ex["answer"]), "correct_norm": int(pred_norm == ex["answer"]),
                     "logliks": [round(x, 5) for x in ll]})
    return rows
