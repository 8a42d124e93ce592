"""Task splits: training examples whose input is a near duplicate of a test input are a leak, like exact copies."""
import json
import random

import pytest

from conftest import cli, tiny_recipe_variant
from domainpt.config import DedupConfig, SourceConfig, TaskConfig
from domainpt.data.dedup import near_duplicates_across, shingle_set
from domainpt.data.ingest import BadRecords
from domainpt.errors import DomainptError
from domainpt.tasks import build_examples, split_examples, split_task, task_splits

VOCAB = [f"w{i}" for i in range(500)]


def text(seed: int, n: int = 150) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(VOCAB) for _ in range(n))


def edit(t: str, positions) -> str:
    """`t` with the words at `positions` replaced by words no text has."""
    ws = t.split()
    for p in positions:
        ws[p] = f"changed{p}"
    return " ".join(ws)


def jaccard(a: str, b: str) -> float:
    x, y = shingle_set(a, 5), shingle_set(b, 5)
    return len(x & y) / len(x | y)


def jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def task_of(tmp_path, rows, test_rows=None, **kw) -> TaskConfig:
    test = SourceConfig(path=jsonl(tmp_path / "test.jsonl", test_rows)) if test_rows else None
    return TaskConfig(name="planted", source=SourceConfig(path=jsonl(tmp_path / "train.jsonl", rows)), test_source=test,
                      max_prompt_tokens=4096, test_size=kw.pop("test_size", 20), train_size=kw.pop("train_size", 200), **kw)


def test_planted_near_duplicates_above_the_threshold_are_dropped_and_those_below_kept(tmp_path, tokenizer):
    near, far = [60, 100], [10, 28, 46, 64, 82, 100, 118, 136]  # 2 words changed: Jaccard ~0.87; 8 spread: ~0.57
    assert jaccard(text(0), edit(text(0), near)) > 0.8 > 0.6 > jaccard(text(0), edit(text(0), far))
    rows = [{"id": f"o{i}", "text": text(i), "label": "ab"[i % 2]} for i in range(40)]
    rows += [{"id": f"n{i}", "text": edit(text(i), near), "label": "ab"[i % 2]} for i in range(40)]
    rows += [{"id": f"f{i}", "text": edit(text(i), far), "label": "ab"[i % 2]} for i in range(40)]
    task = task_of(tmp_path, rows)
    train, test, removed = split_task(task, tokenizer, BadRecords(), seed=0, dedup=DedupConfig(threshold=0.8))

    # what the split was before the check, to know which planted copies ended up on opposite sides
    before_train, before_test = split_examples(build_examples(task, tokenizer, BadRecords())[0], 20, 200, 0)
    side = {e["id"]: "test" for e in before_test} | {e["id"]: "train" for e in before_train}
    leaks = {a for a in side if side[a] == "train" and a[0] in "on"
             and side.get(("n" if a[0] == "o" else "o") + a[1:]) == "test"}
    assert leaks and removed == {"exact": 0, "near": len(leaks)}
    assert {e["id"] for e in train} == {e["id"] for e in before_train} - leaks
    assert [e["id"] for e in test] == [e["id"] for e in before_test]
    kept_far = [e["id"] for e in train if e["id"][0] == "f" and side.get("o" + e["id"][1:]) == "test"]
    assert kept_far  # below the threshold: not a leak
    assert all("seen" not in e for e in train + test)
    again = split_task(task, tokenizer, BadRecords(), seed=0, dedup=DedupConfig(threshold=0.8))
    assert again == (train, test, removed)  # deterministic


def test_a_lower_threshold_catches_the_looser_copies_too(tmp_path, tokenizer):
    rows = [{"id": f"o{i}", "text": text(i), "label": "x"} for i in range(30)]
    rows += [{"id": f"f{i}", "text": edit(text(i), [10, 28, 46, 64, 82, 100, 118, 136]), "label": "x"} for i in range(30)]
    task = task_of(tmp_path, rows, test_size=15)
    train, test, removed = split_task(task, tokenizer, BadRecords(), seed=0, dedup=DedupConfig(threshold=0.5))
    test_ids = {e["id"] for e in test}
    assert removed["near"] > 0
    assert not any(("o" + e["id"][1:] if e["id"][0] == "f" else "f" + e["id"][1:]) in test_ids for e in train)


