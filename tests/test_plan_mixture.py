"""`domainpt plan-mixture` on the tiny recipe: pilots at four replay shares shared over two processes, a law per loss,
its validation from the pilots' own measured losses, a recommendation; finished pilots kept on a rerun; bad
mixture_plan values end with one line."""
import json

import numpy as np
import pytest

from conftest import TINY, cli
from domainpt.mixture.analysis import mean_loss
from domainpt.mixture.render import plan_markdown

PILOTS = ["mixture_plan.replay_shares=[0.0,0.1,0.3,0.5]", "mixture_plan.holdout_share=0.3", "mixture_plan.pilot_steps=6",
          "mixture_plan.eval_points=3", "mixture_plan.bootstrap_samples=20"]
PLAN_KEYS = {"pilots", "fits", "validation", "recommendation"}


@pytest.fixture(scope="module")
def planned(tmp_path_factory):
    out = tmp_path_factory.mktemp("plan") / "run"
    r = cli("plan-mixture", TINY, f"out_dir={out}", *PILOTS, "--processes", "2")
    assert r.returncode == 0, r.stderr[-3000:]
    return out, r


def test_plan_mixture_writes_the_three_outputs_with_every_key(planned):
    out, r = planned
    root = out / "plan_mixture"
    assert r.stdout.count("[domainpt] plan-mixture: warning: the pilots cost 3.0x the tokens of the run they plan") == 1
    assert (root / "plan.png").stat().st_size > 10_000 and (root / "manifest.json").is_file()
    plan = json.loads((root / "plan.json").read_text())
    assert PLAN_KEYS <= set(plan)
    assert [p["replay_share"] for p in plan["pilots"]] == [0.0, 0.1, 0.3, 0.5]
    for p in plan["pilots"]:
        assert set(p) >= {"replay_share", "steps", "tokens", "domain_loss", "general_loss"} and p["steps"] == 6
        assert [t for t, _ in p["domain_loss"]] == [2 * 4 * 128, 4 * 4 * 128, 6 * 4 * 128]  # checks every 2 steps
    for kind in ("domain", "general"):
        assert {"form", "params", "r2"} <= set(plan["fits"][kind]) and plan["fits"][kind]["form"] in ("dcpt", "cmr")
        assert {"predicted", "measured", "relative_error"} <= set(plan["validation"][kind])
        assert {"predicted", "measured", "relative_error"} <= set(plan["validation"]["extrapolation"][kind])
    assert plan["validation"]["replay_share"] == 0.3
    rec = plan["recommendation"]
    assert {"replay_share", "budget_tokens", "predicted_domain_loss", "predicted_general_loss", "override"} <= set(rec)
    assert rec["budget_tokens"] == 12 * 4 * 128  # train.max_steps x the pilots' tokens per step
    if rec["replay_share"] is not None:
        assert rec["override"] == f"data.replay_share={rec['replay_share']:g} train.max_steps=12"
        assert f"recommended: {rec['override']}" in r.stdout
    md = (root / "plan.md").read_text()
    assert "## Validation" in md and "![plan](plan.png)" in md
    # the length check: a pilot twice as long at the fitted share nearest the recipe's 0.1 (0.1 itself: 0.3 is held out)
    long = plan["length_pilot"]
    assert long["replay_share"] == 0.1 and long["steps"] == 12
    assert [t for t, _ in long["domain_loss"]] == [s * 4 * 128 for s in (2, 4, 6, 8, 10, 12)]
    length = plan["validation"]["length"]
    assert length["axis"] == "lr_area" and length["other_axis"]["axis"] == "tokens" and length["steps"] == 12
    for kind in ("domain", "general"):
        assert {"predicted", "measured", "relative_error", "interval", "per_check"} <= set(length[kind])
        assert len(length[kind]["per_check"]) == 6 and "relative_error" in length["other_axis"][kind]
    assert "a pilot 12 steps long (share 0.1), its end from the other pilots" in md


