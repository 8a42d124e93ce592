"""Fine-tuning and evaluation as grids of jobs: shared out over the processes of a launch and over --shard tasks with
the same results as one process, resumed job by job after a kill, planned by --dry-run, recorded in the manifests.

One process (tiny_run, `domainpt run`) is the reference. Bitwise equality holds where every process runs one torch
thread, as `make test` sets (OMP_NUM_THREADS=1; torchrun sets it too): a different thread count changes the order of
float sums, so the checks allow 1e-6 on adapter weights and 1e-4 on log-likelihoods, and the same predicted choice."""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import ROOT, TINY, cli, copy_stages

from domainpt.jobs.grid import evaluate_jobs, finetune_jobs
from domainpt.jobs.runner import Job, JobBook, Worker, assign, my_share

TASK = "licence-category"
MODELS = ("general_model", "domain_model")


def torchrun(*args, env=None):
    """Two processes, as a user launches them (--standalone: a free port, so tests in parallel do not collide)."""
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "domainpt", *map(str, args)], cwd=ROOT, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


def manifest(run: Path, stage: str) -> dict:
    return json.loads((run / stage / "manifest.json").read_text())


def same_adapters(run: Path, ref: Path) -> None:
    for model in MODELS:
        for seed in (0, 1):
            rel = Path("finetune") / TASK / model / f"seed{seed}" / "adapter" / "adapter_model.safetensors"
            a, b = load_file(str(run / rel)), load_file(str(ref / rel))
            assert a.keys() == b.keys()
            for k in a:
                assert torch.allclose(a[k], b[k], rtol=0, atol=1e-6), (rel, k)


def same_predictions(run: Path, ref: Path) -> None:
    for model in MODELS:
        for name in ("zero_shot", "seed0", "seed1"):
            rel = Path("evaluate") / "predictions" / TASK / model / f"{name}.jsonl"
            ours, theirs = ([json.loads(l) for l in open(r / rel)] for r in (run, ref))
            assert [(r["id"], r["pred"]) for r in ours] == [(r["id"], r["pred"]) for r in theirs], rel
            for x, y in zip(ours, theirs):
                assert x["logliks"] == pytest.approx(y["logliks"], abs=1e-4)
    ours, theirs = (json.loads((r / "evaluate" / "scores.json").read_text()) for r in (run, ref))
    _numbers_close(ours, theirs)


def _numbers_close(a, b, tol=1e-4) -> None:
    """scores.json trees: the same keys in the same order, numbers within tol."""
    if isinstance(a, dict):
        assert list(a) == list(b)
        for k in a:
            _numbers_close(a[k], b[k], tol)
    elif isinstance(a, list):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _numbers_close(x, y, tol)
    elif isinstance(a, float):
        assert a == pytest.approx(b, abs=tol)
    else:
        assert a == b


# --- sharing out -------------------------------------------------------------------------------------------------


def test_longest_jobs_go_first_onto_the_least_loaded_worker():
    jobs = [Job(f"j{i}", "lora", "m", cost=c) for i, c in enumerate([4, 9, 1, 6, 6, 3, 2, 8])]
    shares = assign(jobs, 3)
    assert sorted(j.id for s in shares for j in s) == sorted(j.id for j in jobs)  # every job once
    loads = [sum(j.cost for j in s) for s in shares]
    assert max(loads) - min(loads) <= max(j.cost for j in jobs)  # LPT's bound: within the longest job
    assert assign(jobs, 1) == [jobs] and assign([], 3) == [[], [], []]


def test_lpt_loads_match_a_hand_computed_schedule():
    jobs = [Job(f"j{i}", "lora", "m", cost=c) for i, c in enumerate([1, 7, 3, 5, 2, 2])]
    # sorted 7,5,3,2,2,1: 7->w0; 5->w1; 3->w1 (5<7); 2->w0 (7<8); 2->w1 (8<9); 1->w0 (9<10) -> loads 10, 10
    shares = assign(jobs, 2)
    assert [sorted(j.cost for j in s) for s in shares] == [[1, 2, 7], [2, 3, 5]]
    assert [[j.id for j in s] for s in shares] == [["j0", "j1", "j4"], ["j2", "j3", "j5"]]  # each share in list order