def test_the_prompt_text_is_compared_not_the_full_record(tmp_path, tokenizer):
    """Two records with the same opening but different endings give the model the same (cut) input: a leak."""
    head = text(1, 60)
    rows = [{"id": "a", "text": head + " " + text(2, 200), "label": "x"}, {"id": "b", "text": head + " " + text(3, 200), "label": "y"}]
    tests = [{"id": "t", "text": rows[0]["text"].replace(text(2, 200), text(4, 200)), "label": "x"}]
    assert jaccard(rows[0]["text"], tests[0]["text"]) < 0.3
    task = TaskConfig(name="cut", source=SourceConfig(path=jsonl(tmp_path / "tr.jsonl", rows)),
                      test_source=SourceConfig(path=jsonl(tmp_path / "te.jsonl", tests)), train_test_overlap="drop",
                      max_prompt_tokens=32, test_size=5, train_size=5)
    train, test, removed = split_task(task, tokenizer, BadRecords(), seed=0)
    assert removed == {"exact": 0, "near": 2} and train == [] and len(test) == 1


def test_separate_test_source_near_duplicate_is_an_error_unless_dropped(tmp_path, tokenizer):
    train_rows = [{"id": f"tr{i}", "text": text(100 + i), "label": "ab"[i % 2]} for i in range(10)]
    test_rows = [{"id": f"te{i}", "text": text(200 + i), "label": "ab"[i % 2]} for i in range(4)]
    train_rows.append({"id": "copy", "text": edit(test_rows[2]["text"], [75]), "label": "a"})
    task = task_of(tmp_path, train_rows, test_rows)
    with pytest.raises(DomainptError) as e:
        task_splits(task, tokenizer, BadRecords(), seed=0)
    msg = str(e.value)
    assert "task 'planted'" in msg and "1 training examples are near duplicates" in msg and "train copy ~ test te2" in msg
    assert "train_test_overlap: drop" in msg and "\n" not in msg

    train, test, removed = split_task(task_of(tmp_path, train_rows, test_rows, train_test_overlap="drop"),
                                      tokenizer, BadRecords(), seed=0)
    assert removed == {"exact": 0, "near": 1} and len(train) == 10 and "copy" not in {e["id"] for e in train}


def test_texts_shorter_than_a_shingle_match_only_the_same_words_in_order():
    a = ["Short text", "the cat sat down", "one two three four", "", "   "]
    b = ["short, TEXT!", "the cat sat down today", "four three two one", "", "x"]
    assert [(i, j) for i, j, _ in near_duplicates_across(a, b, 0.5)] == [(0, 0)]


def test_near_duplicate_counts_reach_stats_json_and_the_data_card(tmp_path):
    rows = [{"id": f"tr{i}", "text": text(300 + i), "label": "ab"[i % 2]} for i in range(12)]
    tests = [{"id": f"te{i}", "text": text(400 + i), "label": "ab"[i % 2]} for i in range(6)]
    rows += [{"id": f"copy{i}", "text": edit(tests[i]["text"], [70]), "label": tests[i]["label"]} for i in range(3)]
    rows.append({"id": "same", "text": tests[4]["text"], "label": tests[4]["label"]})

    def add_task(recipe):
        recipe["tasks"].append({"name": "planted", "type": "classification", "train_test_overlap": "drop",
                                "source": {"path": jsonl(tmp_path / "train.jsonl", rows)},
                                "test_source": {"path": jsonl(tmp_path / "test.jsonl", tests)},
                                "max_prompt_tokens": 256, "test_size": 10, "train_size": 40})

    r = cli("prepare", tiny_recipe_variant(tmp_path, add_task))
    assert r.returncode == 0, r.stderr[-3000:]
    prep = tmp_path / "run" / "prepare"
    t = json.loads((prep / "stats.json").read_text())["tasks"]
    assert t["planted"]["train_test_overlap_removed"] == 1 and t["planted"]["near_duplicate_overlap_removed"] == 3
    assert t["planted"]["train"] == 12 and t["planted"]["test"] == 6
    assert isinstance(t["licence-category"]["near_duplicate_overlap_removed"], int)
    card = (prep / "data_card.md").read_text()
    assert "near-duplicate overlap removed (word 5-gram Jaccard >= 0.8)" in card and "| planted | 12 | 6 | 1 | 3 | 2 |" in card


def test_a_list_of_choices_stays_a_list_of_whole_choices(tokenizer):
    """A multiple-choice source whose choices are one list-valued field (the ICD-10-CM probe, CaseHOLD's
    endings) gives whole strings as choices, not the characters of their newline-joined text."""
    task = TaskConfig(name="probe", type="multiple_choice", source=SourceConfig(builtin="icd10cm-probe", max_docs=5),
                      prompt="ICD-10-CM code {question} is:")
    examples, _ = build_examples(task, tokenizer, BadRecords())
    first = examples[0]
    assert len(first["choices"]) == 4 and all(len(c.split()) >= 1 and len(c) > 3 for c in first["choices"])
    assert first["choices"][first["answer"]] == " Cholera due to Vibrio cholerae 01, biovar cholerae"