def test_validation_numbers_are_the_pilots_own_measured_losses(planned):
    out, _ = planned
    root = out / "plan_mixture"
    plan = json.loads((root / "plan.json").read_text())
    held = root / "pilots" / "replay_0.3" / "pretrain" / "heldout.jsonl"
    last = [json.loads(l) for l in held.read_text().splitlines()][-1]
    assert last["step"] == 6
    for kind in ("domain", "general"):
        v = plan["validation"][kind]
        assert v["measured"] == pytest.approx(mean_loss(last[kind]), rel=1e-12)
        assert v["relative_error"] == pytest.approx(v["predicted"] / v["measured"] - 1)
        ex = plan["validation"]["extrapolation"][kind]
        pilot = next(p for p in plan["pilots"] if p["replay_share"] == ex["replay_share"])
        assert ex["measured"] == pytest.approx(pilot[f"{kind}_loss"][-1][1])
        assert ex["replay_share"] != 0.3 and ex["worst_of"] == 3  # the held-out share is in no fit
        assert abs(ex["relative_error"]) == max(abs(p["relative_error"]) for p in ex["per_pilot"])
        assert v["interval"] is None
        # the length check's measured numbers are the long pilot's own last check
        long = [json.loads(l) for l in (root / "pilots" / "replay_0.1_x2" / "pretrain" / "heldout.jsonl").read_text().splitlines()]
        x = plan["validation"]["length"][kind]
        assert long[-1]["step"] == 12 and x["measured"] == pytest.approx(mean_loss(long[-1][kind]), rel=1e-12)
        assert x["relative_error"] == pytest.approx(x["predicted"] / x["measured"] - 1)
        assert plan["validation"]["length"]["other_axis"][kind]["relative_error"] != pytest.approx(x["relative_error"])
    # tiny's checks (eval.ppl_max_tokens 2,048) hold 3 domain and 2 general documents: too few to resample, and the plan
    # says so (the intervals themselves: test_plan_intervals_cover_every_prediction_..., on synthetic pilots)
    assert plan["heldout_documents"] == {"domain": 3, "general": 2} and plan["resampled_kinds"] == []
    assert plan["interval_note"].startswith("no intervals: the held-out domain (3 document(s)) and general (2")
    assert "No intervals: the held-out domain" in (out / "plan_mixture" / "plan.md").read_text()


def test_every_pilot_starts_from_the_same_model_on_the_same_heldout_documents(planned):
    out, _ = planned
    plan = json.loads((out / "plan_mixture" / "plan.json").read_text())
    assert plan["token_axis"]["kind"] == "lr_area"
    firsts = []
    for share in ("0", "0.1", "0.3", "0.5", "0.1_x2"):
        rows = [json.loads(l) for l in (out / "plan_mixture" / "pilots" / f"replay_{share}" / "pretrain" /
                                        "heldout.jsonl").read_text().splitlines()]
        assert [r["step"] for r in rows] == ([0, 2, 4, 6] if "_x" not in share else [0, 2, 4, 6, 8, 10, 12])
        firsts.append(rows[0])
        assert not (out / "plan_mixture" / "pilots" / f"replay_{share}" / "pretrain" / "model").exists()  # deleted
        pilot = json.loads((out / "plan_mixture" / "pilots" / f"replay_{share}" / "recipe.json").read_text())
        # the schedule stretched over the pilot: tiny warms up 2 of 12 steps, a 6-step pilot 1
        # (the length check's 12 steps: 2, as the run's)
        assert (pilot["train"]["max_steps"], pilot["train"]["warmup_steps"]) == ((6, 1) if "_x" not in share else (12, 2))
        # the law's D at each check (token_axis lr_area): the LRs the pilot trained with, over the peak, x its tokens
        lrs = {m["step"]: m["lr"] for m in map(json.loads, (out / "plan_mixture" / "pilots" / f"replay_{share}" /
                                                            "pretrain" / "metrics.jsonl").read_text().splitlines()) if "lr" in m}
        entry = plan["length_pilot"] if "_x" in share else next(p for p in plan["pilots"] if f"{p['replay_share']:g}" == share)
        steps = range(2, pilot["train"]["max_steps"] + 1, 2)
        trained = [sum(lrs[s] for s in range(1, step + 1)) / pilot["train"]["lr"] * 512 for step in steps]
        assert entry["axis_values"] == pytest.approx(trained, rel=1e-6) and trained[-1] < steps[-1] * 512
    for kind in ("domain", "general"):
        assert all(f[kind] == firsts[0][kind] for f in firsts)  # step 0: the base model, the same documents