def _book(tmp_path, recipe_overrides=()):
    from domainpt.config import load_recipe

    recipe = load_recipe(TINY, [f"out_dir={tmp_path / 'run'}", *recipe_overrides])
    for stage in ("prepare", "pretrain"):
        (tmp_path / "run" / stage).mkdir(parents=True, exist_ok=True)
        (tmp_path / "run" / stage / "manifest.json").write_text(json.dumps({"stage": stage}))
    return recipe, JobBook(recipe, "finetune", ["prepare", "pretrain"])


def test_shard_slices_partition_the_jobs_and_do_not_depend_on_what_is_finished(tmp_path):
    recipe, book = _book(tmp_path, ["lora.seeds=[0,1,2,3]"])
    jobs = finetune_jobs(recipe)
    slices = [my_share(jobs, book, Worker(shard=i, shards=3))[0] for i in range(3)]
    assert sorted(j.id for s in slices for j in s) == sorted(j.id for j in jobs) and all(slices)
    done = slices[1][0]
    book.commit(done, {"x": 1}, 0.0, Worker(shard=1, shards=3))
    after = [my_share(jobs, book, Worker(shard=i, shards=3)) for i in range(3)]
    assert after[0][0] == slices[0] and after[2][0] == slices[2]  # other slices unchanged
    assert after[1] == (slices[1][1:], 1)
    # inside one launch of 2 processes, the unfinished jobs of the slice are shared out again
    two = [my_share(jobs, book, Worker(rank=r, world=2, shard=1, shards=3))[0] for r in range(2)]
    assert sorted(j.id for s in two for j in s) == sorted(j.id for j in slices[1][1:])


def test_a_marker_from_another_recipe_or_over_other_inputs_is_not_a_finished_job(tmp_path):
    recipe, book = _book(tmp_path)
    job = finetune_jobs(recipe)[0]
    assert book.finished(job) is None
    book.commit(job, {"tokens": 5}, 0.0, Worker(rank=1, world=2))
    m = book.finished(job)
    assert m["result"] == {"tokens": 5} and m["process"] == 1 and m["seed"] == 0 and m["model"] == "general_model"
    from domainpt.config import load_recipe

    other = load_recipe(TINY, [f"out_dir={tmp_path / 'run'}", "lora.lr=0.5"])  # another recipe: another fingerprint
    assert JobBook(other, "finetune", ["prepare", "pretrain"]).finished(job) is None
    (tmp_path / "run" / "pretrain" / "manifest.json").write_text(json.dumps({"stage": "pretrain", "redone": True}))
    assert JobBook(recipe, "finetune", ["prepare", "pretrain"]).finished(job) is None  # the domain model changed
    with pytest.raises(Exception, match=r"finetune: 4 of 4 jobs have not finished \(licence-category/general_model/seed0"):
        JobBook(recipe, "finetune", ["prepare", "pretrain"]).collect(finetune_jobs(recipe), "do them")


def test_a_process_that_stopped_ends_the_wait_with_an_error_naming_its_job(tmp_path, monkeypatch):
    """Across nodes no launcher ends the others when one dies: a heartbeat that stops ends the wait (here in 0.3 s)."""
    import time

    from domainpt.errors import DomainptError
    from domainpt.jobs import runner

    monkeypatch.setattr(runner, "HEARTBEAT_S", 0.05)
    monkeypatch.setattr(runner, "STOPPED_AFTER_S", 0.3)
    monkeypatch.setattr(runner, "WAIT_POLL_S", 0.05)
    recipe, book = _book(tmp_path)
    jobs = finetune_jobs(recipe)[:2]
    beat = tmp_path / "beat"
    with runner.Heartbeat(beat):  # a live process: its file keeps moving
        first = beat.stat().st_mtime
        time.sleep(0.25)
        assert beat.stat().st_mtime > first
    book.commit(jobs[0], {}, time.time(), Worker())
    with pytest.raises(DomainptError, match=r"finetune: the process running licence-category/general_model/seed1 .* stopped"):
        runner.wait_for_markers(jobs, book, lambda job: beat)  # the heartbeat stopped when the block ended
    later = time.time() + 0.1
    with runner.Heartbeat(beat):  # alive while the other job finishes: the wait returns
        import threading

        threading.Timer(0.1, lambda: book.commit(jobs[1], {}, later, Worker())).start()
        runner.wait_for_markers(jobs, book, lambda job: beat)


