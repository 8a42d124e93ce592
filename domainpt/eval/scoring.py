"""Log-likelihood scoring of choices after a prompt (the lm-evaluation-harness way).

Prompts run once (batched); their KV cache is reused for every choice, so an example with C choices
costs about one prompt plus C short continuations instead of C full sequences.
"""
from __future__ import annotations

import inspect

import torch
from torch.nn import functional as F
from tqdm.auto import tqdm

from domainpt.encoding import pad_left, pad_right, prompt_ids


@torch.no_grad()
def batch_choice_logliks(model, prompts: list[list[int]], choices: list[list[list[int]]], device) -> list[list[float]]:
    """Sum of log-probabilities of each choice's tokens given its prompt, for a batch of examples.

    Prompts run once, left-padded (position ids follow the padding); the cache rows are then selected
    per (example, choice) pair and all choices run in one more forward pass.
    """
    B = len(prompts)
    ids, mask, pos = (t.to(device) for t in pad_left(prompts))
    out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, logits_to_keep=1)
    last = F.log_softmax(out.logits[:, -1].float(), -1)  # predicts each choice's first token
    pairs = [(b, c) for b in range(B) for c in range(len(choices[b]))]
    # A choice's last token is predicted but never read: its continuation runs without it, and a batch of
    # one-token choices needs no second pass at all.
    feeds = [choices[b][c][:-1] for b, c in pairs]
    Lc = max(map(len, feeds))
    if Lc == 0:
        return [[last[b, toks[0]].item() for toks in choices[b]] for b in range(B)]
    rows = torch.tensor([b for b, _ in pairs], device=device)
    cache = out.get("cache") or out.get("past_key_values")  # renamed in transformers 5.2x
    cache.batch_select_indices(rows)
    cids, cmask = (t.to(device) for t in pad_right([f or [0] for f in feeds]))
    cmask[[r for r, f in enumerate(feeds) if not f]] = 0  # a one-token choice among longer ones: padding only
    cpos = mask.sum(-1)[rows, None] + torch.arange(Lc, device=device)[None]
    logp = F.log_softmax(model(input_ids=cids, attention_mask=torch.cat([mask[rows], cmask], 1), position_ids=cpos,
                               use_cache=True, **{_cache_kwarg(model): cache}).logits.float(), -1)
    scores = [[] for _ in range(B)]
    for r, (b, c) in enumerate(pairs):
        toks = choices[b][c]
        s = last[b, toks[0]].item()
        for j in range(1, len(toks)):
            s += logp[r, j - 1, toks[j]].item()
        scores[b].append(s)
    return scores


def _cache_kwarg(model) -> str:
    """'cache' in recent transformers, 'past_key_values' before."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


def choice_logliks(model, prompt: list[int], choices: list[list[int]], device) -> list[float]:
    return batch_choice_logliks(model, [prompt], [choices], device)[0]


def score_examples(model, tokenizer, examples: list[dict], bos: int | None, desc: str = "score", batch_size: int = 8,
                   encoder: bool = False, end_of_text: int | None = None, norm_unit: str = "bytes") -> list[dict]:
    """Per-example predictions: argmax of summed log-likelihood (acc) and of length-normalised log-likelihood
    (acc_norm: per UTF-8 byte of " " + choice, or with norm_unit='characters' per character of the choice
    without its leading space, as lm-evaluation-harness). An encoder is scored by the pseudo-log-likelihood of
    each choice (eval/masked.py).

    With `end_of_text` (a decoder's end-of-text id), each choice is scored followed by that token, as LoRA
    fine-tuning trains it: without it a choice whose tokens are a prefix of another's (' Copyleft' of
    ' Copyleft Limited') always has the higher sum, so the longer one can never win. The token is part of the
    scored continuation but adds no bytes to acc_norm's per-byte normalisation. Encoders ignore it (a masked
    LM's pseudo-log-likelihood has no end to predict); head-scored tasks do not come here (classify_examples)."""
    model.eval()
    device = next(model.parameters()).device
    choice_cache: dict[str, list[int]] = {}
    suffix = [end_of_text] if end_of_text is not None and not encoder else []

    def choice_ids(ex, extra=()):
        return [choice_cache.setdefault(c, tokenizer(c, add_special_tokens=False)["input_ids"]) + list(extra)
                for c in ex["choices"]]

    if encoder:
        from domainpt.eval.masked import masked_choice_logliks

        prompts = [tokenizer(ex["prompt"], add_special_tokens=False)["input_ids"] for ex in examples]
        lls = masked_choice_logliks(model, tokenizer, prompts, [choice_ids(ex) for ex in examples], batch_size, desc)
    else:
        prompts = [prompt_ids(tokenizer, ex["prompt"], bos) for ex in examples]
        choices = [choice_ids(ex, suffix) for ex in examples]
        # every choice of a batch is padded to its longest: batch by longest choice first, then by prompt
        keys = [(max(map(len, c)), len(p)) for c, p in zip(choices, prompts)]
        lls = [None] * len(examples)
        for idx in tqdm(length_sorted_batches(prompts, batch_size, keys), desc=desc, unit="batch", leave=False):
            got = batch_choice_logliks(model, [prompts[i] for i in idx], [choices[i] for i in idx], device)
            for i, ll in zip(idx, got):
                lls[i] = ll
    return [choice_row(ex, ll, norm_unit) for ex, ll in zip(examples, lls)]


