"""Choice scoring without each choice's last token in the continuation pass (it is predicted, never read) against
the previous way (every choice token fed), side by side (issue 19; evaluation is the medical demo's longest stage).

    python bench/choice_continuations.py [RUN_DIR] [ITEMS] [DTYPE]   # a finished medical demo (default runs/medical-demo),
                                                                      # 96 items, bfloat16 (eval.precision) or float32

Scores each task's first ITEMS test items with the run's general model in DTYPE, each choice
followed by end-of-text (as after LoRA), both ways alternated, twice; prints each task's times, the largest
log-likelihood change and the share of predictions that agree, and last `ratio <previous time / current time>`.
"""
import json
import sys
import time
from pathlib import Path

import torch
from torch.nn import functional as F

from domainpt.encoding import end_of_text_id, pad_left, pad_right
from domainpt.eval import scoring
from domainpt.models import load_model, load_tokenizer


@torch.no_grad()
def previous_batch_choice_logliks(model, prompts, choices, device):
    """batch_choice_logliks as it was before this change (kept here to measure against): every choice token fed."""
    B = len(prompts)
    ids, mask, pos = (t.to(device) for t in pad_left(prompts))
    out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, logits_to_keep=1)
    last = F.log_softmax(out.logits[:, -1].float(), -1)
    pairs = [(b, c) for b in range(B) for c in range(len(choices[b]))]
    rows = torch.tensor([b for b, _ in pairs], device=device)
    cache = out.get("cache") or out.get("past_key_values")
    cache.batch_select_indices(rows)
    cids, cmask = (t.to(device) for t in pad_right([choices[b][c] for b, c in pairs]))
    cpos = mask.sum(-1)[rows, None] + torch.arange(cids.size(1), device=device)[None]
    logp = F.log_softmax(model(input_ids=cids, attention_mask=torch.cat([mask[rows], cmask], 1), position_ids=cpos,
                               use_cache=True, **{scoring._cache_kwarg(model): cache}).logits.float(), -1)
    scores = [[] for _ in range(B)]
    for r, (b, c) in enumerate(pairs):
        toks = choices[b][c]
        scores[b].append(last[b, toks[0]].item() + sum(logp[r, j - 1, toks[j]].item() for j in range(1, len(toks))))
    return scores


def main(run: Path, n_items: int, dtype: torch.dtype) -> None:
    base = json.loads((run / "prepare" / "manifest.json").read_text())["base_model"]
    tok, model = load_tokenizer(base), load_model(base, "clm", dtype=dtype).requires_grad_(True)
    eot = end_of_text_id(tok)
    current = scoring.batch_choice_logliks
    ways = {"previous": previous_batch_choice_logliks, "current": current}
    total = dict.fromkeys(ways, 0.0)
    for f in sorted((run / "prepare" / "tasks").glob("*/test.jsonl")):
        examples = [json.loads(l) for l in open(f)][:n_items]
        times, rows = dict.fromkeys(ways, 0.0), {}
        for _ in range(2):  # alternated: the machine's speed drifts
            for name, fn in ways.items():
                scoring.batch_choice_logliks = fn  # score_examples looks it up in its module
                t = time.perf_counter()
                rows[name] = scoring.score_examples(model, tok, examples, eot, batch_size=16, end_of_text=eot)
                times[name] += time.perf_counter() - t
        scoring.batch_choice_logliks = current
        change = max(abs(u - v) for a, b in zip(rows["current"], rows["previous"]) for u, v in zip(a["logliks"], b["logliks"]))
        agree = sum(a["pred"] == b["pred"] for a, b in zip(rows["current"], rows["previous"])) / len(examples)
        print(f"{f.parent.name:18s} {str(dtype)[6:]:8s} {len(examples)} items  previous {times['previous']:.1f} s  current {times['current']:.1f} s"
              f"  largest change {change:.1e}  predictions agree {agree:.1%}")
        for k in total:
            total[k] += times[k]
    print(f"ratio {total['previous'] / total['current']:.2f}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/medical-demo"), int(sys.argv[2]) if len(sys.argv) > 2 else 96,
         getattr(torch, sys.argv[3] if len(sys.argv) > 3 else "bfloat16"))