def test_a_seed_named_twice_is_refused_in_one_line():
    r = cli("run", TINY, "lora.seeds=[0,1,0]", "--dry-run")
    assert r.returncode == 2 and "lora.seeds: must not repeat an item, got 0 twice in [0, 1, 0]" in r.stderr


def test_the_grids_list_every_job_once_with_a_planned_cost():
    from domainpt.config import load_recipe

    recipe = load_recipe(ROOT / "recipes" / "demo" / "medical.yaml")
    ft, ev = finetune_jobs(recipe), evaluate_jobs(recipe)
    assert len(ft) == 2 * 3 * 4 and len({j.id for j in ft}) == len(ft)  # tasks x models (control too) x seeds
    assert len(ev) == 3 + 2 * 3 + 2 * 3 * 4  # perplexity per model, zero-shot per task x model, per seed
    assert all(j.cost > 0 for j in ft + ev)
    chapter = [j for j in ev if j.kind == "finetuned" and j.task == "icd10-chapter"][0]
    probe = [j for j in ev if j.kind == "finetuned" and j.task == "icd10-code-probe"][0]
    assert chapter.cost == 300 * (24 + 8 * 4) and probe.cost == 300 * (16 + 4 * 4)  # 8 labels vs 4 choices


# --- through the command line ------------------------------------------------------------------------------------


def test_two_processes_killed_between_jobs_resume_and_give_the_one_process_adapters_and_predictions(tiny_run, tmp_path):
    """`run --processes 2` (torchrun underneath) killed after each process's first fine-tuning job: one error line, the
    finished jobs kept; then `torchrun ... finetune` does only the rest and `torchrun ... evaluate` scores, both
    processes at work, with the one-process run's adapters and predictions."""
    ref = tiny_run[0]
    run = copy_stages(ref, tmp_path / "run", "prepare", "pretrain", "base_model")
    r = cli("run", TINY, f"out_dir={run}", "--processes", "2", env={"DOMAINPT_FAULT": "finetune.after_job@1"})
    assert r.returncode == 128 + signal.SIGKILL and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert "domainpt: error: process" in r.stderr and "was killed by signal 9" in r.stderr.strip().splitlines()[-1]
    markers = sorted((run / "finetune" / "jobs").rglob("*.json"))
    assert 1 <= len(markers) <= 2 and not (run / "finetune" / "manifest.json").exists()
    kept = {p: p.read_bytes() for p in markers}
    adapters = {p: p.stat().st_mtime_ns for p in (run / "finetune").rglob("adapter_model.safetensors")
                if (run / "finetune" / "jobs" / p.relative_to(run / "finetune").parent.parent.with_suffix(".json")).is_file()}
    assert len(adapters) == len(markers)
    out = {}
    for stage in ("finetune", "evaluate"):
        r = torchrun(stage, TINY, f"out_dir={run}")
        assert r.returncode == 0, r.stderr[-3000:]
        out[stage] = r.stdout
        m = manifest(run, stage)
        assert {j["process"] for j in m["jobs"]} == {0, 1}  # both processes worked
        assert all(set(j) >= {"task", "model", "seed", "process", "seconds", "planned_cost"} for j in m["jobs"])
        assert m["workers"] == 2 and 0 < m["parallel_efficiency"] <= 1
    assert f"finetune: {len(markers)} job(s) finished earlier, kept" in out["finetune"]
    m = manifest(run, "finetune")
    assert len(m["jobs"]) == 4 and m["jobs_kept"] == len(markers) and m["jobs_run"] == 4 - len(markers)
    assert all(p.read_bytes() == b for p, b in kept.items())  # the finished jobs were not redone
    assert all(p.stat().st_mtime_ns == t for p, t in adapters.items())
    assert len(manifest(run, "evaluate")["jobs"]) == 8 and manifest(run, "evaluate")["jobs_kept"] == 0
    same_adapters(run, ref)
    same_predictions(run, ref)