def test_pilots_were_shared_over_both_processes_and_a_rerun_keeps_them(planned, tmp_path):
    out, _ = planned
    manifest = json.loads((out / "plan_mixture" / "manifest.json").read_text())
    assert len(manifest["jobs"]) == 5 and {j["process"] for j in manifest["jobs"]} == {0, 1}
    assert next(j for j in manifest["jobs"] if j["task"] == "replay_0.1_x2")["process"] == 0  # the longest job first
    before = json.loads((out / "plan_mixture" / "plan.json").read_text())
    (out / "plan_mixture" / "manifest.json").unlink()  # the plan not finished: its pilots are
    r = cli("plan-mixture", TINY, f"out_dir={out}", *PILOTS)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "5 job(s) finished earlier, kept" in r.stdout and "prepare: starting" not in r.stdout
    assert json.loads((out / "plan_mixture" / "plan.json").read_text())["recommendation"] == before["recommendation"]


def test_shards_run_their_own_slice_of_the_pilots_and_merge_writes_the_same_plan(planned, tmp_path):
    """One pilot of each of two --shard slices redone as array tasks would: a slice runs only its own, --merge names
    what is missing, then writes the plan from every pilot (the same losses as one launch made)."""
    import shutil

    from domainpt.config import load_recipe
    from domainpt.jobs.runner import Worker, slice_of
    from domainpt.mixture.stage import pilot_jobs, tokens_per_step

    out, _ = planned
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    recipe = load_recipe(TINY, PILOTS)
    jobs = pilot_jobs(recipe, tokens_per_step(recipe))
    slices = [slice_of(jobs, Worker(shard=i, shards=2)) for i in (0, 1)]
    assert sorted(j.id for s in slices for j in s) == sorted(j.id for j in jobs) and all(slices)
    redo = [min(s, key=lambda j: j.cost).id for s in slices]  # the shortest pilot of each slice
    before = json.loads((copy / "plan_mixture" / "plan.json").read_text())
    (copy / "plan_mixture" / "manifest.json").unlink()
    for job_id in redo:
        (copy / "plan_mixture" / "jobs" / f"{job_id}.json").unlink()
    marker = lambda job_id: copy / "plan_mixture" / "jobs" / f"{job_id}.json"  # noqa: E731
    r = cli("plan-mixture", TINY, f"out_dir={copy}", *PILOTS, "--shard", "0/2")
    assert r.returncode == 0, r.stderr[-2000:]
    assert marker(redo[0]).is_file() and not marker(redo[1]).exists()  # its own slice only
    assert not (copy / "plan_mixture" / "manifest.json").exists()  # a shard never finishes the plan
    r = cli("plan-mixture", TINY, f"out_dir={copy}", *PILOTS, "--merge")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert f"1 of {len(jobs)} jobs have not finished ({redo[1]})" in r.stderr.strip().splitlines()[-1]
    r = cli("plan-mixture", TINY, f"out_dir={copy}", *PILOTS, "--shard", "1/2")
    assert r.returncode == 0 and marker(redo[1]).is_file(), r.stderr[-2000:]
    r = cli("plan-mixture", TINY, f"out_dir={copy}", *PILOTS, "--merge")
    assert r.returncode == 0, r.stderr[-2000:]
    manifest = json.loads((copy / "plan_mixture" / "manifest.json").read_text())
    shards = {j["task"]: j.get("shard") for j in manifest["jobs"]}
    assert [shards[i.removeprefix("pilot/")] for i in redo] == ["0/2", "1/2"]
    after = json.loads((copy / "plan_mixture" / "plan.json").read_text())
    for a, b in zip(before["pilots"], after["pilots"]):
        for kind in ("domain_loss", "general_loss"):  # one thread per process in both: the same sums
            assert np.allclose(np.array(a[kind]), np.array(b[kind]), rtol=0, atol=1e-5), (a["replay_share"], kind)
    assert after["recommendation"]["replay_share"] == before["recommendation"]["replay_share"]


