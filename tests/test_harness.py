"""lm-evaluation-harness as an evaluation backend: a local harness task through `domainpt run`, the same
numbers as `lm_eval` run directly on the checkpoints domainpt wrote, and agreement between domainpt's own
zero-shot scorer (under lm-eval's convention) and lm-eval on the same items."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import built_once, check_results_contract, cli, tiny_recipe_variant, write_harness_task

pytest.importorskip("lm_eval")

TASK = "local_licence"  # a local lm-eval task over the tiny run's licence test items


def read_examples(run: Path) -> list[dict]:
    return [json.loads(l) for l in open(run / "prepare" / "tasks" / "licence-category" / "test.jsonl")]


def lm_eval_directly(model_path: str, include: Path, out: Path) -> tuple[dict, list[dict]]:
    """`lm_eval run` on a checkpoint, as a user would type it: (aggregated results, logged samples)."""
    r = subprocess.run([sys.executable, "-m", "lm_eval", "run", "--model", "hf", "--model_args",
                        f"pretrained={model_path},dtype=float32", "--tasks", TASK, "--include_path", str(include),
                        "--device", "cpu", "--batch_size", "8", "--output_path", str(out), "--log_samples"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    results = json.loads(next(out.rglob("results_*.json")).read_text())
    samples = [json.loads(l) for l in open(next(out.rglob(f"samples_{TASK}_*.jsonl")))]
    return results["results"][TASK], sorted(samples, key=lambda s: s["doc_id"])


@pytest.fixture(scope="module")
def harness_run(prepared_tiny, tmp_path_factory):
    """The tiny recipe with a local harness task (over the tiny run's licence test items) and lm-eval's convention,
    through `domainpt run` (harness tasks are part of prepare's decontamination, so every stage runs). Built once
    per session; returns (out_dir, the task folder, the run's stdout)."""
    def build(folder):
        include = write_harness_task(folder / "tasks", read_examples(prepared_tiny), TASK)

        def edit(r):
            r["eval"].update(harness_tasks=[TASK], harness_include=str(include), zero_shot_convention="lm-eval")
            r["lora"]["seeds"] = [0]  # nothing here is about seeds: one fine-tune per model keeps the suite short

        r = cli("run", tiny_recipe_variant(folder, edit))
        assert r.returncode == 0, r.stderr[-3000:]
        (folder / "stdout.txt").write_text(r.stdout)

    folder = built_once(tmp_path_factory, "harness_run", build)
    return folder / "run", folder / "tasks", (folder / "stdout.txt").read_text()


def test_run_writes_a_harness_section_with_intervals_for_both_models(harness_run):
    run = harness_run[0]
    res = json.loads((run / "compare" / "results.json").read_text())
    check_results_contract(run / "compare" / "results.json")
    acc = res["harness"][TASK]["acc"]
    n = len(read_examples(run))
    assert acc["n"] == n and acc["paired"] and acc["primary"] and acc["purpose"] == "domain"
    for arm in ("general_model", "domain_model"):
        lo, hi = acc[arm]["ci"]
        assert lo <= acc[arm]["mean"] <= hi
    d = acc["difference"]
    assert d["mean"] == pytest.approx(acc["domain_model"]["mean"] - acc["general_model"]["mean"])
    assert 0 <= d["p_value"] <= d["p_adjusted"] <= 1  # in the report's Holm family
    assert f"harness.{TASK}.acc.difference" in res["multiple_comparisons"]["comparisons"]
    assert "harness.%s.acc_norm.difference" % TASK not in res["multiple_comparisons"]["comparisons"]
    assert res["harness_settings"]["lm_eval_version"]
    report = (run / "compare" / "report.md").read_text()
    assert "## lm-evaluation-harness" in report and f"| {TASK} | acc |" in report
    assert f"[domainpt] lm-eval {TASK} (acc): general" in harness_run[2]


def test_harness_numbers_are_lm_evals_own_on_the_checkpoints_domainpt_wrote(harness_run, tmp_path):
    """The same task through `lm_eval run` on each checkpoint: the same aggregate and per-document values."""
    run, include, _ = harness_run
    res = json.loads((run / "compare" / "results.json").read_text())
    for arm, path in (("general_model", run / "base_model"), ("domain_model", run / "pretrain" / "model")):
        direct, samples = lm_eval_directly(str(path), include, tmp_path / f"direct_{arm}")
        for metric in ("acc", "acc_norm"):
            assert res["harness"][TASK][metric][arm]["mean"] == pytest.approx(direct[f"{metric},none"], abs=1e-12)
        ours = [json.loads(l) for l in open(run / "evaluate" / "harness" / arm / f"{TASK}.jsonl")]
        assert [r["doc_id"] for r in ours] == [s["doc_id"] for s in samples]
        for r, s in zip(ours, samples):
            assert r["metrics"]["acc"] == s["acc"] and r["metrics"]["acc_norm"] == s["acc_norm"]
            assert r["logliks"] == pytest.approx([float(x[0]) for x in s["filtered_resps"]], abs=1e-4)


def test_harness_jobs_run_on_either_process_of_a_launch_with_the_same_numbers(harness_run, tmp_path):
    """evaluate under torchrun: the two models' harness jobs (the costliest) go to different processes, and lm-eval,
    which reports only where LOCAL_RANK is 0, gives process 1 its results too: the one-process run's numbers."""
    import os

    from conftest import ROOT, copy_stages

    ref = harness_run[0]
    run = copy_stages(ref, tmp_path / "run", "prepare", "pretrain", "finetune", "base_model")
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        "-m", "domainpt", "evaluate", str(ref.parent / "recipe.yaml"), f"out_dir={run}"], cwd=ROOT,
                       capture_output=True, text=True, timeout=900, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    jobs = json.loads((run / "evaluate" / "manifest.json").read_text())["jobs"]
    assert sorted(j["process"] for j in jobs if j["kind"] == "harness") == [0, 1]
    for arm in ("general_model", "domain_model"):
        ours, theirs = (json.loads((x / "evaluate" / "harness" / arm / "summary.json").read_text()) for x in (run, ref))
        assert ours["results"] == theirs["results"] and ours["named_as"] == theirs["named_as"]
        ours, theirs = ([json.loads(l) for l in open(x / "evaluate" / "harness" / arm / f"{TASK}.jsonl")] for x in (run, ref))
        assert [(o["doc_id"], o["metrics"]) for o in ours] == [(t["doc_id"], t["metrics"]) for t in theirs]
        for o, t in zip(ours, theirs):  # bitwise with one thread per process (make test); 1e-4 allows other counts
            assert o["logliks"] == pytest.approx(t["logliks"], abs=1e-4)


def _lm_eval_scores(model_path: str, include: Path) -> list[dict]:
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    lm = HFLM(pretrained=model_path, device="cpu", batch_size=8, dtype="float32")
    res = lm_eval.simple_evaluate(model=lm, tasks=[TASK], task_manager=TaskManager(include_path=str(include)),
                                  log_samples=True, bootstrap_iters=0)
    return sorted(res["samples"][TASK], key=lambda s: s["doc_id"])


@pytest.mark.parametrize("model", ["tiny", "smollm2-135m"])
def test_domainpt_scorer_agrees_with_lm_eval_under_its_convention(model, prepared_tiny, tmp_path):
    """Same items, same prompts: domainpt's zero-shot scorer with eval.zero_shot_convention=lm-eval (no BOS,
    acc_norm per character) gives lm-eval's log-likelihoods and both its acc and acc_norm predictions; with
    domainpt's own convention (a BOS token first) the log-likelihoods differ, as docs/harness.md says."""
    from domainpt.eval.scoring import score_examples
    from domainpt.eval.stage import zero_shot_conventions
    from domainpt.config import EvalConfig
    from domainpt.encoding import end_of_text_id
    from domainpt.models import load_model, load_tokenizer, resolve

    path = str(prepared_tiny / "base_model") if model == "tiny" else resolve("smollm2-135m")
    examples = [{**e, "id": str(i)} for i, e in enumerate(read_examples(prepared_tiny))]
    if model != "tiny":  # 12 items x 4 choices agree or not as well as all of them; SmolLM2 scores them 3 times
        examples = examples[:12]
    include = write_harness_task(tmp_path / "tasks", examples, TASK)
    tok, lm = load_tokenizer(path), load_model(path, "clm")
    bos, unit = zero_shot_conventions(EvalConfig(zero_shot_convention="lm-eval"), end_of_text_id(tok), tok)
    assert bos is None  # SmolLM2's tokenizer adds no BOS by default, so lm-eval adds none
    ours = score_examples(lm, tok, examples, bos, norm_unit=unit)
    theirs = _lm_eval_scores(path, include)
    assert len(ours) == len(theirs) == len(examples)
    ll_ours = np.array([r["logliks"] for r in ours])
    ll_theirs = np.array([[float(x[0]) for x in s["filtered_resps"]] for s in theirs])
    assert np.abs(ll_ours - ll_theirs).max() < 1e-3
    # the same chosen answers: lm-eval's argmax of log-likelihood, and of log-likelihood per character of the choice
    chars = np.array([[len(c[1:] if c.startswith(" ") else c) for c in e["choices"]] for e in examples])
    assert [r["pred"] for r in ours] == ll_theirs.argmax(1).tolist()
    assert [r["pred_norm"] for r in ours] == (ll_theirs / chars).argmax(1).tolist()
    assert [float(r["correct"]) for r in ours] == [s["acc"] for s in theirs]
    assert [float(r["correct_norm"]) for r in ours] == [s["acc_norm"] for s in theirs]
    with_bos = score_examples(lm, tok, examples[:2], end_of_text_id(tok))  # domainpt's default convention (2 items show it)
    assert np.abs(np.array([r["logliks"] for r in with_bos]) - ll_theirs[:2]).max() > 1e-3


def test_a_recipe_naming_an_unknown_harness_task_stops_in_one_line(tmp_path):
    recipe = tiny_recipe_variant(tmp_path, lambda r: r["eval"].update(harness_tasks=["pubmedqaa"]))
    r = cli("run", recipe, "--dry-run")
    assert r.returncode != 0
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and "no task or group 'pubmedqaa'" in err[0] and "pubmedqa" in err[0]
    assert not (tmp_path / "run" / "prepare").exists()


def test_without_lm_eval_a_harness_recipe_says_what_to_install(tmp_path):
    """lm-eval is an optional extra: hidden from the interpreter, the run stops before any work."""
    blocker = tmp_path / "block"
    (blocker / "lm_eval").mkdir(parents=True)
    (blocker / "lm_eval" / "__init__.py").write_text("raise ImportError('lm_eval hidden by the test')\n")
    recipe = tiny_recipe_variant(tmp_path, lambda r: r["eval"].update(forgetting_tasks=["arc_easy"]))
    r = cli("run", recipe, env={"PYTHONPATH": str(blocker)})
    assert r.returncode != 0
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and "pip install 'domainpt[harness]'" in err[0], r.stderr[-2000:]
    assert not (tmp_path / "run" / "prepare" / "manifest.json").exists()


def _write_arm(folder: Path, results: dict, samples: dict, group_subtasks: dict, purpose: dict):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "summary.json").write_text(json.dumps({"results": results, "group_subtasks": group_subtasks, "purpose": purpose}))
    for task, rows in samples.items():
        (folder / f"{task}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def _rows(values, metric="acc"):
    return [{"doc_id": i, "doc_hash": f"h{i}", "filter": "none", "metrics": {metric: v}} for i, v in enumerate(values)]


def test_groups_pool_their_tasks_documents_and_non_mean_metrics_get_no_interval(tmp_path):
    """A group's documents are its subtasks' together (lm-eval weights mmlu by size: the pooled mean); a metric
    whose aggregate is not the mean over documents (corpus F1) is lm-eval's number alone; forgetting tasks
    average their primary metric's differences, a group's subtasks not counted twice."""
    from domainpt.report.harness import general_task_forgetting, harness_results

    rng = np.random.default_rng(0)
    a1, a2 = rng.integers(0, 2, 30).astype(float), rng.integers(0, 2, 50).astype(float)
    b1, b2 = np.clip(a1 + (rng.random(30) < 0.3), 0, 1), np.clip(a2 + (rng.random(50) < 0.3), 0, 1)
    groups = {"grp": ["t1", "t2"]}
    purpose = {"grp": "forgetting", "f1task": "domain"}
    for arm, (x1, x2) in (("general_model", (a1, a2)), ("domain_model", (b1, b2))):
        pooled = np.concatenate([x1, x2]).mean()
        f1_rows = [{"doc_id": i, "doc_hash": f"h{i}", "filter": "none", "metrics": {"f1": [i % 2, 1]}} for i in range(10)]
        _write_arm(tmp_path / "harness" / arm,  # a group result as lm-eval 0.4.13 writes it (sample_count, name)
                   {"grp": {"acc,none": pooled, "acc_stderr,none": "N/A", "alias": "grp", "name": "grp", "sample_len": 80,
                            "sample_count": {"original": 80, "effective": 80}},
                    "t1": {"acc,none": x1.mean(), "alias": " - t1"}, "t2": {"acc,none": x2.mean(), "alias": " - t2"},
                    "f1task": {"f1,none": 0.42 if arm == "general_model" else 0.47}},
                   {"t1": _rows(x1), "t2": _rows(x2), "f1task": f1_rows}, groups, purpose)
    h = harness_results(tmp_path, ["general_model", "domain_model"], 0.95)
    assert set(h["grp"]) == {"acc"}  # alias, name, sample_len, sample_count are not metrics
    g = h["grp"]["acc"]
    assert g["n"] == 80 and g["paired"] and g["purpose"] == "forgetting" and "group" not in g
    assert g["difference"]["mean"] == pytest.approx(np.concatenate([b1, b2]).mean() - np.concatenate([a1, a2]).mean())
    assert h["t1"]["acc"]["group"] == "grp" and h["t1"]["acc"]["n"] == 30
    f = h["f1task"]["f1"]
    assert f["paired"] is False and "difference" not in f and f["domain_model"]["mean"] == 0.47
    forgetting = general_task_forgetting(h, 0.95)
    assert list(forgetting["general_tasks"]) == ["grp"]
    assert forgetting["general_tasks_mean_difference"] == pytest.approx(g["difference"]["mean"])


def test_models_scored_on_different_documents_are_not_paired(tmp_path):
    from domainpt.errors import DomainptError
    from domainpt.report.harness import harness_results

    for arm, hashes in (("general_model", "abc"), ("domain_model", "abd")):
        rows = [{"doc_id": i, "doc_hash": h, "filter": "none", "metrics": {"acc": 1.0}} for i, h in enumerate(hashes)]
        _write_arm(tmp_path / "harness" / arm, {"t": {"acc,none": 1.0}}, {"t": rows}, {}, {"t": "domain"})
    with pytest.raises(DomainptError, match="other documents"):
        harness_results(tmp_path, ["general_model", "domain_model"], 0.95)


def test_a_masked_lm_with_harness_tasks_is_refused_in_one_line():
    from domainpt.config import load_recipe
    from domainpt.errors import DomainptError
    from domainpt.preflight import check_harness_model

    from conftest import TINY

    recipe = load_recipe(TINY, ["eval.harness_tasks=[arc_easy]"])
    check_harness_model(recipe, "clm", "some-decoder")
    with pytest.raises(DomainptError, match="scores causal LMs; bert-base is trained as a masked LM"):
        check_harness_model(recipe, "mlm", "bert-base")


def test_lm_eval_convention_keeps_a_bos_the_tokenizer_adds_by_default():
    """lm-eval's HFLM leaves special tokens to the tokenizer: Llama-style tokenizers start with their BOS."""
    from domainpt.config import EvalConfig
    from domainpt.eval.stage import zero_shot_conventions

    class LlamaLike:
        bos_token_id = 1

        def __call__(self, text):
            return {"input_ids": [1, 42]}

    assert zero_shot_conventions(EvalConfig(zero_shot_convention="lm-eval"), 0, LlamaLike()) == (1, "characters")
    assert zero_shot_conventions(EvalConfig(), 0, LlamaLike()) == (0, "bytes")


def test_prepare_decontaminates_training_text_against_harness_test_documents(prepared_tiny, tmp_path):
    """A harness task whose documents quote licences of the domain corpus: prepare flags those licences."""
    from domainpt.data.builtin import read_builtin

    quoted = [" ".join(r["text"].split()[:60]) for _, r in zip(range(40), read_builtin("scancode-licenses"))
              if len(r["text"].split()) > 80][:5]
    include = write_harness_task(tmp_path / "tasks", [{"prompt": q, "choices": [" a", " b"], "answer": 0} for q in quoted],
                                 "local_quotes")

    def edit(r):
        r["eval"].update(harness_tasks=["local_quotes"], harness_include=str(include))

    r = cli("prepare", tiny_recipe_variant(tmp_path, edit))
    assert r.returncode == 0, r.stderr[-3000:]
    stats = json.loads((tmp_path / "run" / "prepare" / "stats.json").read_text())
    raw = json.loads((prepared_tiny / "prepare" / "stats.json").read_text())
    assert stats["harness_test_texts"] == len(quoted)
    assert stats["contaminated_found"] >= raw["contaminated_found"] + 1


def test_harness_tasks_and_local_task_files_are_part_of_the_run_fingerprint(tmp_path):
    """prepare decontaminates against the harness tasks: naming one, or editing a local task's files, redoes the run."""
    from domainpt.config import load_recipe
    from domainpt.manifest import stage_fingerprint

    from conftest import TINY

    folder = write_harness_task(tmp_path / "tasks", [{"prompt": "Q one two", "choices": [" a", " b"], "answer": 0}], "t")
    plain = load_recipe(TINY)
    named = load_recipe(TINY, ["eval.harness_tasks=[t]", f"eval.harness_include={folder}"])
    before = stage_fingerprint(named, "prepare")
    assert before != stage_fingerprint(plain, "prepare")
    (folder / "t.jsonl").write_text((folder / "t.jsonl").read_text().replace("one", "three"))
    assert stage_fingerprint(named, "prepare") != before
