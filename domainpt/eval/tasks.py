"""Task records -> scored examples, and their deterministic, stratified train/test split.

Every example, whatever the task type, becomes {id, prompt, choices, answer, text}: the model
scores each choice's words after the prompt, and `answer` is the index of the right one.
"""
from __future__ import annotations

import hashlib
import math
from collections import defaultdict
from pathlib import Path

from domainpt.data.ingest import BadRecords, iter_source
from domainpt.errors import DomainptError
from domainpt.manifest import atomic_write_jsonl, read_jsonl


def seeded_rank(seed: int, key: str) -> str:
    """A sort key that orders items the same way on every machine for a given seed."""
    return hashlib.sha1(f"{seed}:{key}".encode()).hexdigest()


def _truncate(tokenizer, text: str, max_tokens: int) -> str:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return text if len(ids) <= max_tokens else tokenizer.decode(ids[:max_tokens]).rstrip() + " ..."


def build_examples(task, tokenizer, bad: BadRecords) -> list[dict]:
    src = task.source
    where = f"task '{task.name}'"
    examples = []
    if task.type == "classification":
        labels = list(task.labels) if task.labels else None
        records = list(iter_source(src, bad))
        if not records:
            raise DomainptError(f"{where}: its source gave no records")
        if any(task.label_field not in r for r in records):
            raise DomainptError(f"{where}: records have no field '{task.label_field}'")
        seen = sorted({str(r[task.label_field]) for r in records})
        labels = labels or seen
        verb = dict(task.verbalizers or {})
        missing = [l for l in verb if l not in labels]
        if missing:
            raise DomainptError(f"{where}: verbalizers name labels not in the task: {missing}")
        unknown = [l for l in labels if l not in seen]
        if unknown:
            raise DomainptError(f"{where}: labels {unknown} do not occur in field '{task.label_field}'")
        choices = [" " + verb.get(l, l) for l in labels]
        for r in records:
            lab = str(r[task.label_field])
            if lab not in labels:
                continue
            text = r[task.text_field] if task.text_field in r else r["text"]
            examples.append({"id": str(r.get("id")), "text": text, "label": lab,
                             "prompt": task.prompt.format(text=_truncate(tokenizer, text, task.max_prompt_tokens)),
                             "choices": choices, "answer": labels.index(lab)})
    else:
        for r in iter_source(src, bad):
            try:
                q, ch, a = r[task.question_field], list(r[task.choices_field]), int(r[task.answer_field])
            except (KeyError, TypeError, ValueError):
                bad.add(str(r.get("id")), f"multiple-choice record lacks {task.question_field}/{task.choices_field}/{task.answer_field}")
                continue
            if not 0 <= a < len(ch):
                bad.add(str(r.get("id")), "answer index out of range")
                continue
            examples.append({"id": str(r.get("id")), "text": q, "label": str(a),
                             "prompt": task.prompt.format(question=_truncate(tokenizer, q, task.max_prompt_tokens), text=q),
                             "choices": [" " + str(c) for c in ch], "answer": a})
    if not examples:
        raise DomainptError(f"{where}: no usable examples")
    return examples


def split_examples(examples: list[dict], test_size: int, train_size: int, seed: int) -> tuple[list, list]:
    """Stratified by label: each label gets test examples in proportion to its frequency (at least one)."""
    by_label = defaultdict(list)
    for ex in sorted(examples, key=lambda e: seeded_rank(seed, e["id"])):
        by_label[ex["label"]].append(ex)
    n = len(examples)
    test, rest = [], []
    for label, items in sorted(by_label.items()):
        k = min(len(items) - 1, max(1, math.floor(test_size * len(items) / n))) if len(items) > 1 else 0
        test += items[:k]
        rest += items[k:]
    rest.sort(key=lambda e: seeded_rank(seed + 1, e["id"]))
    test.sort(key=lambda e: seeded_rank(seed + 2, e["id"]))
    return rest[:train_size], test[:test_size]


def write_split(folder: Path, train: list, test: list) -> None:
    for name, rows in (("train", train), ("test", test)):
        atomic_write_jsonl(Path(folder) / f"{name}.jsonl", rows)


def read_split(folder: Path, name: str) -> list[dict]:
    return read_jsonl(Path(folder) / f"{name}.jsonl")


def read_heldout(prep_dir: Path) -> dict[str, list[str]]:
    """Held-out texts written by prepare, by kind ('domain', 'general'); a kind without a file is absent."""
    return {k: [r["text"] for r in read_jsonl(Path(prep_dir) / f"heldout_{k}.jsonl")]
            for k in ("domain", "general") if (Path(prep_dir) / f"heldout_{k}.jsonl").is_file()}
