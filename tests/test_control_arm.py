"""compare.control=continued_general: the general model continued on general text only, for the domain run's
budget, then fine-tuned and scored as a third model (Don't Stop Pretraining's control, Gururangan et al. 2020).

One tiny `domainpt run` with the control on (module fixture: killed once in the control's pre-training, then
rerun to the end); every assertion reads its files.
"""
import json
import signal
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from conftest import TINY, built_once, cli, copy_stages, review_examples, write_harness_task
from domainpt.config import load_recipe
from domainpt.layout import MODELS, models_of
from domainpt.manifest import ALL_STAGES, STAGE_SECTIONS, invalidate, run_stages
from domainpt.plan import build_plan, format_plan

CONTROL = "compare.control=continued_general"
TASK = "licence-category"


def _harness_overrides(tasks_dir: Path) -> list[str]:
    """A small local lm-eval task: the harness scores the control model too."""
    return ["eval.harness_tasks=[local_reviews]", f"eval.harness_include={tasks_dir}"]


@pytest.fixture(scope="module")
def control_run(tmp_path_factory):
    """(out_dir, the finishing run, metrics.jsonl of the control as the kill at step 6 left it); built once per session."""
    def build(folder):
        harness = _harness_overrides(write_harness_task(folder / "harness_tasks", review_examples(24), "local_reviews"))
        out = folder / "run"
        killed = cli("run", TINY, f"out_dir={out}", CONTROL, *harness, env={"DOMAINPT_FAULT": "pretrain_control.step_end@6"})
        assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
        before_kill = [json.loads(l) for l in open(out / "pretrain_control" / "metrics.jsonl")]
        r = cli("run", TINY, f"out_dir={out}", CONTROL, *harness)
        assert r.returncode == 0, r.stderr[-3000:]
        (folder / "outcome.json").write_text(json.dumps({"stdout": r.stdout, "stderr": r.stderr, "before_kill": before_kill}))

    folder = built_once(tmp_path_factory, "control_run", build)
    outcome = json.loads((folder / "outcome.json").read_text())
    return folder / "run", SimpleNamespace(stdout=outcome["stdout"], stderr=outcome["stderr"]), outcome["before_kill"]


@pytest.fixture(scope="module")
def harness(control_run):
    return _harness_overrides(control_run[0].parent / "harness_tasks")


def _weights(folder):
    return load_file(str(folder / "model.safetensors"))


