"""LoRA fine-tuning details: same seed -> same adapter, merged export equals the adapter, k-shot scoring."""
import json

import torch
from safetensors.torch import load_file

from conftest import TINY, cli, copy_stages


def _setup(prepared_tiny):
    from domainpt.config import load_recipe
    from domainpt.tasks import read_split
    from domainpt.finetune import training_features
    from domainpt.models import load_tokenizer

    out = prepared_tiny
    base = str(out / "base_model")
    tok = load_tokenizer(base)
    feats = training_features(tok, read_split(out / "prepare" / "tasks" / "licence-category", "train"), 0, 0)
    return load_recipe(TINY, [f"out_dir={out}"]), base, tok, feats


def test_same_seed_gives_the_same_adapter_and_another_seed_does_not(prepared_tiny, tmp_path):
    from domainpt.finetune import train_adapter

    recipe, base, _, feats = _setup(prepared_tiny)
    logs = [train_adapter(recipe, base, feats, seed, tmp_path / f"a{i}", desc="t") for i, seed in enumerate((0, 0, 1))]
    a, b, c = (load_file(str(tmp_path / f"a{i}" / "adapter_model.safetensors")) for i in range(3))
    assert logs[0]["losses"] == logs[1]["losses"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_a_tasks_lora_steps_set_how_long_its_adapters_train(prepared_tiny, tmp_path):
    from dataclasses import replace

    from domainpt.finetune import train_adapter

    recipe, base, _, feats = _setup(prepared_tiny)
    task = replace(recipe.tasks[0], lora_steps=recipe.lora.steps + 3, lora_batch_size=2)
    log = train_adapter(recipe, base, feats, 0, tmp_path / "adapter", desc="t", task=task)
    default = train_adapter(recipe, base, feats, 0, tmp_path / "default", desc="t", task=recipe.tasks[0])
    assert len(log["losses"]) == recipe.lora.steps + 3 and len(default["losses"]) == recipe.lora.steps
    assert log["tokens"] < default["tokens"]  # 9 steps of 2 examples read fewer tokens than 6 of 4


def test_merged_export_predicts_like_the_adapter(prepared_tiny, tmp_path):
    from peft import PeftModel

    from domainpt.finetune import train_adapter
    from domainpt.models import load_model

    recipe, base, tok, feats = _setup(prepared_tiny)
    recipe.lora.merge_export = True
    train_adapter(recipe, base, feats, 0, tmp_path / "adapter", desc="t")
    merged = load_model(str(tmp_path / "merged"), "clm").eval()
    peft = PeftModel.from_pretrained(load_model(base, "clm"), str(tmp_path / "adapter")).eval()
    ids = torch.tensor([feats[0][0]])
    with torch.no_grad():
        assert torch.allclose(merged(input_ids=ids).logits, peft(input_ids=ids).logits, atol=1e-4)
    assert (tmp_path / "merged" / "model.safetensors").is_file() and (tmp_path / "merged" / "tokenizer.json").is_file()


def test_k_shot_scoring_puts_the_same_solved_examples_before_every_prompt(tiny_run, tmp_path):
    from domainpt.eval.stage import with_shots

    ref = tiny_run[0]
    run = copy_stages(ref, tmp_path / "run", "prepare", "pretrain", "finetune")
    r = cli("evaluate", TINY, f"out_dir={run}", "eval.few_shot=2")
    assert r.returncode == 0, r.stderr[-2000:]
    scores = json.loads((run / "evaluate" / "scores.json").read_text())["tasks"]["licence-category"]
    assert scores["general_model"]["zero_shot"]["shots"] == 2 == scores["domain_model"]["zero_shot"]["shots"]
    zs = [json.loads(l) for l in open(run / "evaluate" / "predictions" / "licence-category" / "domain_model" / "zero_shot.jsonl")]
    base_zs = [json.loads(l) for l in open(ref / "evaluate" / "predictions" / "licence-category" / "domain_model" / "zero_shot.jsonl")]
    assert [z["id"] for z in zs] == [z["id"] for z in base_zs] and [z["logliks"] for z in zs] != [z["logliks"] for z in base_zs]
    tests = [{"id": "t", "prompt": "P:", "choices": [" a", " b"], "answer": 1}]
    train = [{"id": str(i), "prompt": f"Q{i}:", "choices": [" a", " b"], "answer": i % 2} for i in range(5)]
    shot = with_shots(tests, train, 2)[0]["prompt"]
    assert shot.endswith("P:") and shot.count("\n\n") == 2 and shot == with_shots(tests, list(reversed(train)), 2)[0]["prompt"]
    assert with_shots(tests, train, 0) == tests


def test_bf16_autocast_is_opt_in_on_cpu_and_changes_only_rounding(prepared_tiny, tmp_path):
    from domainpt.finetune import train_adapter

    recipe, base, _, feats = _setup(prepared_tiny)
    recipe.lora.steps = 3
    logs = {}
    for mp in ("no", "auto", "bf16"):
        recipe.lora.mixed_precision = mp
        logs[mp] = train_adapter(recipe, base, feats, 0, tmp_path / mp, desc="t")["losses"]
    if not torch.cuda.is_available():
        assert logs["auto"] == logs["no"]  # 'auto' is fp32 on a CPU
    assert logs["bf16"] != logs["no"]  # autocast took effect...
    assert abs(logs["bf16"][0] - logs["no"][0]) < 0.02 * logs["no"][0]  # ...and rounds, nothing more


def test_bfloat16_scoring_changes_task_scores_by_rounding_only_and_leaves_perplexity_in_float32(tiny_run, tmp_path):
    ref = tiny_run[0]
    run = copy_stages(ref, tmp_path / "run", "prepare", "pretrain", "finetune")
    r = cli("evaluate", TINY, f"out_dir={run}", "eval.precision=bfloat16")
    assert r.returncode == 0, r.stderr[-2000:]
    new, old = (json.loads((d / "evaluate" / "scores.json").read_text()) for d in (run, ref))
    assert new["perplexity"] == old["perplexity"]
    preds = run / "evaluate" / "predictions" / "licence-category" / "domain_model"
    for name in ("zero_shot.jsonl", "seed0.jsonl"):
        a = [json.loads(l) for l in open(preds / name)]
        b = [json.loads(l) for l in open(ref / "evaluate" / "predictions" / "licence-category" / "domain_model" / name)]
        diffs = [abs(x - y) for ra, rb in zip(a, b) for x, y in zip(ra["logliks"], rb["logliks"])]
        assert 0 < max(diffs) < 1.0, name  # bfloat16 was used, and it only rounds


def test_auto_precision_takes_bfloat16_only_where_the_cpu_computes_it_natively(monkeypatch):
    from domainpt.eval.stage import scoring_dtype

    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)
    assert scoring_dtype("auto", "cpu") == torch.bfloat16
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)  # AVX2 only: emulated, 5.7x slower
    assert scoring_dtype("auto", "cpu") == torch.float32
    assert scoring_dtype("bfloat16", "cpu") == torch.bfloat16 and scoring_dtype("float32", "cpu") == torch.float32


