"""Held-out perplexity: the LM head on scored positions only (left-padded windows) against the previous way
(right-padded windows, logits and cross-entropy at every position), side by side on one model (issue 19: held-out
perplexity was a third of the tiny pipeline's time; it also runs in every pre-training eval).

    python bench/perplexity_windows.py RUN_DIR [MODEL] [WINDOW STRIDE MAX_TOKENS]

RUN_DIR: a finished run (its prepare/heldout_*.jsonl are the texts); MODEL: a checkpoint (default: the run's base
model). Both ways run twice, alternated (noisy machine), on every held-out kind; prints each way's time, the largest
relative change of a document's NLL and of ppl / bits per byte, and last `ratio <previous time / current time>`.
"""
import json
import sys
import time
from pathlib import Path

import torch
from torch.nn import functional as F

from domainpt.encoding import end_of_text_id, pad_right
from domainpt.eval import perplexity as ppl
from domainpt.layout import read_heldout
from domainpt.models import load_model, load_tokenizer


@torch.no_grad()
def previous_score_windows(model, windows, batch_size: int, device, pad_id: int = 0) -> list[float]:
    """score_windows as it was before this change (kept here to measure against): right padding, full logits."""
    model.eval()
    order = sorted(range(len(windows)), key=lambda i: len(windows[i][0]))
    nll_of = [0.0] * len(windows)
    for b in range(0, len(order), batch_size):
        idx = order[b:b + batch_size]
        batch = [windows[i] for i in idx]
        ids, mask = pad_right([w for w, _ in batch], pad_id)
        score = torch.zeros((len(batch), ids.size(1) - 1), dtype=torch.bool)
        for r, (w, n_new) in enumerate(batch):
            score[r, len(w) - 1 - n_new:len(w) - 1] = True
        logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, :-1].float()
        nll = F.cross_entropy(logits.reshape(-1, logits.size(-1)), ids[:, 1:].reshape(-1), reduction="none")
        for i, v in zip(idx, (nll.view(len(batch), -1) * score).sum(-1).tolist()):
            nll_of[i] = v
    return nll_of


def main(run: Path, model_path: str | None, window: int, stride: int, max_tokens: int) -> None:
    model_path = model_path or json.loads((run / "prepare" / "manifest.json").read_text())["base_model"]
    tok, model = load_tokenizer(model_path), load_model(model_path, "clm")
    texts = read_heldout(run / "prepare")
    current = ppl.score_windows
    ways = {"previous": previous_score_windows, "current": current}
    times, results = dict.fromkeys(ways, 0.0), {}
    for _ in range(2):
        for name, fn in ways.items():
            ppl.score_windows = fn  # perplexity() looks it up in its module
            t = time.perf_counter()
            results[name] = {k: ppl.perplexity(model, tok, v, window, stride, max_tokens, 16, end_of_text_id(tok))
                             for k, v in texts.items()}
            times[name] += time.perf_counter() - t
    ppl.score_windows = current
    doc_change = max(abs(a - b) / max(abs(b), 1e-9) for k in texts for a, b in
                     zip(results["current"][k]["per_document"]["nll"], results["previous"][k]["per_document"]["nll"]))
    for k in texts:
        c, p = results["current"][k], results["previous"][k]
        print(f"{k:8s} {c['tokens']} tokens  ppl {p['ppl']:.4f} -> {c['ppl']:.4f}  bpb {p['bpb']:.5f} -> {c['bpb']:.5f}")
    print(f"{model_path}, window {window}, stride {stride}: previous {times['previous']:.1f} s, current "
          f"{times['current']:.1f} s (2 passes each); largest relative change of a document's NLL {doc_change:.1e}")
    print(f"ratio {times['previous'] / times['current']:.2f}")


if __name__ == "__main__":
    a = sys.argv[1:]
    main(Path(a[0]), a[1] if len(a) > 1 and a[1] != "-" else None, *(int(x) for x in (a[2:5] or (128, 64, 2048))))