def _differ(a, b):
    assert a.keys() == b.keys()
    return any(not torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def _manifest(out, stage):
    return json.loads((out / stage / "manifest.json").read_text())


def _norm(text):
    return " ".join(text.split())


def test_control_model_is_trained_from_the_base_and_differs_from_the_domain_model(control_run):
    out, r, _ = control_run
    base = _weights(Path(_manifest(out, "prepare")["base_model"]))
    control, domain = _weights(out / "pretrain_control" / "model"), _weights(out / "pretrain" / "model")
    assert _differ(control, base) and _differ(control, domain)
    assert (out / "pretrain_control" / "metrics.jsonl").is_file() and (out / "pretrain_control" / "checkpoints").is_dir()
    assert "pretrain_control plan (control arm" in r.stdout


def test_control_blocks_hold_general_documents_only(control_run):
    from domainpt.data.builtin import read_builtin
    from domainpt.data.pack import PackedBlocks
    from domainpt.models import load_tokenizer

    out = control_run[0]
    prep = out / "prepare"
    blocks = PackedBlocks(prep / "train_control")
    tok = load_tokenizer(_manifest(out, "prepare")["base_model"])
    texts = [_norm(tok.decode(blocks.document(j))) for j in range(len(blocks.doc_ends))]
    domain = [_norm(r["text"]) for r in read_builtin("scancode-licenses")]
    general = [_norm(r["text"]) for r in read_builtin("wikipedia-sample")]
    heldout = [_norm(json.loads(l)["text"]) for l in open(prep / "heldout_general.jsonl")]
    for t in texts:  # a 200-character opening identifies a document
        key = t[:200]
        assert not any(key in d for d in domain), key
        assert any(key in g for g in general), key  # the check can see a match: general text is found
        assert not any(key in h for h in heldout), key  # held-out text is never trained on
    stats = json.loads((prep / "stats.json").read_text())["control"]
    meta = blocks.meta
    assert meta["sources"] == {"wikipedia-sample": meta["tokens"]}
    assert stats["tokens_out"] == meta["tokens"] and stats["blocks"] == len(blocks) and stats["documents"] == len(texts)
    assert stats["epochs"] == pytest.approx(stats["pretrain_tokens"] / (len(blocks) * blocks.seq_len), abs=1e-3)
    assert "train_control_tokens_sha256" in _manifest(out, "prepare")["outputs"]


def test_same_steps_tokens_schedule_as_the_domain_pretraining(control_run):
    out = control_run[0]
    dom, ctl = _manifest(out, "pretrain"), _manifest(out, "pretrain_control")
    assert (dom["arm"], ctl["arm"], ctl["data"]) == ("domain", "control", "train_control")
    for k in ("steps", "tokens", "tokens_per_step", "flops"):
        assert ctl[k] == dom[k], k
    lr = [[json.loads(l)["lr"] for l in open(out / s / "metrics.jsonl")] for s in ("pretrain", "pretrain_control")]
    assert lr[0] == lr[1] and len(lr[0]) == dom["steps"]


def test_control_model_is_fine_tuned_and_scored_like_the_others(control_run):
    out = control_run[0]
    seeds = load_recipe(TINY).lora.seeds
    preds = out / "evaluate" / "predictions" / TASK
    for seed in seeds:
        assert (out / "finetune" / TASK / "control_model" / f"seed{seed}" / "adapter" / "adapter_config.json").is_file()
        assert (preds / "control_model" / f"seed{seed}.jsonl").is_file()
    assert (preds / "control_model" / "zero_shot.jsonl").is_file()
    n = len((preds / "domain_model" / "seed0.jsonl").read_text().splitlines())
    assert len((preds / "control_model" / "seed0.jsonl").read_text().splitlines()) == n
    scores = json.loads((out / "evaluate" / "scores.json").read_text())
    assert set(scores["perplexity"]["domain"]) == set(scores["perplexity"]["general"]) == {*MODELS, "control_model"}
    assert set(scores["tasks"][TASK]["control_model"]["finetuned"]) == {str(s) for s in seeds}
    assert _manifest(out, "finetune")["models"]["control_model"].endswith("pretrain_control/model")


def test_harness_scores_the_control_model_and_states_domain_minus_control(control_run):
    res = json.loads((control_run[0] / "compare" / "results.json").read_text())
    acc = res["harness"]["local_reviews"]["acc"]
    assert acc["n"] == 24 and {"general_model", "domain_model", "control_model"} <= set(acc)
    assert acc["difference_vs_control"]["mean"] == pytest.approx(acc["domain_model"]["mean"] - acc["control_model"]["mean"])
    assert "harness.local_reviews.acc.difference_vs_control" in res["multiple_comparisons"]["comparisons"]
    assert (control_run[0] / "evaluate" / "harness" / "control_model" / "local_reviews.jsonl").is_file()


def test_rerun_skips_every_finished_stage(control_run, harness, tmp_path):
    out = copy_stages(control_run[0], tmp_path / "run", *ALL_STAGES, "base_model")
    r = cli("run", TINY, f"out_dir={out}", CONTROL, *harness)
    assert r.returncode == 0, r.stderr[-2000:]
    for stage in ALL_STAGES:
        assert f"[domainpt] {stage}: finished earlier, skipped" in r.stdout, stage
    assert "starting" not in r.stdout


def test_killed_control_pretraining_resumes_exactly(control_run):
    out, r, before_kill = control_run
    assert "[domainpt] pretrain: finished earlier, skipped" in r.stdout  # the kill came after the domain arm
    assert "resuming from" in r.stdout and "pretrain_control/checkpoints/step_4" in r.stdout
    after = [json.loads(l) for l in open(out / "pretrain_control" / "metrics.jsonl")]
    assert [m["step"] for m in before_kill] == list(range(1, 7)) and [m["step"] for m in after] == list(range(1, 13))
    # steps 5 and 6 were trained twice: before the kill and again from checkpoint step_4, with the same losses
    assert [m["loss"] for m in after[:6]] == pytest.approx([m["loss"] for m in before_kill], abs=1e-6)


def test_default_recipe_has_no_control_stage_model_or_fingerprint_change():
    recipe = load_recipe(TINY)
    assert run_stages(recipe) == ("prepare", "pretrain", "finetune", "evaluate", "compare")
    assert models_of(recipe) == MODELS
    for stage, sections in STAGE_SECTIONS.items():  # a default compare section is not hashed
        assert recipe.fingerprint(sections) == recipe.fingerprint(tuple(s for s in sections if s != "compare")), stage
    on = load_recipe(TINY, [CONTROL])
    assert on.fingerprint(STAGE_SECTIONS["prepare"]) != recipe.fingerprint(STAGE_SECTIONS["prepare"])
    off, on = build_plan(recipe), build_plan(on)
    assert "control" not in format_plan(off) and "x 2 models" in format_plan(off) and off["pretrain_control"] is None
    assert "pretrain_control" in format_plan(on) and "x 3 models" in format_plan(on)
    assert on["pretrain_control"]["flops"] == on["pretrain"]["flops"]
    assert on["total_flops"] == pytest.approx(off["total_flops"] + on["pretrain"]["flops"] + (on["finetune"]["flops"] + on["evaluate"]["flops"]) / 3)


def test_default_prepare_writes_no_control_files(prepared_tiny):
    prep = prepared_tiny / "prepare"
    assert (prep / "train").is_dir() and not (prep / "train_control").exists()
    assert "control" not in json.loads((prep / "stats.json").read_text())
    assert list(json.loads((prep / "manifest.json").read_text())["outputs"]) == ["train_tokens_sha256"]


def test_force_pretrain_keeps_the_control_arm_and_force_control_invalidates_what_reads_it(tmp_path):
    recipe = load_recipe(TINY, [CONTROL, f"out_dir={tmp_path}"])
    for s in ALL_STAGES:
        (tmp_path / s).mkdir()
        (tmp_path / s / "manifest.json").write_text("{}")
    invalidate(recipe, "pretrain")
    assert [s for s in ALL_STAGES if (tmp_path / s / "manifest.json").exists()] == ["prepare", "pretrain_control"]
    invalidate(recipe, "pretrain_control")
    assert [s for s in ALL_STAGES if (tmp_path / s / "manifest.json").exists()] == ["prepare"]


def test_bad_control_values_are_one_line_errors_naming_the_key(tmp_path):
    for args, says in ((("compare.control=bogus",), "compare.control: must be one of none, continued_general, got 'bogus'"),
                       ((), "pretrain_control: compare.control is 'none'")):
        r = cli("pretrain_control", TINY, f"out_dir={tmp_path / 'run'}", *args)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1 and says in lines[0], r.stderr
    r = cli("run", TINY, f"out_dir={tmp_path / 'run'}", CONTROL, "data.general=[]", "data.replay_share=0")
    assert r.returncode == 2 and "compare.control: continued_general trains on general text" in r.stderr and "data.general" in r.stderr
    assert not (tmp_path / "run").exists()


def test_publish_control_writes_the_control_model_with_its_own_scores_in_the_card(control_run, tmp_path):
    from huggingface_hub import ModelCard
    from huggingface_hub.repocard_data import model_index_to_eval_results

    run = copy_stages(control_run[0], tmp_path / "run", *ALL_STAGES, "base_model")
    dest = tmp_path / "tiny-control"
    r = cli("publish", run, "--model", "control", "--to", dest, "--repo-id", "someone/tiny-control",
            env={"HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    ours, control, domain = _weights(dest), _weights(run / "pretrain_control" / "model"), _weights(run / "pretrain" / "model")
    assert ours.keys() == control.keys() and all(torch.equal(ours[k], control[k]) for k in control)
    assert _differ(ours, domain)
    card = ModelCard.load(dest / "README.md")
    name, results = model_index_to_eval_results(card.data.to_dict()["model-index"])
    assert name == "someone/tiny-control"
    res = json.loads((run / "compare" / "results.json").read_text())
    t, acc = res["tasks"][TASK], res["harness"]["local_reviews"]["acc"]
    by_name = {e.metric_name: e.metric_value for e in results}
    seeds = len(t["control_model"]["finetuned"]["seeds"])
    assert by_name[f"accuracy (%), after LoRA, mean of {seeds} seeds, {t['n_test']} test items"] == \
        round(100 * t["control_model"]["finetuned"]["mean"], 2)
    # the lm-eval task's primary metric, the control's own score (not the domain model's)
    assert by_name["acc (%), lm-evaluation-harness, 24 documents"] == round(100 * acc["control_model"]["mean"], 2)
    assert "the run's *control* model" in _norm(card.text) and "general text only" in card.text
    assert not [line for line in card.text.splitlines() if line.startswith("| domain |")]  # it read no domain text