def test_dry_run_prints_the_pilots_cost_against_the_full_run(tmp_path):
    r = cli("plan-mixture", TINY, f"out_dir={tmp_path / 'run'}", *PILOTS, "--dry-run", "--processes", "2")
    assert r.returncode == 0, r.stderr
    # 4 pilots x 6 steps and the length check's 12 against the run's 12 steps, 512 tokens per step each
    assert "the pilots cost 3.00x its tokens" in r.stdout and "process 1: 3 job(s)" in r.stdout
    assert "and one of 12 steps at 0.1 (the length check)" in r.stdout
    r = cli("plan-mixture", TINY, f"out_dir={tmp_path / 'run'}", *PILOTS, "mixture_plan.length_check=false", "--dry-run")
    assert "the pilots cost 2.00x its tokens" in r.stdout and "length check" not in r.stdout
    assert "warning: the pilots cost 2.0x the tokens of the run they plan" in r.stdout  # the run is cheaper than its plan
    r = cli("plan-mixture", TINY, f"out_dir={tmp_path / 'run'}", *PILOTS, "mixture_plan.budget_tokens=1000000", "--dry-run")
    assert "its tokens" in r.stdout and "warning" not in r.stdout  # a real budget: the pilots are a small share of it
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("override, key", [
    ("mixture_plan.replay_shares=[0.1]", "mixture_plan.replay_shares: need at least 4 shares"),
    ("mixture_plan.holdout_share=0.2", "mixture_plan.holdout_share: 0.2 is not one of replay_shares"),
    ("mixture_plan.holdout_share=0.5", "mixture_plan.holdout_share: 0.5 is the smallest or largest"),
    ("mixture_plan.pilot_steps=2", "mixture_plan.pilot_steps: 2 steps cannot hold eval_points=5"),
    ("mixture_plan.eval_points=2", "mixture_plan.eval_points: must be >= 3"),
    ("mixture_plan.replay_shares=[0.0,0.1,0.5,1.0]", "mixture_plan.replay_shares: each must be in [0, 1), got 1.0"),
    ("mixture_plan.replay_shares=[0.0,0.1,0.1000000001,0.5]", "mixture_plan.replay_shares: 0.1 and 0.1000000001 would "
                                                               "share one pilot folder"),
    ("mixture_plan.typo=1", "mixture_plan.typo"),
])
def test_bad_mixture_plan_values_end_with_one_line(tmp_path, override, key):
    r = cli("plan-mixture", TINY, f"out_dir={tmp_path / 'run'}", override)
    assert r.returncode == 2
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("domainpt: error:") and key in lines[0], r.stderr
    assert not (tmp_path / "run").exists()


# --- the plan from pilots' losses, without training: synthetic pilots whose losses follow a known law ---------------

def domain_law(d, r):
    """The synthetic pilots' domain loss after d (units of the longest pilot) at replay share r."""
    return 2.0 + (0.8 if d == 0 else (0.3 + 0.4 * r) / d ** 0.5 * 0.5)


def synthetic_pilots(shares, general_rise=0.0, steps=(0, 10, 20, 30, 40), docs=12, seed=0, d_of_step=None):
    """Pilots as read_pilot returns them, 512 tokens per step: domain loss falls with tokens, faster at a higher domain
    share; general loss falls with more replay and rises by `general_rise` per unit of tokens at no replay. Each
    held-out document has its own difficulty (the bootstrap resamples them) and a little noise per check. The losses
    follow the law in d = tokens / the longest pilot's, or in `d_of_step(step)` where given."""
    rng = np.random.default_rng(seed)
    hard = {k: np.exp(rng.normal(0, 0.05, docs)) for k in ("domain", "general")}
    pilots = []
    for r in shares:
        checks = []
        for step in steps:
            d = d_of_step(step) if d_of_step else step * 512 / (40 * 512)
            loss = {"domain": domain_law(d, r),
                    "general": 3.0 + (0 if d == 0 else 0.05 / d ** 0.5 - 0.1 * r + general_rise * (1 - r) * d)}
            tok = [100] * docs
            checks.append({"step": step, "tokens": step * 512, **{
                k: {"nll": (np.array(tok) * loss[k] * hard[k] * np.exp(rng.normal(0, 0.001, docs))).tolist(), "tokens": tok}
                for k in loss}})
        pilots.append({"replay_share": r, "replay_share_actual": r, "steps": steps[-1], "tokens_per_step": 512,
                       "tokens": steps[-1] * 512, "seconds": 1.0, "checks": checks})
    return pilots


