"""How much domainpt's default zero-shot convention differs from lm-evaluation-harness's, on real items.

    python bench/harness_conventions.py [RUN_DIR]   # RUN_DIR: a finished tiny run (default runs/tiny)

Scores the run's licence test items with SmolLM2-135M three ways: lm-eval's convention (no BOS, acc_norm per
character), domainpt's (BOS first, acc_norm per byte), and no BOS with per-byte acc_norm (the normalisation
alone). Prints the largest log-likelihood change the BOS makes and how many acc / acc_norm predictions change.
"""
import json
import sys
from pathlib import Path

import numpy as np

from domainpt.eval.scoring import score_examples
from domainpt.encoding import end_of_text_id
from domainpt.models import load_model, load_tokenizer, resolve


def main(run: Path) -> None:
    path = resolve("smollm2-135m")
    items = run / "prepare" / "tasks" / "licence-category" / "test.jsonl"
    examples = [{**json.loads(line), "id": str(i)} for i, line in enumerate(open(items))]
    tok, model = load_tokenizer(path), load_model(path, "clm")
    lm_eval_way = score_examples(model, tok, examples, None, norm_unit="characters")
    domainpt_way = score_examples(model, tok, examples, end_of_text_id(tok), norm_unit="bytes")
    bytes_only = score_examples(model, tok, examples, None, norm_unit="bytes")
    ll = lambda rows: np.array([r["logliks"] for r in rows])
    differ = lambda a, b, key: sum(x[key] != y[key] for x, y in zip(a, b))
    n = len(examples)
    print(f"items {n}; BOS changes log-likelihoods by up to {np.abs(ll(lm_eval_way) - ll(domainpt_way)).max():.2f} nats")
    print(f"acc predictions changed by the BOS: {differ(lm_eval_way, domainpt_way, 'pred')}/{n}")
    print(f"acc_norm predictions changed by per-byte normalisation alone: {differ(lm_eval_way, bytes_only, 'pred_norm')}/{n}")
    print(f"acc_norm predictions changed by both: {differ(lm_eval_way, domainpt_way, 'pred_norm')}/{n}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("runs/tiny"))
