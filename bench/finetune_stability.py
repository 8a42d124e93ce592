"""Which fine-tuning setting varies least across seeds, measured on a dev split, never on the test set (issue 17:
the medical demo's chapter task has an mdd of ~12 points because each seed's adapter lands somewhere else).

    python bench/finetune_stability.py [RUN_DIR] [TASK] [DEV_ITEMS] [SETTING ...]
    python bench/finetune_stability.py runs/medical-demo icd10-chapter 400 "steps=12" "steps=36" "steps=36 lr=3e-4"

A SETTING is space-separated steps / batch (the task's lora_steps / lora_batch_size), lr (lora.lr) and scoring
(likelihood or head) values over the run's recipe.
For each setting it fine-tunes the run's general and domain models with every lora seed on the task's train split
(as the finetune stage does), scores the adapters on DEV_ITEMS examples of the task's source that are in neither
split nor near duplicates of a test example (the split prepare made, continued), and prints each model's dev
score and its spread across seeds, and the minimum detectable difference (domain minus general) that demo designs
(seeds x test items) would have, planned from the dev table's variance components (report.stats.planned_mdd). It
prints no difference between the models: the setting is chosen by its spread, not by which model it favours.
Last line: `ratio <mdd of the first setting / mdd of the best>`.
"""
import dataclasses
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from domainpt.config import load_recipe
from domainpt.data.ingest import BadRecords
from domainpt.encoding import end_of_text_id
from domainpt.eval.stage import score_adapters
from domainpt.finetune import head_features, train_adapter, training_features
from domainpt.models import load_tokenizer
from domainpt.report.compare import read_predictions
from domainpt.report.stats import item_differences, per_seed, planned_mdd
from domainpt.tasks import build_examples, near_overlap, read_split, split_examples

PLANNED = [(3, 300), (4, 300), (3, 200)]  # seeds x test items of demo designs


def dev_split(recipe, task, tok, run: Path, n: int) -> list[dict]:
    """The task's examples after prepare's train split in its own seeded order, minus train, test and test's near
    duplicates (the recipe's MinHash settings, on what each prompt shows, as prepare checks train): what a larger
    train_size would have taken next."""
    split = run / "prepare" / "tasks" / task.name
    used = {e["id"] for e in read_split(split, "train")}
    test_ids = {e["id"] for e in read_split(split, "test")}
    examples, _ = build_examples(task, tok, BadRecords(max_share=recipe.data.max_bad_share))
    test = [e for e in examples if e["id"] in test_ids]
    test_texts = {e["text"] for e in test}
    pool = [e for e in split_examples(examples, task.test_size, 10 ** 9, recipe.data.seed)[0]
            if e["id"] not in used | test_ids and e["text"] not in test_texts]
    near = {id(e) for e, _, _ in near_overlap(pool, test, recipe.data.dedup)}
    dev = [e for e in pool if id(e) not in near][:n]
    for e in dev:
        e.pop("seen", None)
    return dev


def with_setting(recipe, task_name: str, setting: str):
    """The recipe with the setting applied to the task (its own lora_steps / lora_batch_size, scoring) and lr."""
    values = dict(kv.split("=", 1) for kv in setting.split())
    task = next(t for t in recipe.tasks if t.name == task_name)
    lc = recipe.lora.for_task(task)
    changed = dataclasses.replace(task, scoring=values.get("scoring", task.scoring),
                                  lora_steps=int(values.get("steps", lc.steps)),
                                  lora_batch_size=int(values.get("batch", lc.batch_size)))
    return dataclasses.replace(recipe, lora=dataclasses.replace(recipe.lora, lr=float(values.get("lr", recipe.lora.lr))),
                               tasks=[changed if t is task else t for t in recipe.tasks])


def run_setting(recipe, task, models: dict, dev: list[dict], work: Path) -> tuple[dict, float, float]:
    """model -> (seeds x dev items) predictions; fine-tuning and scoring seconds."""
    device = torch.device("cpu")
    preds, t_train, t_score = {}, 0.0, 0.0
    for name, path in models.items():
        tok = load_tokenizer(path)
        bos = eot = end_of_text_id(tok)
        train = read_split(work / "prepare" / "tasks" / task.name, "train")
        head = task.scoring == "head"
        feats = head_features(tok, train, bos, False) if head else training_features(tok, train, bos, eot)
        how = {"num_labels": len(train[0]["choices"]), "pad_id": eot} if head else {}
        t = time.perf_counter()
        for seed in recipe.lora.seeds:
            run_dir = work / "finetune" / task.name / name / f"seed{seed}"
            run_dir.mkdir(parents=True)
            train_adapter(recipe, path, feats, seed, run_dir / "adapter", f"{name} seed{seed}", task=task, **how)
        t_train += time.perf_counter() - t
        t = time.perf_counter()
        score_adapters(recipe, task, path, tok, "clm", name, dev, device, work / "scored")
        t_score += time.perf_counter() - t
        folder = work / "scored" / "predictions" / task.name / name
        preds[name] = np.stack([read_predictions(folder / f"seed{s}.jsonl", task.metric)[0] for s in recipe.lora.seeds])
        shutil.rmtree(work / "finetune")
    return preds, t_train, t_score


def main(run: Path, task_name: str, n_dev: int, settings: list[str]) -> None:
    run = run.resolve()
    prep = json.loads((run / "prepare" / "manifest.json").read_text())
    with tempfile.TemporaryDirectory() as tmp:  # the run's own recipe, as prepare recorded it (JSON is YAML)
        (Path(tmp) / "recipe.yaml").write_text(json.dumps(prep["recipe"]))
        base = load_recipe(Path(tmp) / "recipe.yaml", [f"out_dir={run}"])
    task = next(t for t in base.tasks if t.name == task_name)
    models = {"general_model": prep["base_model"], "domain_model": str(run / "pretrain" / "model")}
    dev = dev_split(base, task, load_tokenizer(models["general_model"]), run, n_dev)
    refs = np.array([e["answer"] for e in dev])
    print(f"{task_name}: {len(dev)} dev items, seeds {base.lora.seeds}, majority {np.bincount(refs).max() / len(refs):.3f}")
    mdds = []
    for setting in settings:
        recipe = with_setting(base, task_name, setting)
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            (work / "prepare").symlink_to(run / "prepare")  # head_setup reads the split's choices from here
            recipe = dataclasses.replace(recipe, out_dir=str(work))
            task_s = next(t for t in recipe.tasks if t.name == task_name)
            preds, t_train, t_score = run_setting(recipe, task_s, models, dev, work)
        d = item_differences(task.metric, preds["general_model"], preds["domain_model"], refs)
        planned = {design: planned_mdd(d, *design) for design in PLANNED}
        mdds.append(planned[PLANNED[0]])
        scores = "  ".join(f"{m.split('_')[0]} {np.mean(s := per_seed(task.metric, p, refs)):.3f} (seed sd {np.std(s, ddof=1):.3f})"
                           for m, p in preds.items())
        cells = "  ".join(f"{s}x{i}: {100 * m:4.1f}" for (s, i), m in planned.items())
        print(f"{setting:24s} {scores}  mdd (points) at {cells}  fine-tune {t_train:4.0f} s  score {t_score:4.0f} s",
              flush=True)
    print(f"ratio {mdds[0] / min(mdds):.2f}")


if __name__ == "__main__":
    args = sys.argv[1:]
    main(Path(args[0]) if args else Path("runs/medical-demo"), args[1] if len(args) > 1 else "icd10-chapter",
         int(args[2]) if len(args) > 2 else 400, args[3:] or ["steps=12", "steps=36"])