def plan_of(pilots, *overrides):
    from domainpt.config import load_recipe
    from domainpt.mixture.stage import make_plan

    # the synthetic losses follow a law in plain tokens unless a test says otherwise
    recipe = load_recipe(TINY, ["mixture_plan.replay_shares=[0.0,0.1,0.3,0.5]", "mixture_plan.holdout_share=0.3",
                                "mixture_plan.bootstrap_samples=40", "train.max_steps=80", "mixture_plan.token_axis=tokens",
                                *overrides])
    return make_plan(recipe, pilots)


def test_plan_intervals_cover_every_prediction_and_the_law_predicts_what_it_did_not_see():
    plan = plan_of(synthetic_pilots([0.0, 0.1, 0.3, 0.5]))
    assert plan["heldout_documents"] == {"domain": 12, "general": 12} and plan["interval_note"] is None
    assert plan["bootstrap_failed"] == 0 and plan["resampled_kinds"] == ["domain", "general"]
    for kind in ("domain", "general"):
        v = plan["validation"][kind]
        assert abs(v["relative_error"]) < 0.01  # the held-out share, interpolated within 1%
        lo, hi = v["interval"]
        assert lo < v["predicted"] < hi and v["relative_error_interval"][0] < v["relative_error_interval"][1]
        assert all(p["interval"] for p in plan["validation"]["extrapolation"][kind]["per_pilot"])
    rec = plan["recommendation"]
    assert rec["budget_tokens"] == 80 * 512 and rec["extrapolation_factor"] == 2.0
    assert rec["replay_share"] is not None and rec["feasible"]
    assert rec["predicted_general_loss"] <= rec["general_bound"] and 0 <= rec["p_general_over_bound"] <= 1
    for k in ("domain_loss", "general_loss"):
        assert rec["interval"][k][0] <= rec[f"predicted_{k}"] <= rec["interval"][k][1]
    assert "budget is 2.0x" not in plan_markdown(plan)  # warned only past 2x


def test_when_no_share_keeps_general_loss_within_the_bound_the_plan_says_so():
    # general loss rises with tokens at every share; no increase allowed: nothing qualifies at twice the pilots' tokens
    plan = plan_of(synthetic_pilots([0.0, 0.1, 0.3, 0.5], general_rise=0.5), "mixture_plan.max_general_increase=0")
    rec = plan["recommendation"]
    assert rec["replay_share"] is None and rec["override"] is None and not rec["feasible"]
    assert rec["least_general_loss"]["predicted"] > rec["general_bound"]
    assert "No share meets the bound" in plan_markdown(plan)


def test_pilots_too_short_for_a_law_in_tokens_end_with_one_line():
    from domainpt.errors import DomainptError

    with pytest.raises(DomainptError, match="has 2 held-out checks after step 0"):
        plan_of(synthetic_pilots([0.0, 0.1, 0.3, 0.5], steps=(0, 20, 40)))


def test_a_kind_with_too_few_documents_is_kept_as_measured_and_named():
    pilots = synthetic_pilots([0.0, 0.1, 0.3, 0.5])
    for p in pilots:  # the general text's checks hold 3 documents
        for c in p["checks"]:
            c["general"] = {k: v[:3] for k, v in c["general"].items()}
    plan = plan_of(pilots)
    assert plan["resampled_kinds"] == ["domain"] and plan["validation"]["domain"]["interval"] is not None
    assert plan["validation"]["general"]["interval"] is None  # kept as measured: no interval, not a zero-width one
    assert plan["recommendation"]["interval"]["general_loss"] is None
    assert plan["interval_note"].startswith("intervals over domain documents only: the held-out general (3 document(s))")


