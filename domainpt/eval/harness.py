"""lm-evaluation-harness as a second evaluation backend: the field's benchmarks, scored the field's way.

domainpt's own scorer is needed for fine-tuned adapters and private tasks; papers report lm-eval numbers
(PubMedQA, MedMCQA, MMLU subsets; forgetting as an average of general tasks, Ibrahim et al. 2024). Each
model checkpoint domainpt wrote is scored through lm-eval's Python API with its own tokenizer, and
lm-eval's logged samples are kept per document, so report/ can pair the models item by item with the
same statistics as domainpt's tasks.

Writes out_dir/evaluate/harness/<model>/summary.json (lm-eval's aggregated results) and
out_dir/evaluate/harness/<model>/<task>.jsonl (one row per document: doc_id, doc_hash, target, metrics).
lm-eval is an optional extra: `pip install 'domainpt[harness]'`.
"""
from __future__ import annotations

import difflib
import functools
import logging
import os
from contextlib import contextmanager
from pathlib import Path

from domainpt.errors import DomainptError
from domainpt.manifest import atomic_write_jsonl

INSTALL = "pip install 'domainpt[harness]'"


def require_lm_eval():
    try:
        import lm_eval
    except ImportError:
        raise DomainptError(f"eval.harness_tasks / eval.forgetting_tasks need lm-evaluation-harness: {INSTALL}") from None
    return lm_eval


def harness_tasks(ec) -> dict[str, str]:
    """Every harness task or group the recipe names, with its purpose: 'domain' (compared like domainpt's
    tasks) or 'forgetting' (general knowledge kept, reported in the forgetting line)."""
    named = {name: "domain" for name in ec.harness_tasks}
    named.update({name: "forgetting" for name in ec.forgetting_tasks if name not in named})
    return named


@functools.lru_cache(maxsize=4)
def task_manager(include: str | None):
    """lm-eval's task index (it reads ~15,000 task YAMLs: ~9 s, so once per process)."""
    require_lm_eval()
    from lm_eval.tasks import TaskManager

    if include and not Path(include).is_dir():
        raise DomainptError(f"eval.harness_include: {include} is not a folder of task YAMLs")
    return TaskManager(include_path=include)


