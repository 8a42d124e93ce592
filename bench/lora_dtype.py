"""LoRA fine-tuning on this CPU in float32, with bf16 autocast (lora.mixed_precision=bf16), and on a base loaded in
bfloat16 (adapter in float32): time and training loss side by side (issue 17: fine-tuning is the demo's
second-largest stage, and more seeds cost it).

    python bench/lora_dtype.py [RUN_DIR]     # a finished medical demo (default runs/medical-demo)

Trains the general model's adapter for the run's first task with the demo's LoRA settings, the settings alternated
twice (noisy machine); prints time per setting, each loss curve's first and last values, and last
`ratio <float32 time / autocast time>`.
"""
import sys
import tempfile
import time
from pathlib import Path

import torch

import domainpt.finetune as finetune

from domainpt.config import load_recipe
from domainpt.encoding import end_of_text_id
from domainpt.layout import model_paths, task_dir
from domainpt.models import load_model, load_tokenizer
from domainpt.tasks import read_split


def main(run: Path) -> None:
    recipe = load_recipe("recipes/demo/medical.yaml", [f"out_dir={run}"])
    base = model_paths(recipe)["general_model"]
    tok = load_tokenizer(base)
    task = recipe.tasks[0]
    eot = end_of_text_id(tok)
    feats = finetune.training_features(tok, read_split(task_dir(recipe, task.name), "train"), eot, eot)
    settings = {"float32": ("no", torch.float32), "bf16 autocast": ("bf16", torch.float32),
                "bf16 weights": ("no", torch.bfloat16)}
    times, losses = {k: 0.0 for k in settings}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(2):
            for name, (mp, dtype) in settings.items():
                recipe.lora.mixed_precision = mp
                finetune.load_model = lambda *a, dtype=dtype, **k: load_model(*a, dtype=dtype, **k)
                t = time.perf_counter()
                losses[name] = finetune.train_adapter(recipe, base, feats, 0, Path(tmp) / f"{rep}{mp}{dtype}", desc=name)["losses"]
                times[name] += time.perf_counter() - t
    finetune.load_model = load_model
    print(f"{task.name}, {recipe.lora.steps} steps x {recipe.lora.batch_size} examples, 2 runs each: "
          + ", ".join(f"{k} {v:.1f} s" for k, v in times.items()))
    for name, curve in losses.items():
        print(f"{name:14s} loss first {curve[0]:.4f} last {curve[-1]:.4f} mean {sum(curve) / len(curve):.4f}")
    print(f"ratio {times['float32'] / times['bf16 autocast']:.2f}")

if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("runs/medical-demo"))