def test_a_law_in_learning_rate_area_predicts_a_longer_run_where_one_in_tokens_cannot():
    """Pilots whose losses follow a law in LR area (the checks along a cosine pilot): the default axis recovers the law
    and predicts a run 4x as long (its own, longer cosine) at its end; the plain-token axis reads the pilot's decay as
    saturation and predicts it too high, as it did on the medical demo (BENCHMARKS.md)."""
    from domainpt.config import load_recipe
    from domainpt.training.schedules import lr_multiplier

    overrides = ["mixture_plan.replay_shares=[0.0,0.1,0.3,0.5]", "mixture_plan.holdout_share=0.3", "train.max_steps=160"]
    tc = load_recipe(TINY, overrides).train  # tiny: cosine to 0.1 of the peak, 2 warm-up steps; pilots of 40 steps

    def area(steps, total, warmup):  # step by step, not the plan's closed form
        return sum(lr_multiplier(s, total, warmup, tc.schedule, tc.min_lr_ratio) for s in range(steps)) * 512
    pilot_warmup = 1  # 2 of 160 steps, stretched over 40: rounds to 0.5, at least 1
    unit = area(40, 40, pilot_warmup)
    pilots = synthetic_pilots([0.0, 0.1, 0.3, 0.5], d_of_step=lambda step: area(step, 40, pilot_warmup) / unit)
    budget_area = area(160, 160, tc.warmup_steps)
    errors = {}
    for name in ("lr_area", "tokens"):
        plan = plan_of(pilots, *overrides, f"mixture_plan.token_axis={name}")
        rec = plan["recommendation"]
        assert plan["token_axis"]["kind"] == name and plan["fits"]["domain"]["axis"] == name
        assert rec["budget_axis_value"] == pytest.approx(budget_area if name == "lr_area" else 160 * 512)
        r = rec["replay_share"]
        # the documents' difficulty cancels in a ratio to the pilot's own last check
        last = next(p for p in plan["pilots"] if p["replay_share"] == r)["domain_loss"][-1][1]
        truth = domain_law(budget_area / unit, r) / domain_law(1.0, r)
        errors[name] = rec["predicted_domain_loss"] / last / truth - 1
    assert abs(errors["lr_area"]) < 0.005 and errors["tokens"] > 0.02, errors  # measured: +0.1% and +3.0%


def test_changing_what_the_plan_reads_refits_it_and_keeps_every_pilot(planned, tmp_path):
    import shutil

    out, _ = planned
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    markers = {p: p.stat().st_mtime_ns for p in (copy / "plan_mixture" / "jobs").rglob("*.json")}
    r = cli("plan-mixture", TINY, f"out_dir={copy}", *PILOTS, "mixture_plan.max_general_increase=0.5",
            "mixture_plan.token_axis=tokens", "report.confidence=0.9")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "what the plan reads changed since it was made; refitting it (every pilot kept)" in r.stdout
    assert "5 job(s) finished earlier, kept" in r.stdout and "prepare: starting" not in r.stdout
    assert {p: p.stat().st_mtime_ns for p in markers} == markers
    plan = json.loads((copy / "plan_mixture" / "plan.json").read_text())
    assert plan["token_axis"]["kind"] == "tokens" and plan["confidence"] == 0.9
    assert plan["recommendation"]["max_general_increase"] == 0.5
    # the same under --merge (the plan of N array tasks), and a change to the pilots themselves is still refused
    r = cli("plan-mixture", TINY, f"out_dir={copy}", *PILOTS, "mixture_plan.max_general_increase=0.1", "--merge")
    assert r.returncode == 0 and "refitting it (every pilot kept)" in r.stdout, r.stderr[-2000:]
    assert json.loads((copy / "plan_mixture" / "plan.json").read_text())["recommendation"]["max_general_increase"] == 0.1
    assert {p: p.stat().st_mtime_ns for p in markers} == markers
    r = cli("plan-mixture", TINY, f"out_dir={copy}", *PILOTS, "train.lr=0.001")
    assert r.returncode == 2 and "was finished with a different recipe" in r.stderr and "domainpt plan-mixture RECIPE --force" in r.stderr
    # a plan made without the length check, refitted with it: --merge (which runs no pilot) refuses and keeps the plan;
    # a plain run says which pilot it runs and runs only that one
    long_marker = copy / "plan_mixture" / "jobs" / "pilot" / "replay_0.1_x2.json"
    long_marker.unlink()
    r = cli("plan-mixture", TINY, f"out_dir={copy}", *PILOTS, "mixture_plan.max_general_increase=0.2", "--merge")
    assert r.returncode == 2 and "the plan now also needs pilot/replay_0.1_x2" in r.stderr, r.stderr[-2000:]
    assert (copy / "plan_mixture" / "manifest.json").is_file()
    r = cli("plan-mixture", TINY, f"out_dir={copy}", *PILOTS, "mixture_plan.max_general_increase=0.2")
    assert r.returncode == 0 and "refitting it (pilots kept; to run: pilot/replay_0.1_x2)" in r.stdout, r.stderr[-2000:]
    assert "4 job(s) finished earlier, kept" in r.stdout and long_marker.is_file()
    # a pilot's own settings are another matter: another length, data or schedule reruns the pilots
    from domainpt.config import load_recipe
    from domainpt.mixture.pilots import pilot_fingerprint

    fp = lambda *o: pilot_fingerprint(load_recipe(TINY, [*PILOTS, *o]))  # noqa: E731
    assert fp() == fp("mixture_plan.max_general_increase=0.5", "mixture_plan.token_axis=tokens", "report.confidence=0.9",
                      "mixture_plan.bootstrap_samples=50", "mixture_plan.budget_tokens=999")
    for changed in ("mixture_plan.pilot_steps=4", "mixture_plan.eval_points=4", "train.lr=0.001", "data.seq_len=64"):
        assert fp(changed) != fp(), changed
    # a recipe whose mixture_plan is otherwise at its defaults: an analysis key alone leaves the pilots' hash as it was
    bare = lambda *o: pilot_fingerprint(load_recipe(TINY, list(o)))  # noqa: E731
    assert bare() == bare("mixture_plan.max_general_increase=0.5") == bare("mixture_plan.token_axis=tokens")


