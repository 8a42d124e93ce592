"""Short-answer (qa) tasks: the shipped exact-match / token-F1 module against hand values, record
formats, and a tiny run through every stage with a qa task."""
import json

import pytest

from conftest import TINY, cli


def test_qa_metrics_match_hand_values():
    from domainpt.eval.metrics import compute, qa_scores

    # Normalisation drops case, punctuation and articles; the best accepted answer counts.
    assert compute("exact_match", ["The Cat!", "dog", "a red fox"], [["cat"], ["hound"], ["fox", "red fox"]]) == pytest.approx(2 / 3)
    # "big red cat" vs "red cat": precision 2/3, recall 1 -> F1 0.8; "dog" vs "hound": 0.
    assert compute("token_f1", ["big red cat", "dog"], [["red cat"], ["hound"]]) == pytest.approx(0.4)
    assert qa_scores("big red cat", ["red cat", "big red cat"]) == {"exact_match": 1.0, "token_f1": 1.0}


def test_qa_records_squad_style_and_closed_book(tmp_path, tokenizer):
    from domainpt.config import SourceConfig, TaskConfig
    from domainpt.data.ingest import BadRecords
    from domainpt.tasks import build_examples

    p = tmp_path / "qa.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in [
        {"question": "Who wrote it?", "context": "It was written by Ada.", "answers": {"text": ["Ada", "Ada L."], "answer_start": [18, 18]}},
        {"question": "Capital of France?", "answers": "Paris"},
        {"question": "Broken", "answers": []},
    ]) + "\n")
    task = TaskConfig(name="q", type="qa", source=SourceConfig(path=str(p)), prompt="{context}\nQ: {question}\nA:")
    assert task.metric == "token_f1"
    bad = BadRecords(max_share=1.0)
    ex, _ = build_examples(task, tokenizer, bad)
    assert [e["answers"] for e in ex] == [["Ada", "Ada L."], ["Paris"]]
    assert ex[0]["prompt"] == "It was written by Ada.\nQ: Who wrote it?\nA:" and ex[0]["choices"] == [" Ada"]
    assert ex[1]["prompt"] == "\nQ: Capital of France?\nA:"
    assert bad.total == 1 and "qa record lacks" in bad.examples[0]


def test_a_qa_task_runs_through_every_stage(tmp_path):
    rows = [{"question": f"Which code belongs to item {i}?", "context": f"Item {i} has code K{i % 7}.", "answers": [f"K{i % 7}"]}
            for i in range(60)]
    data = tmp_path / "qa.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "run"
    task = (f"tasks=[{{name: codes, type: qa, source: {{path: {data}}}, prompt: \"{{context}}\\nQuestion: {{question}}\\nAnswer:\", "
            f"test_size: 12, train_size: 40, max_answer_tokens: 6}}]")
    r = cli("run", TINY, f"out_dir={out}", task, "train.max_steps=4", "train.eval_every=0", "lora.steps=4")
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((out / "compare" / "results.json").read_text())
    t = res["tasks"]["codes"]
    assert t["metric"] == "token_f1" and t["n_test"] == 12 and t["majority_baseline"] is None
    for m in ("general_model", "domain_model"):
        f = t[m]["finetuned"]
        assert 0 <= f["ci"][0] <= f["mean"] <= f["ci"][1] <= 1 and len(f["seeds"]) == 2
        assert "zero_shot" in t[m]
    preds = [json.loads(l) for l in open(out / "evaluate" / "predictions" / "codes" / "domain_model" / "seed0.jsonl")]
    assert len(preds) == 12 and {"prediction", "answers", "exact_match", "token_f1"} <= set(preds[0])
    scores = json.loads((out / "evaluate" / "scores.json").read_text())["tasks"]["codes"]["domain_model"]["finetuned"]["0"]
    assert scores["token_f1"] == pytest.approx(sum(p["token_f1"] for p in preds) / 12)
