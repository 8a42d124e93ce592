"""results.json's `harness` section: lm-evaluation-harness tasks compared with domainpt's own statistics.

Each model's logged samples (eval/harness.py) are paired document by document. A metric whose lm-eval
aggregate is the mean of its per-document values in [0, 1] (acc, acc_norm, exact_match, ...) gets the same
paired analysis as domainpt's zero-shot tasks (report/stats.py: one seed, items random); any other metric
(corpus-level F1, perplexity) is reported as lm-eval computed it, without an interval.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from scipy import stats

from domainpt.errors import DomainptError
from domainpt.eval.harness import metric_key
from domainpt.manifest import read_jsonl
from domainpt.report.arms import COMPARISONS
from domainpt.report.stats import ITEM_SCORE, model_score, paired_difference


def leaf_tasks(task: str, group_subtasks: dict) -> list[str]:
    """A group's tasks with logged samples (groups nest: mmlu -> mmlu_stem -> mmlu_anatomy); a task is itself."""
    if task not in group_subtasks:
        return [task]
    return [leaf for sub in group_subtasks[task] for leaf in leaf_tasks(sub, group_subtasks)]


def descendants(group: str, group_subtasks: dict) -> set[str]:
    """Every subgroup and task under a group."""
    out = set()
    for sub in group_subtasks.get(group, []):
        out |= {sub} | descendants(sub, group_subtasks)
    return out


def item_values(folder: Path, leaves: list[str], metric: str, filt: str) -> tuple[list[str], list, list]:
    """(document keys, document and prompt hashes, per-document values) of one metric over a task's leaf tasks."""
    keys, hashes, values = [], [], []
    for leaf in leaves:
        path = folder / f"{leaf}.jsonl"
        if not path.is_file():
            raise DomainptError(f"{path}: missing (re-run `domainpt evaluate`)")
        for row in read_jsonl(path):
            if row.get("filter", "none") == filt and metric in row["metrics"]:
                keys.append(f"{leaf}:{row['doc_id']}")
                hashes.append((row.get("doc_hash"), row.get("prompt_hash")))  # same document, same prompt
                values.append(row["metrics"][metric])
    return keys, hashes, values


def _is_share(values: list, aggregate) -> bool:
    """True when the aggregate is the mean of per-document shares: then paired per-item statistics apply."""
    if not values or not isinstance(aggregate, (int, float)) or isinstance(aggregate, bool):
        return False
    if not all(isinstance(v, (int, float)) for v in values):  # (bool is an int)
        return False
    arr = np.asarray(values, dtype=float)
    return bool(np.all((arr >= 0) & (arr <= 1)) and abs(arr.mean() - aggregate) < 1e-6)


def metric_entry(eval_dir: Path, arms: list[str], summaries: dict, task: str, key: str, confidence: float) -> dict:
    metric, filt = metric_key(key)
    ref = summaries[arms[0]]
    leaves = leaf_tasks(task, ref.get("group_subtasks", {}))
    aggregates = {arm: summaries[arm]["results"].get(task, {}).get(key) for arm in arms}
    per_arm = {arm: item_values(eval_dir / "harness" / arm, leaves, metric, filt) for arm in arms}
    keys0, hashes0, _ = per_arm[arms[0]]
    for arm in arms[1:]:
        if per_arm[arm][0] != keys0 or per_arm[arm][1] != hashes0:
            raise DomainptError(f"harness task {task}: {arm} was scored on other documents than {arms[0]} "
                                f"(re-run `domainpt evaluate`)")
    entry = {"n": len(keys0), "lm_eval": aggregates}
    if not all(_is_share(per_arm[arm][2], aggregates[arm]) for arm in arms):
        entry.update({arm: {"mean": aggregates[arm]} for arm in arms})
        entry["paired"] = False  # e.g. corpus-level F1: lm-eval's number, no per-document decomposition
        return entry
    matrices = {arm: np.asarray(per_arm[arm][2], dtype=float)[None] for arm in arms}
    refs = np.zeros(len(keys0))
    for arm in arms:
        s = model_score(ITEM_SCORE, matrices[arm], refs, confidence)
        entry[arm] = {"mean": s["mean"], "ci": s["ci"], "se": s["se"]}
    for name, a, b in COMPARISONS:
        if a in matrices and b in matrices:
            entry[name] = paired_difference(ITEM_SCORE, matrices[a], matrices[b], refs, confidence=confidence)
    entry["paired"] = True
    return entry