def test_merged_adapter_scoring_gives_the_unmerged_adapters_scores(tiny_run):
    """evaluate folds each adapter into a copy of its base before scoring (faster on a CPU): the rows must be
    the ones peft's unmerged LoRA layers give."""
    from peft import PeftModel

    from domainpt.encoding import end_of_text_id
    from domainpt.eval.scoring import score_examples
    from domainpt.models import load_model, load_tokenizer
    from domainpt.tasks import read_split

    out = tiny_run[0]
    base = str(out / "pretrain" / "model")
    tok = load_tokenizer(base)
    tests = read_split(out / "prepare" / "tasks" / "licence-category", "test")
    for seed in (0, 1):
        adapter = out / "finetune" / "licence-category" / "domain_model" / f"seed{seed}" / "adapter"
        unmerged = PeftModel.from_pretrained(load_model(base, "clm"), str(adapter))
        eot = end_of_text_id(tok)
        want = score_examples(unmerged, tok, tests, eot, batch_size=4, end_of_text=eot)
        got = [json.loads(l) for l in open(out / "evaluate" / "predictions" / "licence-category" / "domain_model" / f"seed{seed}.jsonl")]
        assert [r["pred"] for r in got] == [r["pred"] for r in want]
        assert max(abs(x - y) for a, b in zip(got, want) for x, y in zip(a["logliks"], b["logliks"])) < 1e-3
