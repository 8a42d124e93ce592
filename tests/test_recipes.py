"""Shipped recipes: each dry-runs offline, the FLOPs estimate is right, every dataset has a card.
The hub datasets they name are read from stand-ins with the real features in test_hub_fixtures.py."""
import json
import re

import pytest

from conftest import ROOT, cli

RECIPES = sorted(p for p in (ROOT / "recipes").rglob("*.yaml") if "accelerate" not in p.parts)
FULL = [ROOT / "recipes" / f"{d}.yaml" for d in ("medical", "legal", "financial")]


def test_the_three_full_recipes_exist_and_use_hub_data():
    from domainpt.config import load_recipe

    for path in FULL:
        r = load_recipe(path)
        assert all(s.hf for s in r.data.domain + r.data.general), path
        assert len(r.tasks) >= 2 and all(t.source.hf for t in r.tasks)
        assert r.data.replay_share > 0 and r.train.max_general_ppl_rise is not None


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_every_recipe_dry_runs_offline(path, monkeypatch):
    from domainpt.config import load_recipe
    from domainpt.plan import build_plan, format_plan

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    plan = build_plan(load_recipe(path), processes=8)
    assert plan["pretrain"]["tokens"] > 0 and plan["total_gpu_hours"] > 0 and plan["disk_total_bytes"] > 0
    text = format_plan(plan)
    assert "H100-hours" in text and "prepare" in text and "disk" in text


def test_dry_run_through_the_cli_writes_nothing(tmp_path):
    out = tmp_path / "run"
    r = cli("run", FULL[0], f"out_dir={out}", "--dry-run", "--processes", "8", "--gpu", "A100")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "2,000 steps x 1,048,576 tokens/step on 8 process(es) = 2.1B tokens" in r.stdout
    assert "A100-hours" in r.stdout and not out.exists()


def test_dry_run_flops_match_6N_plus_attention_for_smollm2_1_7b():
    """SmolLM2-1.7B by hand: 24 layers of (4 H^2 attention + 3 H I MLP) plus the (tied) output head V H."""
    from domainpt.config import load_recipe
    from domainpt.plan import build_plan

    H, I, L, V, T = 2048, 8192, 24, 49152, 2048
    n = L * (4 * H * H + 3 * H * I) + V * H
    recipe = load_recipe(FULL[0])
    plan = build_plan(recipe, processes=8)
    tokens = 2000 * 8 * 8 * 8 * T
    assert plan["pretrain"]["tokens"] == tokens
    expected = (6 * n + 12 * L * H * T) * tokens
    assert abs(plan["pretrain"]["flops"] / expected - 1) < 0.05
    assert abs(plan["pretrain"]["flops"] / (6 * n * tokens) - 1) < 0.15  # attention adds ~12% at 2048 tokens


def test_dry_run_counts_a_tasks_own_lora_steps():
    """The medical demo with its chapter task at 36 LoRA steps and its probe at lora.steps (12): the plan says so per
    task, and its fine-tuning tokens are those steps' tokens, not lora.steps' for every task."""
    from dataclasses import replace

    from domainpt.config import load_recipe
    from domainpt.plan import build_plan, format_plan

    recipe = load_recipe(ROOT / "recipes" / "demo" / "medical.yaml", ["tasks.0.lora_steps=36"])
    plan = build_plan(recipe)
    assert [(t["name"], t["lora_steps"]) for t in plan["tasks"]] == [("icd10-chapter", 36), ("icd10-code-probe", 12)]
    assert "icd10-chapter (classification): builtin:icd10cm-codes; LoRA 36 steps x 8 examples" in format_plan(plan)
    uniform = build_plan(replace(recipe, tasks=[replace(t, lora_steps=None) for t in recipe.tasks]))
    # 24 more steps of 8 examples of the chapter task's (24 prompt + 16 answer) tokens, for 3 models x 4 seeds
    assert plan["finetune"]["tokens"] - uniform["finetune"]["tokens"] == 3 * 4 * (36 - 12) * 8 * (24 + 16)


def test_unknown_gpu_and_offline_unknown_model_are_one_line_errors(tmp_path):
    r = cli("run", FULL[0], "--dry-run", "--gpu", "TPUv9")
    assert r.returncode == 2 and "unknown GPU 'TPUv9'" in r.stderr
    r = cli("run", FULL[0], "model.base=someone/unknown-model", "--dry-run", env={"HF_HUB_OFFLINE": "1"})
    assert r.returncode == 2 and "--dry-run needs the config of 'someone/unknown-model' offline" in r.stderr


def _hub_ids(recipe):
    srcs = recipe.data.domain + recipe.data.general + [s for t in recipe.tasks for s in (t.source, t.test_source) if s]
    return {s.hf for s in srcs if s.hf}, {s.builtin for s in srcs if s.builtin}