def test_two_shards_and_a_merge_give_the_same_again(tiny_run, tmp_path):
    ref = tiny_run[0]
    run = copy_stages(ref, tmp_path / "run", "prepare", "pretrain", "base_model")
    r = cli("finetune", TINY, f"out_dir={run}", "--merge")  # nothing ran yet: every job is named as missing
    assert r.returncode == 2 and "Traceback" not in r.stderr and not (run / "finetune" / "manifest.json").exists()
    assert "domainpt: error: finetune: 4 of 4 jobs have not finished" in r.stderr.strip().splitlines()[-1]
    for stage in ("finetune", "evaluate"):
        for i in (0, 1):
            r = cli(stage, TINY, f"out_dir={run}", "--shard", f"{i}/2")
            assert r.returncode == 0, r.stderr[-3000:]
            assert not (run / stage / "manifest.json").exists()  # a shard never finishes the stage
        r = cli(stage, TINY, f"out_dir={run}", "--merge")
        assert r.returncode == 0, r.stderr[-3000:]
        jobs = manifest(run, stage)["jobs"]
        assert {j["process"] for j in jobs} == {0, 1} and {j["shard"] for j in jobs} == {"0/2", "1/2"}
        assert manifest(run, stage)["workers"] == 2  # from the markers, not the merge's own process
    same_adapters(run, ref)
    same_predictions(run, ref)


def test_bad_shard_arguments_are_one_line_errors(tiny_run, tmp_path):
    run = copy_stages(tiny_run[0], tmp_path / "run", "prepare", "pretrain", "base_model")
    for args, says in ((["--shard", "2/2"], "need 0 <= I < N"), (["--shard", "x"], "expected I/N"),
                       (["--shard", "0/2", "--merge"], "--merge goes on a command of its own")):
        r = cli("finetune", TINY, f"out_dir={run}", *args)
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
        assert says in r.stderr.strip().splitlines()[-1]
    assert not (run / "finetune" / "jobs").exists()


def test_the_dry_run_prints_each_processs_share_of_each_job_stage():
    from domainpt.config import load_recipe
    from domainpt.plan import build_plan, format_plan

    recipe = load_recipe(ROOT / "recipes" / "demo" / "medical.yaml")
    plan = build_plan(recipe, processes=2)
    for stage in ("finetune", "evaluate"):
        per = plan[stage]["per_process"]
        assert len(per) == 2 and sum(p["jobs"] for p in per) == plan[stage]["jobs"]
        assert sum(p["gpu_hours"] for p in per) == pytest.approx(plan[stage]["gpu_hours"])
        assert plan[stage]["wall_hours"] < plan[stage]["gpu_hours"]  # two processes share the stage
    assert plan["process_batch"] == 4  # the demo's global batch of 8, shared by 2 processes
    text = format_plan(plan)
    assert "on 2 process(es): wall" in text and "process 1: 12 job(s)" in text
    many = format_plan(build_plan(load_recipe(ROOT / "recipes" / "medical.yaml"), processes=32))
    assert "per process" in many and "process 31:" not in many  # summarised, not 32 lines


def test_a_model_too_large_for_one_gpu_is_refused_before_any_job(tiny_llama, monkeypatch):
    from types import SimpleNamespace

    from domainpt.errors import DomainptError
    from domainpt.models import check_fits_one_gpu

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: SimpleNamespace(name="Tiny GPU", total_memory=2**20))
    with pytest.raises(DomainptError, match=r"finetune: general_model needs ~0\.\d GiB .* more than one Tiny GPU holds"):
        check_fits_one_gpu({"general_model": tiny_llama}, "clm", False, 4, "finetune")
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: SimpleNamespace(name="Big GPU", total_memory=2**34))
    check_fits_one_gpu({"general_model": tiny_llama}, "clm", False, 4, "finetune")