def check_task_names(ec) -> None:
    """Stop before any work when a named task is unknown to lm-eval (with the closest names it knows)."""
    names = list(harness_tasks(ec))
    if not names:
        return
    known = set(task_manager(ec.harness_include).all_tasks)
    for name in names:
        if name not in known:
            close = difflib.get_close_matches(name, sorted(known), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            where = f" or in eval.harness_include={ec.harness_include}" if ec.harness_include else ""
            raise DomainptError(f"eval: lm-evaluation-harness has no task or group '{name}'{where}{hint}")


def load_leaf_tasks(ec) -> dict[str, tuple[str, str, object]]:
    """Every leaf task lm-eval runs for the named tasks, groups and tags: {leaf: (named as, purpose, Task)}.
    Building a Task loads its data, so a dataset that cannot load stops prepare, not a finished evaluation."""
    tm, leaves = task_manager(ec.harness_include), {}
    for name, purpose in harness_tasks(ec).items():
        try:
            loaded = tm.load(name)
        except Exception as e:  # lm-eval and datasets raise many kinds; the first line says which
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise DomainptError(f"eval: lm-evaluation-harness task '{name}' cannot load its data: {first}") from None
        for leaf, task in loaded["tasks"].items():
            leaves.setdefault(leaf, (name, purpose, task))
    return leaves


def harness_test_texts(leaves: dict, limit: int | None) -> list[str]:
    """Each scored document's prompt and gold answer: what domain training text must not contain (the same
    n-gram decontamination as domainpt's own test sets)."""
    texts = []
    for _, _, task in leaves.values():
        for i, doc in enumerate(task.eval_docs):
            if limit and i >= limit:
                break
            text = task.doc_to_text(doc)
            if not isinstance(text, str):
                continue
            try:  # the gold answer's text where the task has choices
                target, choices = task.doc_to_target(doc), task.doc_to_choice(doc)
                text += " " + (choices[target] if isinstance(target, int) and 0 <= target < len(choices) else str(target))
            except Exception:  # a task without choices: its prompt alone
                pass
            texts.append(text)
    return texts


def sample_row(sample: dict) -> dict:
    """What the paired statistics need from one logged sample: the document's identity and its metric values."""
    row = {"doc_id": sample["doc_id"], "doc_hash": sample.get("doc_hash"), "prompt_hash": sample.get("prompt_hash"),
           "filter": sample.get("filter", "none"),
           "target": str(sample.get("target")), "metrics": {m: _plain(sample[m]) for m in sample.get("metrics", []) if m in sample}}
    resps = sample.get("filtered_resps") or []
    if resps and all(isinstance(r, (list, tuple)) and len(r) == 2 for r in resps):  # loglikelihood requests
        row["logliks"] = [float(r[0]) for r in resps]
    return row


def metric_key(name: str) -> tuple[str, str]:
    """lm-eval's 'acc,none' -> ('acc', 'none')."""
    metric, _, filt = name.partition(",")
    return metric, filt or "none"


@contextmanager
def _as_local_rank_zero():
    """lm-eval 0.4 returns results only where LOCAL_RANK is 0, even for a model object it runs alone (world size 1):
    a harness job given to process 1 of a launch would get None. Within the call, this process is its own rank 0."""
    old = os.environ.get("LOCAL_RANK")
    os.environ["LOCAL_RANK"] = "0"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("LOCAL_RANK", None)
        else:
            os.environ["LOCAL_RANK"] = old


def score_checkpoint(model, tokenizer, ec, out: Path, named_as: dict[str, str], names: list[str]) -> dict:
    """Run the named harness tasks (or groups, or tags) on one loaded checkpoint; write their samples; return their
    summary (merge_summaries makes a checkpoint's summary.json of its tasks' summaries).

    The model is loaded by domainpt (float32, as its own scorer: the two backends agree on the same items,
    tests/test_harness.py) and handed to lm-eval as an object, which keeps lm-eval in this one process even
    under a launch, where each harness job runs in whichever process it was given to (jobs/runner.py)."""
    lm_eval = require_lm_eval()
    from lm_eval.models.huggingface import HFLM

    logging.getLogger("lm_eval").setLevel(logging.WARNING)
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=ec.batch_size)
    with _as_local_rank_zero():
        res = lm_eval.simple_evaluate(model=lm, tasks=list(names), num_fewshot=ec.harness_fewshot,
                                      limit=ec.harness_limit, task_manager=task_manager(ec.harness_include), log_samples=True,
                                      bootstrap_iters=0)
    if res is None:  # lm-eval returns None where it thinks it is not the process that reports
        raise DomainptError("lm-evaluation-harness returned no results (run evaluate in one process)")
    for task, samples in res["samples"].items():
        rows = sorted((sample_row(s) for s in samples), key=lambda r: (r["filter"], r["doc_id"]))
        atomic_write_jsonl(out / f"{task}.jsonl", rows)
    purpose = harness_tasks(ec)
    return {"results": _plain(res["results"]), "group_subtasks": _plain(res.get("group_subtasks", {})),
            "n_samples": _plain(res.get("n-samples", {})), "versions": _plain(res.get("versions", {})),
            "lm_eval_version": getattr(lm_eval, "__version__", None), "fewshot": ec.harness_fewshot,
            "n_shot": _plain(res.get("n-shot", {})), "limit": ec.harness_limit, "purpose": {n: purpose[n] for n in names},
            "named_as": {leaf: n for leaf, n in named_as.items() if n in names}}  # leaf -> the named task, group or tag


SUMMARY_TABLES = ("results", "group_subtasks", "n_samples", "versions", "n_shot", "purpose", "named_as")


def merge_summaries(parts: list[dict]) -> dict:
    """One checkpoint's summary from the summaries of its harness jobs (one named task each): their tables united,
    the settings they share (lm-eval's version, shots, limit) from the first."""
    merged = dict(parts[0])
    for key in SUMMARY_TABLES:
        merged[key] = {k: v for part in parts for k, v in part[key].items()}
    return merged


def _plain(obj):
    """JSON-safe copy of lm-eval's results ('N/A' strings and numbers pass; tuples become lists)."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    if hasattr(obj, "item") and getattr(obj, "shape", None) == ():  # a numpy scalar: its Python value
        return obj.item()
    return str(obj)
