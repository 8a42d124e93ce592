"""Task records -> scored examples, and their deterministic, stratified train/test split.

Every example, whatever the task type, becomes {id, prompt, choices, answer, text}: the model
scores each choice's words after the prompt, and `answer` is the index of the right one.
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
import string
from collections import defaultdict
from pathlib import Path

from domainpt.config import DedupConfig
from domainpt.data.dedup import near_duplicates_across
from domainpt.data.ingest import BadRecords, field_value, iter_source
from domainpt.encoding import end_of_text_id
from domainpt.errors import DomainptError
from domainpt.layout import task_dir
from domainpt.manifest import atomic_write_jsonl, read_jsonl


def seeded_rank(seed: int, key: str) -> str:
    """A sort key that orders items the same way on every machine for a given seed."""
    return hashlib.sha1(f"{seed}:{key}".encode()).hexdigest()


def _truncate(tokenizer, text: str, max_tokens: int) -> str:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return text if len(ids) <= max_tokens else tokenizer.decode(ids[:max_tokens]).rstrip() + " ..."


def _prompt(task, record: dict, **fill) -> tuple[str, str]:
    """The task's prompt with {text}/{question} and any other top-level text field of the record filled in,
    and what the record put into it (its fields only, one a line): the input the train/test overlap check compares."""
    fields = {**{k: v for k, v in record.items() if isinstance(v, str)}, **fill}
    try:
        return task.prompt.format(**fields), _fields_only(task.prompt).format(**fields)
    except (KeyError, IndexError) as e:
        raise DomainptError(f"task '{task.name}': the prompt names {e} but the records have no such text field") from None


def _fields_only(template: str) -> str:
    """The template without its fixed words: those are in every prompt and would only make unrelated ones look alike."""
    return "\n".join("{" + name + (f"!{conv}" if conv else "") + (f":{spec}" if spec else "") + "}"
                     for _, name, spec, conv in string.Formatter().parse(template) if name is not None)


def build_examples(task, tokenizer, bad: BadRecords, source=None, labels: list | None = None) -> tuple[list[dict], list | None]:
    """Examples of one task from `source` (default: task.source), and the label list (classification).

    `labels` fixes the label list (e.g. the training split's, when the test split is a separate file)."""
    src = source or task.source
    if src.text_field == "text":  # the source's main text is the task's input field unless the source names one
        src = dataclasses.replace(src, text_field=task.text_field if task.type == "classification" else task.question_field)
    where = f"task '{task.name}' ({src.path or src.builtin or src.hf})"
    examples = []
    if task.type == "classification":
        records = list(iter_source(src, bad))
        if not records:
            raise DomainptError(f"{where}: its source gave no records")
        if any(field_value(r, task.label_field) is None for r in records):
            raise DomainptError(f"{where}: records have no field '{task.label_field}'")
        seen = sorted({str(field_value(r, task.label_field)) for r in records})
        if labels is not None and not task.labels:
            labels = labels + [l for l in seen if l not in labels]  # a label only the test set has still gets a choice
        labels = list(task.labels) if task.labels else (labels or seen)
        verb = dict(task.verbalizers or {})
        extra = [l for l in verb if l not in labels]
        if extra:
            raise DomainptError(f"{where}: tasks.verbalizers name labels not in the task: {extra}")
        uncovered = [l for l in labels if verb and l not in verb]
        if uncovered:
            raise DomainptError(f"{where}: labels {uncovered} have no entry in the task's verbalizers")
        if source is None:
            absent = [l for l in labels if l not in seen]
            if absent:
                raise DomainptError(f"{where}: labels {absent} do not occur in field '{task.label_field}'")
        choices = [" " + verb.get(l, l) for l in labels]
        for r in records:
            lab = str(field_value(r, task.label_field))
            if lab not in labels:
                continue
            text = field_value(r, task.text_field) if field_value(r, task.text_field) is not None else r["text"]
            prompt, seen = _prompt(task, r, text=_truncate(tokenizer, text, task.max_prompt_tokens))
            examples.append({"id": str(r.get("id")), "text": text, "label": lab, "prompt": prompt, "seen": seen,
                             "choices": choices, "answer": labels.index(lab)})
    elif task.type == "qa":
        for r in iter_source(src, bad):
            q, ctx = field_value(r, task.question_field), field_value(r, task.context_field)
            answers = field_value(r, task.answers_field, join=False)
            if isinstance(answers, dict):  # SQuAD: {"text": [...], "answer_start": [...]}
                answers = answers.get("text")
            answers = [answers] if isinstance(answers, str) else answers
            if not isinstance(q, str) or not answers or not all(isinstance(a, str) and a.strip() for a in answers) \
                    or not isinstance(ctx, (str, type(None))):
                bad.add(str(r.get("id")), f"qa record lacks {task.question_field}/{task.answers_field} (or they are not text)")
                continue
            short = _truncate(tokenizer, ctx or "", task.max_prompt_tokens)
            prompt, seen = _prompt(task, r, question=q, context=short, text=short)
            examples.append({"id": str(r.get("id")), "text": f"{ctx or ''}\n{q}".strip(), "label": "qa",
                             "prompt": prompt, "seen": seen,
                             "choices": [" " + answers[0].strip()], "answer": 0, "answers": list(answers)})
    else:
        for r in iter_source(src, bad):
            try:
                q, a = field_value(r, task.question_field), int(field_value(r, task.answer_field))
                cf = task.choices_field
                ch = [field_value(r, f) for f in cf] if isinstance(cf, list) else list(field_value(r, cf, join=False))
                if not isinstance(q, str) or any(c is None for c in ch):
                    raise TypeError
            except (KeyError, TypeError, ValueError):
                bad.add(str(r.get("id")), f"multiple-choice record lacks {task.question_field}/{task.choices_field}/{task.answer_field}")
                continue
            if not 0 <= a < len(ch):
                bad.add(str(r.get("id")), "answer index out of range")
                continue
            short = _truncate(tokenizer, q, task.max_prompt_tokens)
            prompt, seen = _prompt(task, r, question=short, text=short)
            examples.append({"id": str(r.get("id")), "text": q, "label": str(a), "prompt": prompt, "seen": seen,
                             "choices": [" " + str(c) for c in ch], "answer": a})
    if not examples:
        raise DomainptError(f"{where}: no usable examples")
    return examples, labels


def task_splits(task, tokenizer, bad: BadRecords, seed: int, dedup=None) -> tuple[list, list, int]:
    """(train, test, examples removed from train for overlapping the test set, exact and near duplicates)."""
    train, test, removed = split_task(task, tokenizer, bad, seed, dedup)
    return train, test, removed["exact"] + removed["near"]


def split_task(task, tokenizer, bad: BadRecords, seed: int, dedup=None) -> tuple[list, list, dict]:
    """(train, test, {"exact": n, "near": m} training examples removed). A task with a test_source keeps that
    file as its test set; otherwise the source is split. Train texts that also occur in the test set, or are
    near duplicates of a test text (`dedup`'s MinHash threshold, shingle_words and num_perm; default
    DedupConfig()), are a leak: from a split they are dropped (duplicates in one source), from a separate
    test file they are an error unless tasks.train_test_overlap says 'drop'."""
    dedup = dedup or DedupConfig()
    examples, labels = build_examples(task, tokenizer, bad)
    if task.test_source is None:
        train, test = split_examples(examples, task.test_size, task.train_size, seed)
        policy = "drop"
    else:
        test_ex, all_labels = build_examples(task, tokenizer, bad, task.test_source, labels)
        if task.type == "classification" and all_labels != labels:  # same choices, same order, for both splits
            for e in examples:
                e["choices"], e["answer"] = test_ex[0]["choices"], all_labels.index(e["label"])
        test = sorted(test_ex, key=lambda e: seeded_rank(seed + 2, e["id"]))[:task.test_size]
        train = sorted(examples, key=lambda e: seeded_rank(seed + 1, e["id"]))[:task.train_size]
        policy = task.train_test_overlap
    test_texts = {e["text"] for e in test}
    exact = [e for e in train if e["text"] in test_texts]
    train = [e for e in train if e["text"] not in test_texts]
    near = near_overlap(train, test, dedup)
    if (exact or near) and policy == "error":
        raise DomainptError(_overlap_error(task, exact, near, dedup))
    leaked = {id(e) for e, _, _ in near}
    train = [e for e in train if id(e) not in leaked]
    for e in train + test:
        e.pop("seen", None)  # only the overlap check needs it
    return train, test, {"exact": len(exact), "near": len(near)}


def near_overlap(train: list[dict], test: list[dict], dedup) -> list[tuple[dict, dict, float]]:
    """(train example, its most similar test example, word-shingle Jaccard) for each training example whose
    input is a near duplicate of a test example's, in training order.

    The input compared is what the prompt shows (e["seen"]: the text cut to max_prompt_tokens, and any other
    field the prompt names), not the record's full text: leakage is about what the model reads, and two
    records that differ only after the cut give it the same input. A text shorter than one shingle is one
    shingle, its whole word sequence (as in the corpus near-dedup): it matches only the same words in the
    same order, since word sets of a few words overlap by chance (2 of 3 words shared is already 0.5)."""
    pairs = near_duplicates_across([e["seen"] for e in train], [e["seen"] for e in test],
                                   dedup.threshold, dedup.num_perm, dedup.shingle_words)
    best = {}
    for i, j, sim in pairs:  # sorted by (i, j): ties go to the first test example
        if i not in best or sim > best[i][1]:
            best[i] = (j, sim)
    return [(train[i], test[j], sim) for i, (j, sim) in sorted(best.items())]


def _overlap_error(task, exact: list, near: list, dedup) -> str:
    found = []
    if exact:
        src = task.test_source
        found.append(f"{len(exact)} training examples also appear in the test set ({src.path or src.builtin or src.hf}), "
                     f"e.g. {exact[0]['id']}")
    if near:
        a, b, sim = near[0]
        found.append(f"{len(near)} training examples are near duplicates of a test example (word {dedup.shingle_words}-gram "
                     f"Jaccard >= {dedup.threshold}), e.g. train {a['id']} ~ test {b['id']} ({sim:.2f})")
    return f"task '{task.name}': " + "; ".join(found) + "; fix the data or set train_test_overlap: drop on the task"


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


def head_setup(recipe, task, objective: str, tok) -> dict | None:
    """For a task scored with a classification head: its label count, pad id and whether the model is an encoder."""
    if task.scoring != "head":
        return None
    encoder = objective == "mlm"
    pad = tok.pad_token_id if encoder and tok.pad_token_id is not None else end_of_text_id(tok)
    examples = read_split(task_dir(recipe, task.name), "test")
    return {"num_labels": len(examples[0]["choices"]), "pad_id": pad, "encoder": encoder}
