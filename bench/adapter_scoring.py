"""Two changes to fine-tuned choice scoring, each measured side by side against what it replaced (issue 17: scoring
is the demo's largest stage):

1. batches grouped by each example's longest choice (then prompt) instead of by prompt length alone: every choice
   of a batch is padded to the batch's longest, and the probe's choices are descriptions of 2-27 tokens;
2. each adapter merged into a copy of its base before scoring instead of run through peft's LoRA layers.

    python bench/adapter_scoring.py [RUN_DIR] [N]    # a finished medical demo (default runs/medical-demo); the
                                                     # first N test items of each task (default 96)

Scores every task's test items with the domain model's seed-0 adapter, each variant twice, alternated (noisy
machine): the old way, each change in float32, and the two bfloat16 ways (merged then cast, as evaluate does on a
CPU, with its weights unfrozen; frozen, as peft leaves them; unmerged on a bfloat16 base, as on a GPU). Prints times, accuracy, the share of predictions that agree with
the old way and the largest log-likelihood change; last `ratio <old time / new float32 time, both changes>`.
"""
import copy
import json
import sys
import time
from pathlib import Path

import torch

import domainpt.eval.scoring as scoring
from domainpt.encoding import end_of_text_id
from domainpt.models import load_model, load_tokenizer


def by_prompt_length(sequences, batch_size, keys=None):  # what score_examples did before
    order = sorted(range(len(sequences)), key=lambda i: -len(sequences[i]))
    return [order[k:k + batch_size] for k in range(0, len(order), batch_size)]


def timed(model, tok, examples, batches) -> tuple[float, list[dict]]:
    scoring.length_sorted_batches = batches
    t = time.perf_counter()
    rows = scoring.score_examples(model, tok, examples, end_of_text_id(tok), batch_size=16, end_of_text=end_of_text_id(tok))
    return time.perf_counter() - t, rows


def main(run: Path, n_items: int) -> None:
    from peft import PeftModel

    grouped = scoring.length_sorted_batches
    base_path = str(run / "pretrain" / "model")
    tok, base = load_tokenizer(base_path), load_model(base_path, "clm", dtype=torch.float32)
    totals = {}
    for task_dir in sorted(d for d in (run / "prepare" / "tasks").iterdir() if d.is_dir()):
        examples = [json.loads(line) for line in open(task_dir / "test.jsonl")][:n_items]
        adapter = str(run / "finetune" / task_dir.name / "domain_model" / "seed0" / "adapter")
        unmerged = PeftModel.from_pretrained(copy.deepcopy(base), adapter).eval()
        merged = PeftModel.from_pretrained(copy.deepcopy(base), adapter).merge_and_unload().eval()
        variants = {"old (unmerged, by prompt)": (unmerged, by_prompt_length), "grouped by choice": (unmerged, grouped),
                    "grouped + merged": (merged, grouped),
                    # eval.precision=bfloat16: the merged float32 weights cast (what evaluate does on a CPU), or
                    # the adapter unmerged, in float32, on a bfloat16 base (what it does on a GPU)
                    "merged, bfloat16": (copy.deepcopy(merged).to(torch.bfloat16).requires_grad_(True), grouped),
                    # peft's merge leaves the weights frozen: what that alone costs in bfloat16 on a CPU
                    "merged, bfloat16, frozen": (copy.deepcopy(merged).to(torch.bfloat16).requires_grad_(False), grouped),
                    "unmerged, bfloat16 base": (PeftModel.from_pretrained(copy.deepcopy(base).to(torch.bfloat16),
                                                                          adapter).eval(), grouped)}
        times, rows = {k: 0.0 for k in variants}, {}
        for _ in range(2):
            for name, (model, batches) in variants.items():
                dt, rows[name] = timed(model, tok, examples, batches)
                times[name] += dt
        ref = rows["old (unmerged, by prompt)"]
        for name in variants:
            agree = sum(a["pred"] == b["pred"] for a, b in zip(ref, rows[name])) / len(ref)
            diff = max(abs(x - y) for a, b in zip(ref, rows[name]) for x, y in zip(a["logliks"], b["logliks"]))
            acc = sum(r["correct"] for r in rows[name]) / len(ref)
            print(f"{task_dir.name:18s} {name:26s} {times[name]:6.1f} s  agree {agree:.1%}  largest change {diff:.1e}"
                  f"  accuracy {acc:.3f}")
            totals[name] = totals.get(name, 0.0) + times[name]
    scoring.length_sorted_batches = grouped
    print(f"ratio {totals['old (unmerged, by prompt)'] / totals['grouped + merged']:.2f}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("runs/medical-demo"), int(sys.argv[2]) if len(sys.argv) > 2 else 96)