def test_every_dataset_a_recipe_names_has_a_card():
    from domainpt.config import load_recipe

    cards = ROOT / "data_cards"
    for path in RECIPES:
        hub, builtin = _hub_ids(load_recipe(path))
        for h in hub:
            card = cards / "hub" / (h.replace("/", "__") + ".md")
            assert card.is_file(), f"{path.name}: no card for {h}"
            text = card.read_text()
            for needed in ("| licence |", "| size |", "| language |", "Known biases", "Contamination risks", "Links",
                           "dataset's own documentation", "measured by domainpt"):
                assert needed in text, f"{card.name} lacks {needed!r}"
        for b in builtin:
            assert (cards / f"{b}.md").is_file(), f"{path.name}: no card for builtin {b}"


def test_the_scale_guide_lists_every_recipe_with_its_launch_command():
    readme = (ROOT / "docs" / "scale.md").read_text()
    for path in FULL:
        rel = path.relative_to(ROOT)
        assert re.search(rf"accelerate launch .*-m domainpt pretrain {re.escape(str(rel))}", readme), rel
        assert f"domainpt run {rel} --dry-run" in readme


def test_separate_test_source_with_a_label_only_it_has(tmp_path, tokenizer):
    from domainpt.config import TaskConfig, SourceConfig
    from domainpt.data.ingest import BadRecords
    from domainpt.tasks import task_splits

    def write(name, labels):
        p = tmp_path / f"{name}.jsonl"
        p.write_text("".join(json.dumps({"text": f"{name} example {i}", "label": l}) + "\n" for i, l in enumerate(labels)))
        return str(p)

    task = TaskConfig(name="t", source=SourceConfig(path=write("train", ["a", "b"] * 5)),
                      test_source=SourceConfig(path=write("test", ["a", "b", "c"])), test_size=10, train_size=10)
    train, test, overlap = task_splits(task, tokenizer, BadRecords(), seed=0)
    assert overlap == 0 and len(train) == 10 and len(test) == 3
    assert all(e["choices"] == [" a", " b", " c"] for e in train + test)
    assert {e["label"]: e["answer"] for e in train + test} == {"a": 0, "b": 1, "c": 2}


def test_own_data_example_of_the_readme_prepares_from_plain_files(tmp_path):
    """The guide's worked example, on generated files laid out as the guide says."""
    import random

    rng = random.Random(0)
    it = "server restart password reset printer queue vpn certificate mailbox disk quota ticket outage patch".split()
    gen = "river history music garden school market village science travel weather painting library".split()
    for folder, words, n in (("my_corpus", it, 30), ("my_general", gen, 15)):
        (tmp_path / folder).mkdir()
        for i in range(n):
            (tmp_path / folder / f"doc{i}.txt").write_text(f"Note {i}. " + " ".join(rng.choice(words) for _ in range(60)) + ".")
    (tmp_path / "my_tasks").mkdir()
    rows = ["text,label"] + [f"\"{' '.join(rng.choice(it) for _ in range(12))} (#{i})\",{rng.choice(['network', 'desktop', 'accounts'])}"
                             for i in range(90)]
    (tmp_path / "my_tasks" / "tickets.csv").write_text("\n".join(rows) + "\n")
    r = cli("prepare", ROOT / "recipes" / "examples" / "own_data.yaml", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    out = tmp_path / "runs" / "support-tickets" / "prepare"
    stats = json.loads((out / "stats.json").read_text())
    t = stats["tasks"]["ticket-team"]
    assert 18 <= t["test"] <= 20 and t["train"] == 60  # stratified: each label rounds down
    assert set(stats["sources"]) == {"my_corpus", "my_general"}
    assert (out / "data_card.md").is_file() and (out / "manifest.json").is_file()


def test_the_encoder_plan_counts_one_window_per_pseudo_perplexity_token(monkeypatch):
    from domainpt.config import load_recipe
    from domainpt.plan import build_plan

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    recipe = load_recipe(ROOT / "recipes" / "examples" / "bert_medical.yaml")
    plan = build_plan(recipe, processes=8)
    assert plan["model"]["objective"] == "mlm"
    assert plan["evaluate"]["tokens"] >= 2 * 2 * recipe.eval.ppl_max_tokens * recipe.eval.ppl_window


def test_make_demo_powered_means_7_seeds_and_36_chapter_steps():
    """`make demo-powered` is the medical demo through command-line overrides; a reordered or renamed task in the
    recipe would silently lengthen the wrong task's fine-tuning, so the Makefile's overrides are read here."""
    import shlex

    from domainpt.config import load_recipe

    line = next(l for l in (ROOT / "Makefile").read_text().splitlines() if l.startswith("POWERED :="))
    recipe = load_recipe(ROOT / "recipes" / "demo" / "medical.yaml", shlex.split(line.split(":=", 1)[1]))
    assert recipe.lora.seeds == list(range(7)) and recipe.out_dir.endswith("medical-powered")
    assert [(t.name, recipe.lora.for_task(t).steps) for t in recipe.tasks] == [("icd10-chapter", 36), ("icd10-code-probe", 12)]