def test_the_length_check_predicts_a_longer_pilot_and_says_which_axis_carries_better():
    """Pilots in LR area and a pilot twice as long at one share (its own stretched schedule): the law fitted on the
    others predicts the long one's checks; the plan sets its error beside the other token axis's."""
    from domainpt.config import load_recipe
    from domainpt.training.schedules import lr_multiplier

    overrides = ["mixture_plan.replay_shares=[0.0,0.1,0.3,0.5]", "mixture_plan.holdout_share=0.3", "train.max_steps=160",
                 "mixture_plan.token_axis=lr_area"]
    tc = load_recipe(TINY, overrides).train

    def d_of_step(total, warmup):  # tiny's 2 warm-up steps of 160, stretched over 40 or 80 steps: 1
        area = lambda steps, n: sum(lr_multiplier(s, n, warmup, tc.schedule, tc.min_lr_ratio) for s in range(steps))  # noqa: E731
        return lambda step: area(step, total) / area(40, 40)
    pilots = synthetic_pilots([0.0, 0.1, 0.3, 0.5], d_of_step=d_of_step(40, 1))
    long = synthetic_pilots([0.1], steps=tuple(range(0, 81, 10)), d_of_step=d_of_step(80, 1))[0]
    long["length_factor"] = 2
    plan = plan_of(pilots + [long], *overrides)
    x = plan["validation"]["length"]
    assert x["replay_share"] == 0.1 and x["steps"] == 80 and len(x["domain"]["per_check"]) == 8
    assert abs(x["domain"]["relative_error"]) < 0.005 < abs(x["other_axis"]["domain"]["relative_error"]), x
    lo, hi = x["domain"]["interval"]
    assert lo < x["domain"]["predicted"] < hi
    assert plan["length_pilot"]["steps"] == 80 and [p["steps"] for p in plan["pilots"]] == [40] * 4
    # the long pilot stays out of the recommendation's fit (the check validates that very fit): 160 / 40 steps
    assert plan["recommendation"]["extrapolation_factor"] == 4.0
    assert "(`lr_area`) and under `tokens`" in plan_markdown(plan)
    # out of every fit, whatever it holds: a long pilot with other losses and another trained share changes nothing else
    odd = json.loads(json.dumps(long))
    odd["replay_share_actual"] = 0.1063
    for c in odd["checks"][1:]:
        c["domain"]["nll"] = [v * 0.9 for v in c["domain"]["nll"]]
    with_odd, without = plan_of(pilots + [odd], *overrides), plan_of(pilots, *overrides)
    assert without["validation"]["length"] is None and without["length_pilot"] is None
    for key in ("fits", "recommendation", "pilots", "base"):
        assert with_odd[key] == without[key], key
    for key in ("replay_share", "domain", "general", "extrapolation"):
        assert with_odd["validation"][key] == without["validation"][key], key
    assert {k: v for k, v in with_odd["curves"].items() if k != "length_pilot"} == without["curves"]