def choice_length(choice: str, unit: str) -> int:
    """acc_norm's divisor. lm-eval divides by len(choice) of the choice as its doc_to_choice gives it, i.e.
    without the " " delimiter that domainpt stores in front of every choice."""
    if unit == "characters":
        return max(1, len(choice[1:] if choice.startswith(" ") else choice))
    return max(1, len(choice.encode("utf-8")))


def choice_row(ex: dict, ll: list[float], norm_unit: str = "bytes") -> dict:
    norm = [v / choice_length(c, norm_unit) for v, c in zip(ll, ex["choices"])]
    pred = max(range(len(ll)), key=ll.__getitem__)
    pred_norm = max(range(len(norm)), key=norm.__getitem__)
    return {"id": ex["id"], "answer": ex["answer"], "pred": pred, "pred_norm": pred_norm,
            "correct": int(pred == ex["answer"]), "correct_norm": int(pred_norm == ex["answer"]),
            "logliks": [round(x, 5) for x in ll]}


def prefix_pairs(tokenizer, choices: list[str]) -> list[tuple[str, str]]:
    """(shorter, longer) choices whose token ids are a proper prefix of the other's: scored alone (no
    end-of-text), the longer one's summed log-likelihood is the shorter one's plus more negative terms."""
    ids = {c: tokenizer(c, add_special_tokens=False)["input_ids"] for c in dict.fromkeys(choices)}
    return [(a, b) for a in ids for b in ids
            if len(ids[a]) < len(ids[b]) and ids[b][:len(ids[a])] == ids[a]]


@torch.no_grad()
def classify_examples(model, inputs: list[list[int]], examples: list[dict], pad_id: int, desc: str = "classify",
                      batch_size: int = 8) -> list[dict]:
    """Per-example rows from a classification head, in score_examples' shape (pred_norm = pred: no lengths)."""
    model.eval()
    device = next(model.parameters()).device
    rows = [None] * len(examples)
    for idx in tqdm(length_sorted_batches(inputs, batch_size), desc=desc, unit="batch", leave=False):
        ids, mask = pad_right([inputs[i] for i in idx], pad_id)
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float().cpu()
        for i, row in zip(idx, logits):
            ex, pred = examples[i], int(row.argmax())
            rows[i] = {"id": ex["id"], "answer": ex["answer"], "pred": pred, "pred_norm": pred,
                       "correct": int(pred == ex["answer"]), "correct_norm": int(pred == ex["answer"]),
                       "logits": [round(float(x), 5) for x in row]}
    return rows


def length_sorted_batches(sequences: list[list[int]], batch_size: int, keys: list | None = None) -> list[list[int]]:
    """Index batches of similar lengths (longest first, so memory trouble shows at once): little padding.
    `keys` (one sortable per sequence) replace the lengths. Callers put results back in the original order."""
    keys = keys if keys is not None else [len(s) for s in sequences]
    order = sorted(range(len(sequences)), key=lambda i: keys[i], reverse=True)
    return [order[k:k + batch_size] for k in range(0, len(order), batch_size)]


@torch.no_grad()
def generate_answers(model, tokenizer, examples: list[dict], bos: int, eot: int, max_new_tokens: int,
                     batch_size: int = 8, desc: str = "generate") -> list[dict]:
    """Greedy short answers (qa): prompts left-padded in batches, generation stopped at end-of-text,
    the answer cut at its first newline; scored per example by exact match and token F1."""
    from domainpt.eval.metrics import qa_scores

    model.eval()
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eot
    all_prompts = [prompt_ids(tokenizer, ex["prompt"], bos) for ex in examples]
    rows = [None] * len(examples)
    for idx in tqdm(length_sorted_batches(all_prompts, batch_size), desc=desc, unit="batch", leave=False):
        batch, prompts = [examples[i] for i in idx], [all_prompts[i] for i in idx]
        ids, mask, _ = pad_left(prompts, pad)
        L = ids.size(1)
        out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=max_new_tokens,
                             do_sample=False, eos_token_id=eot, pad_token_id=pad)
        for i, ex, new in zip(idx, batch, out[:, L:].tolist()):
            new = new[:new.index(eot)] if eot in new else new
            answer = tokenizer.decode(new, skip_special_tokens=True).strip().split("\n")[0].strip()
            rows[i] = {"id": ex["id"], "prediction": answer, "answers": ex["answers"], **qa_scores(answer, ex["answers"])}
    return rows
