"""Raw domain pre-training against reading-comprehension pre-training (AdaptLLM), paired item by item.

    domainpt run recipes/demo/medical.yaml                                            # raw DAPT
    domainpt run recipes/demo/medical.yaml out_dir=runs/medical-demo-rc \\
        data.transform=reading_comprehension compare.control=none                     # the same, with exercises
    python bench/rc_vs_raw.py runs/medical-demo runs/medical-demo-rc

Both runs share the general model, the task splits, the LoRA seeds and the held-out documents (the transform
leaves held-out text raw and selects the same documents), so the two domain models can be compared directly:
RC minus raw on every task (zero-shot and after LoRA: seeds x items, report/stats.py) and on held-out
perplexity and bits per byte (paired bootstrap over documents). Prints one line per comparison.
"""
import json
import math
import sys
from pathlib import Path

import numpy as np

from domainpt.report.stats import paired_difference, paired_document_bootstrap


def predictions(run: Path, task: str, name: str) -> tuple[list[str], np.ndarray, np.ndarray]:
    rows = [json.loads(line) for line in open(run / "evaluate" / "predictions" / task / "domain_model" / f"{name}.jsonl")]
    return [r["id"] for r in rows], np.array([r["pred"] for r in rows]), np.array([r["answer"] for r in rows])


def task_lines(raw: Path, rc: Path) -> list[str]:
    res = json.loads((raw / "compare" / "results.json").read_text())
    seeds = res["recipe"]["lora"]["seeds"]
    lines = []
    for task in res["tasks"]:
        for label, names in (("zero-shot", ["zero_shot"]), ("after LoRA", [f"seed{s}" for s in seeds])):
            got = [(predictions(raw, task, n), predictions(rc, task, n)) for n in names]
            if any(a[0] != b[0] or not np.array_equal(a[2], b[2]) for a, b in got):
                raise SystemExit(f"{task}: the two runs scored different test items; they are not comparable")
            a, b, refs = np.stack([x[1] for x, _ in got]), np.stack([y[1] for _, y in got]), got[0][0][2]
            d = paired_difference("accuracy", a, b, refs)
            lines.append(f"{task} {label}: raw {100 * np.mean(a == refs):.1f}, rc {100 * np.mean(b == refs):.1f}, "
                         f"rc - raw {100 * d['mean']:+.1f} [{100 * d['ci'][0]:+.1f}, {100 * d['ci'][1]:+.1f}] p={d['p_value']:.3f} "
                         f"({len(names)} seed(s) x {len(refs)} items)")
    return lines


def heldout_lines(raw: Path, rc: Path) -> list[str]:
    s_raw, s_rc = (json.loads((r / "evaluate" / "scores.json").read_text())["perplexity"] for r in (raw, rc))
    lines = []
    for kind in s_raw:
        a, b = s_raw[kind]["domain_model"]["per_document"], s_rc[kind]["domain_model"]["per_document"]
        if a["tokens"] != b["tokens"]:
            raise SystemExit(f"held-out {kind}: the runs scored different documents")
        ratio = paired_document_bootstrap(a["nll"], a["tokens"], b["nll"], b["tokens"], 2000, 0.95)
        bpb = paired_document_bootstrap(a["nll"], [math.log(2) * x for x in a["bytes"]], b["nll"],
                                        [math.log(2) * x for x in b["bytes"]], 2000, 0.95, stat="difference")
        lines.append(f"held-out {kind}: perplexity raw {s_raw[kind]['domain_model']['ppl']:.2f}, rc {s_rc[kind]['domain_model']['ppl']:.2f}, "
                     f"ratio rc/raw {ratio['mean']:.3f} [{ratio['ci'][0]:.3f}, {ratio['ci'][1]:.3f}]; bits per byte "
                     f"rc - raw {bpb['mean']:+.4f} [{bpb['ci'][0]:+.4f}, {bpb['ci'][1]:+.4f}]")
    return lines


def main(raw: Path, rc: Path) -> None:
    stats = json.loads((rc / "prepare" / "stats.json").read_text())
    tok_raw = json.loads((raw / "prepare" / "stats.json").read_text())["tokens_out"]
    summary = stats["reading_comprehension_summary"]
    print(f"exercises: {stats['reading_comprehension']}; {summary['documents_transformed']} of "
          f"{summary['domain_documents']} domain documents; training tokens {tok_raw:,} raw -> {stats['tokens_out']:,} "
          f"with exercises ({summary['share_of_training_tokens']:.1%}); both runs train the same steps x tokens per step")
    for line in heldout_lines(raw, rc) + task_lines(raw, rc):
        print(line)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