def harness_results(eval_dir: Path, arms: list[str], confidence: float) -> dict:
    """task -> metric -> per-model mean and interval, paired differences with p (Holm is applied later).
    The first metric of each task is its primary one (in the report's family of comparisons)."""
    folder = eval_dir / "harness"
    summaries = {}
    for arm in arms:
        path = folder / arm / "summary.json"
        if not path.is_file():
            raise DomainptError(f"{path}: missing; the recipe names harness tasks but evaluate did not score {arm} "
                                f"(re-run `domainpt evaluate --force evaluate`)")
        summaries[arm] = json.loads(path.read_text())
    ref = summaries[arms[0]]
    purpose = ref.get("purpose", {})
    out = {}
    for task, metrics in ref["results"].items():
        keys = [k for k in metrics if "," in k and "_stderr" not in k]  # 'acc,none'; not alias, sample_count, ...
        entries = {}
        for i, key in enumerate(keys):
            name = key[:-len(",none")] if key.endswith(",none") else key
            entries[name] = {**metric_entry(eval_dir, arms, summaries, task, key, confidence), "primary": i == 0,
                             **task_role(task, purpose, ref.get("group_subtasks", {}), ref.get("named_as", {}))}
        if entries:
            out[task] = entries
    return out


def task_role(task: str, purpose: dict, group_subtasks: dict, named_as: dict) -> dict:
    """{'purpose': 'domain' | 'forgetting'} for a task the recipe names; a task lm-eval ran as part of a named
    group or tag also gets 'group' (its purpose; descriptive: not in the Holm family, not counted twice in the
    forgetting mean, whose named group already pools its documents)."""
    if task in purpose:
        return {"purpose": purpose[task]}
    for group in purpose:
        if task in descendants(group, group_subtasks):
            return {"purpose": purpose[group], "group": group}
    named = named_as.get(task)  # a tag's task (ai2_arc -> arc_easy): no group entry in lm-eval's results
    if named in purpose:
        return {"purpose": purpose[named], "group": named, "tag": True}
    return {"purpose": "domain", "group": None}


def general_task_forgetting(harness: dict, confidence: float) -> dict:
    """The forgetting line's general tasks: each named forgetting task's primary metric, domain minus general,
    and their unweighted mean (Ibrahim et al. 2024 report an average over tasks)."""
    out = {}
    for task, entries in harness.items():
        for metric, e in entries.items():
            if e["primary"] and e["purpose"] == "forgetting" and "group" not in e and "difference" in e:
                out[task] = {"metric": metric, "difference": e["difference"]["mean"], "ci": e["difference"]["ci"],
                             "general_model": e["general_model"]["mean"], "domain_model": e["domain_model"]["mean"]}
    if not out:
        return {}
    # the tasks' documents are independent samples: the mean's standard error is sqrt(sum of se^2) / k
    se = float(np.sqrt(sum(harness[t][v["metric"]]["difference"]["se"] ** 2 for t, v in out.items())) / len(out))
    mean, z = float(np.mean([v["difference"] for v in out.values()])), float(stats.norm.ppf(0.5 + confidence / 2))
    return {"general_tasks": out, "general_tasks_mean_difference": mean, "general_tasks_mean_difference_se": se,
            "general_tasks_mean_difference_ci": [mean - z * se, mean + z * se]}
