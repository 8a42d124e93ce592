"""`domainpt plan-mixture` on the tiny recipe: pilots at four replay shares shared over two processes, a law per loss,
its validation from the pilots' own measured losses, a recommendation; finished pilots kept on a rerun; bad
mixture_plan values end with one line."""
import json

import pytest

from conftest import TINY, cli
from domainpt.mixture.analysis import mean_loss

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
        lo, hi = v["interval"]
        assert lo <= hi
        ex = plan["validation"]["extrapolation"][kind]
        pilot = next(p for p in plan["pilots"] if p["replay_share"] == ex["replay_share"])
        assert ex["measured"] == pytest.approx(pilot[f"{kind}_loss"][-1][1])
        assert ex["replay_share"] != 0.3 and ex["worst_of"] == 3  # the held-out share is in no fit
        assert abs(ex["relative_error"]) == max(abs(p["relative_error"]) for p in ex["per_pilot"])


def test_every_pilot_starts_from_the_same_model_on_the_same_heldout_documents(planned):
    out, _ = planned
    firsts = []
    for share in ("0", "0.1", "0.3", "0.5"):
        rows = [json.loads(l) for l in (out / "plan_mixture" / "pilots" / f"replay_{share}" / "pretrain" /
                                        "heldout.jsonl").read_text().splitlines()]
        assert [r["step"] for r in rows] == [0, 2, 4, 6]
        firsts.append(rows[0])
        assert not (out / "plan_mixture" / "pilots" / f"replay_{share}" / "pretrain" / "model").exists()  # deleted
    for kind in ("domain", "general"):
        assert all(f[kind] == firsts[0][kind] for f in firsts)  # step 0: the base model, the same documents


def test_pilots_were_shared_over_both_processes_and_a_rerun_keeps_them(planned, tmp_path):
    out, _ = planned
    manifest = json.loads((out / "plan_mixture" / "manifest.json").read_text())
    assert sorted(j["process"] for j in manifest["jobs"]) == [0, 0, 1, 1]
    before = json.loads((out / "plan_mixture" / "plan.json").read_text())
    (out / "plan_mixture" / "manifest.json").unlink()  # the plan not finished: its pilots are
    r = cli("plan-mixture", TINY, f"out_dir={out}", *PILOTS)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "4 job(s) finished earlier, kept" in r.stdout and "prepare: starting" not in r.stdout
    assert json.loads((out / "plan_mixture" / "plan.json").read_text())["recommendation"] == before["recommendation"]


def test_dry_run_prints_the_pilots_cost_against_the_full_run(tmp_path):
    r = cli("plan-mixture", TINY, f"out_dir={tmp_path / 'run'}", *PILOTS, "--dry-run", "--processes", "2")
    assert r.returncode == 0, r.stderr
    # 4 pilots x 6 steps against the run's 12 steps, 512 tokens per step each
    assert "the pilots cost 2.00x its tokens" in r.stdout and "process 1: 2 job(s)" in r.stdout
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("override, key", [
    ("mixture_plan.replay_shares=[0.1]", "mixture_plan.replay_shares: need at least 4 shares"),
    ("mixture_plan.holdout_share=0.2", "mixture_plan.holdout_share: 0.2 is not one of replay_shares"),
    ("mixture_plan.pilot_steps=2", "mixture_plan.pilot_steps: 2 steps cannot hold eval_points=5"),
    ("mixture_plan.eval_points=2", "mixture_plan.eval_points: must be >= 3"),
    ("mixture_plan.replay_shares=[0.0,0.1,0.5,1.0]", "mixture_plan.replay_shares: each must be in [0, 1), got 1.0"),
    ("mixture_plan.typo=1", "mixture_plan.typo"),
])
def test_bad_mixture_plan_values_end_with_one_line(tmp_path, override, key):
    r = cli("plan-mixture", TINY, f"out_dir={tmp_path / 'run'}", override)
    assert r.returncode == 2
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("domainpt: error:") and key in lines[0], r.stderr
    assert not (tmp_path / "run").exists()
