"""`domainpt plan-mixture RECIPE`: how much general text to replay, and how many tokens are worth it, answered from
pilot runs before the big one. Pilots at mixture_plan.replay_shares (jobs: shared over the processes of a launch and
over --shard slices, each resumable), a law per held-out loss fitted to them (mixture/law.py, chosen by
leave-one-share-out error), the law's own validation, and the recommended share at the budget (mixture/analysis.py).

    domainpt plan-mixture recipes/demo/tiny.yaml
    torchrun --nproc_per_node 2 -m domainpt plan-mixture recipes/demo/tiny.yaml     # pilots shared over 2 processes
    domainpt plan-mixture recipes/medical.yaml --shard 2/5   # one of 5 slices; then: plan-mixture RECIPE --merge
    domainpt plan-mixture recipes/medical.yaml --dry-run     # the pilots' cost beside the full run's; nothing runs

Writes out_dir/plan_mixture/: plan.json (a public format: add keys, never rename), plan.md, plan.png, pilots/ (one
small run per share) and manifest.json last (= finished).
"""
from __future__ import annotations

import math
import time
from dataclasses import replace

import numpy as np

from domainpt.errors import DomainptError
from domainpt.jobs.runner import JobBook, job_records, merged_start, parallel_summary, run_share, this_worker
from domainpt.manifest import atomic_write_json, atomic_write_text, stage_dir, write_manifest
from domainpt.mixture.analysis import KINDS, Points, bootstrap, choose_forms, estimate, interval, mean_loss
from domainpt.mixture.axis import Schedule, TokenAxis
from domainpt.mixture.law import FitError
from domainpt.mixture.pilots import STAGE, pilot_fingerprint, pilot_jobs, run_pilot
from domainpt.mixture.render import plan_markdown, plan_plot


def tokens_per_step(recipe) -> int:
    """A pilot's tokens per optimizer step: one process (train.global_batch_size, or train.batch_size) x grad_accum."""
    tc = recipe.train
    return tc.process_batch(1) * tc.grad_accum * recipe.data.seq_len


def budget_tokens(recipe, per_step: int | None = None) -> int:
    """The full run the plan is for: mixture_plan.budget_tokens, or train.max_steps at one process's tokens per step
    (`per_step`, as the pilots measured it, where given)."""
    return int(recipe.mixture_plan.budget_tokens or recipe.train.max_steps * (per_step or tokens_per_step(recipe)))


def pilots_cost_warning(recipe) -> str | None:
    """Said before pilots run (and by --dry-run) when they would cost more tokens than the run they plan: then the
    run itself answers the question for less (the tiny recipe's defaults do this; a real budget is GPU-days)."""
    ratio = sum(j.cost for j in pilot_jobs(recipe, tokens_per_step(recipe))) / budget_tokens(recipe)
    if ratio < 1:
        return None
    return (f"warning: the pilots cost {ratio:.1f}x the tokens of the run they plan; running that run at a few shares "
            "is cheaper here (lower mixture_plan.pilot_steps, or set mixture_plan.budget_tokens to the real budget)")


def token_axis(recipe, tokens_per_step: int) -> TokenAxis:
    """The law's D for this recipe: its pilots' schedule (the warm-up stretched) and its full run's."""
    tc = recipe.train

    run = Schedule(tc.warmup_steps, tc.schedule, tc.min_lr_ratio, tc.decay_share, tc.warmup_start_lr / tc.lr)
    return TokenAxis(recipe.mixture_plan.token_axis, tokens_per_step, recipe.mixture_plan.pilot_steps, run, tc.max_steps)


def check_recipe(recipe) -> None:
    if not recipe.data.general:
        raise DomainptError("plan-mixture: data.general has no sources: pilots replay general text, and the bound on "
                            "forgetting is its held-out loss")


def run_plan_mixture(recipe, shard: str | None = None, merge: bool = False) -> dict | None:
    """Every process (or --shard task) runs its share of the pilots; the main process then fits and writes the plan."""
    started = time.time()
    check_recipe(recipe)
    jobs = pilot_jobs(recipe, tokens_per_step(recipe))
    book = JobBook(recipe, STAGE, [], fingerprint=pilot_fingerprint(recipe))
    worker = this_worker(shard)
    if not merge:
        run_share(jobs, lambda job: run_pilot(recipe, job, worker), book, worker)
    if shard or not worker.main:
        return None
    markers = book.collect(jobs, "run `domainpt plan-mixture RECIPE` to do them here, or rerun the --shard tasks that hold them")
    started, workers = merged_start(markers) if merge else (started, worker.count)
    plan = make_plan(recipe, [markers[j.id]["result"] for j in jobs])
    out = stage_dir(recipe, STAGE)
    plan_plot(plan, out / "plan.png")
    atomic_write_json(out / "plan.json", plan)
    atomic_write_text(out / "plan.md", plan_markdown(plan))
    return write_manifest(recipe, STAGE, started, recommendation=plan["recommendation"], jobs=job_records(markers),
                          pilot_fingerprint=book.fingerprint,
                          **parallel_summary(markers, started, time.time() - started, workers))


MIN_DOCUMENTS = 5  # held-out documents per kind below which a bootstrap over documents gives no usable interval


def check_pilots(pilots: list[dict]) -> None:
    """Each pilot has its step-0 check (the base model) and at least 3 after it: a law in tokens needs them."""
    for p in pilots:
        after = [c for c in p["checks"] if c["tokens"] > 0]
        if p["checks"][0]["tokens"] != 0 or len(after) < 3:
            raise DomainptError(f"plan-mixture: the pilot at replay share {p['replay_share']:g} has {len(after)} held-out "
                                "checks after step 0 (a law in tokens needs 3) or none before it; raise "
                                "mixture_plan.pilot_steps or eval_points")


def make_plan(recipe, pilots: list[dict]) -> dict:
    """plan.json: the pilots as measured, the fits, the validation and the recommendation, with intervals."""
    mp, conf = recipe.mixture_plan, recipe.report.confidence
    check_pilots(pilots)
    tps = pilots[0]["tokens_per_step"]
    budget = budget_tokens(recipe, tps)
    axis = token_axis(recipe, tps)
    pts = Points(pilots, axis)
    try:
        forms, loso = choose_forms(pts, mp.holdout_share)
        point = estimate(pts, forms, mp.holdout_share, budget, mp)
    except FitError as e:
        raise DomainptError(f"plan-mixture: {e}; pilot more shares or longer (mixture_plan), or see the pilots' "
                            "losses in plan_mixture/pilots/*/pretrain/heldout.jsonl") from None
    n_docs = {k: len(pilots[0]["checks"][0][k]["nll"]) for k in KINDS}
    resampled = [k for k in KINDS if n_docs[k] >= MIN_DOCUMENTS]  # too few documents: kept as they are
    boot = bootstrap(pilots, axis, forms, point, mp.holdout_share, budget, mp, resampled, recipe.train.seed) if resampled else []
    ok = [b for b in boot if b is not None]
    fixed = [f"{k} ({n_docs[k]} document(s))" for k in KINDS if k not in resampled]

    def iv(kind, get):  # an interval over the resamples that fitted; None for a kind whose documents were kept
        return interval([get(b) for b in ok], conf) if ok and kind in resampled else None

    rec = point["recommendation"]
    validation = validation_of(point, iv, mp.holdout_share)
    validation["length"] = length_check(recipe, pilots, point, iv, axis, budget)
    longest = max(p["tokens"] for p in pilots if not is_long(p))
    recommendation = {"replay_share": rec["replay_share"], "budget_tokens": budget,
                      "predicted_domain_loss": rec.get("predicted_domain_loss"),
                      "predicted_general_loss": rec.get("predicted_general_loss"),
                      "override": None, "feasible": rec["feasible"], "general_bound": rec["general_bound"],
                      "base_general_loss": pts.base["general"], "base_domain_loss": pts.base["domain"],
                      "max_general_increase": mp.max_general_increase, "saturation_tokens": rec.get("saturation_tokens"),
                      "saturation_at_or_below": rec.get("saturation_at_or_below", False),
                      "extrapolation_factor": budget / longest, "tokens_per_step": tps,
                      "budget_axis_value": axis.run_end(budget),
                      "extrapolation_factor_axis": axis.run_end(budget) / float(pts.x[~pts.length].max())}
    if rec["replay_share"] is not None:
        steps = math.ceil(budget / tps)
        recommendation["override"] = f"data.replay_share={rec['replay_share']:g} train.max_steps={steps}"
        recommendation["interval"] = {f"{k}_loss": iv(k, lambda b, k=k: b["recommendation"][f"predicted_{k}_loss"]) for k in KINDS}
        # the share was chosen on the point estimate, so it sits near the bound: how often a resample puts it over
        over = [b["recommendation"]["predicted_general_loss"] > b["recommendation"]["general_bound"] for b in ok]
        recommendation["p_general_over_bound"] = sum(over) / len(over) if over and "general" in resampled else None
    else:
        recommendation["least_general_loss"] = rec["least_general_loss"]
    fits = {k: {**point["fits"][k]["all"].as_dict(), "share": "domain share (1 - replay share)" if k == "domain" else
                "replay share", "leave_one_share_out_error": loso[k], "axis": mp.token_axis,
                "d_unit_tokens": float(pts.tokens[~pts.length][np.argmax(pts.x[~pts.length])])} for k in KINDS}
    return {"recipe": recipe.name, "model": recipe.model.base, "confidence": conf, "bootstrap_samples": len(boot),
            "bootstrap_failed": len(boot) - len(ok), "heldout_documents": n_docs, "resampled_kinds": resampled,
            "interval_note": None if not fixed else
            f"{'no intervals' if not boot else 'intervals over ' + resampled[0] + ' documents only'}: the held-out "
            f"{' and '.join(fixed)} {'is' if len(fixed) == 1 else 'are'} fewer than {MIN_DOCUMENTS} documents, not "
            "resampled (raise data.heldout_docs or eval.ppl_max_tokens)",
            "tokens_per_step": tps, "token_axis": {"kind": mp.token_axis, "means": axis.describe()}, "base": {"domain_loss": pts.base["domain"], "general_loss": pts.base["general"]},
            "pilots": [pilot_entry(p, axis) for p in pilots if not is_long(p)],
            "length_pilot": next((pilot_entry(p, axis) for p in pilots if is_long(p)), None), "fits": fits, "validation": validation,
            "recommendation": recommendation, "curves": curves(point, pts, budget, rec["replay_share"], mp.holdout_share)}


def validation_of(point: dict, iv, holdout: float) -> dict:
    """plan.json's validation: the held-out share's last check, and each pilot's last from its earlier ones (the worst
    first), with intervals (`iv(kind, get)` over the bootstrap resamples)."""
    validation = {"replay_share": holdout, "extrapolation": {}}
    for kind in KINDS:
        validation[kind] = {**point["interpolation"][kind],
                            "interval": iv(kind, lambda b: b["interpolation"][kind]["predicted"]),
                            "relative_error_interval": iv(kind, lambda b: b["interpolation"][kind]["relative_error"])}
        per_pilot = [{**x, "interval": iv(kind, lambda b, i=i: b["extrapolation"][kind][i]["predicted"])}
                     for i, x in enumerate(point["extrapolation"][kind])]
        worst = max(range(len(per_pilot)), key=lambda i: abs(per_pilot[i]["relative_error"]))
        validation["extrapolation"][kind] = {
            **per_pilot[worst], "relative_error_interval": iv(kind, lambda b: b["extrapolation"][kind][worst]["relative_error"]),
            "worst_of": len(per_pilot), "per_pilot": per_pilot}
    return validation


def is_long(pilot: dict) -> bool:
    return pilot.get("length_factor", 1) > 1


def length_check(recipe, pilots: list[dict], point: dict, iv, axis: TokenAxis, budget: float) -> dict | None:
    """The long pilot's checks predicted by the law fitted on the others, with intervals; and the same under the other
    token axis (its own forms and fits, no intervals): the one check of the axis choice that each plan makes."""
    long = next((p for p in pilots if is_long(p)), None)
    if long is None:
        return None
    mp = recipe.mixture_plan
    out = {"replay_share": long["replay_share"], "steps": long["steps"], "tokens": long["tokens"], "axis": axis.kind}
    for kind in KINDS:
        out[kind] = {**point["length"][kind], "interval": iv(kind, lambda b: b["length"][kind]["predicted"]),
                     "relative_error_interval": iv(kind, lambda b: b["length"][kind]["relative_error"])}
    other = replace(axis, kind="tokens" if axis.kind == "lr_area" else "lr_area")
    try:
        pts = Points(pilots, other)
        forms, _ = choose_forms(pts, mp.holdout_share)
        theirs = estimate(pts, forms, mp.holdout_share, budget, mp)["length"]
        out["other_axis"] = {"axis": other.kind, **{k: {key: theirs[k][key] for key in ("predicted", "relative_error")}
                                                    for k in KINDS}, "forms": forms}
    except FitError:
        out["other_axis"] = None
    return out


def pilot_entry(p: dict, axis: TokenAxis) -> dict:
    checks = [c for c in p["checks"] if c["tokens"] > 0]
    return {"replay_share": p["replay_share"], "replay_share_actual": p.get("replay_share_actual"), "steps": p["steps"],
            "tokens": p["tokens"], "seconds": p["seconds"],
            **{f"{k}_loss": [[c["tokens"], mean_loss(c[k])] for c in checks] for k in KINDS},
            "axis_values": [axis.pilot_check(c["step"], p["steps"]) for c in checks]}


def curves(point: dict, pts: Points, budget: float, share: float | None, holdout: float) -> dict:
    """The fitted laws drawn per piloted share (as trained): what plan.png plots, kept in plan.json so the figure can
    be redrawn. `tokens` and each kind's lists: the loss at the end of a full run of that many tokens, from the first
    check to past the budget; `along_pilots`: the law along a pilot's own schedule, step by step (the same curve when
    token_axis is 'tokens'); `length_pilot`: the law along the length check's pilot. The held-out share's curves are
    the fit that did not see it, the others' and the long pilot's the fit on every ordinary pilot (the
    recommendation's)."""
    axis = pts.axis
    tokens = np.geomspace(pts.tokens.min(), max(budget, pts.tokens.max()) * 2, 40)
    ends = np.array([axis.run_end(t) for t in tokens])
    steps = np.arange(1, axis.pilot_steps + 1)
    along = np.array([axis.pilot_check(int(s)) for s in steps])
    trained = dict(zip(pts.share[~pts.length].tolist(), pts.replay[~pts.length].tolist()))
    shares = sorted(set(trained) | ({share} if share is not None else set()))
    out = {"tokens": tokens.tolist(), "replay_shares": shares,
           "along_pilots": {"tokens": (steps * axis.tokens_per_step).tolist(), "replay_shares": sorted(trained)}}
    for kind in KINDS:
        fits = point["fits"][kind]

        def law(r, d):
            f = fits["interpolation"] if np.isclose(r, holdout) else fits["all"]
            return f.predict(d, 1 - trained.get(r, r) if kind == "domain" else trained.get(r, r)).tolist()
        out[kind] = [law(r, ends) for r in shares]
        out["along_pilots"][kind] = [law(r, along) for r in sorted(trained)]
    if pts.length.any():
        r, replay = float(pts.share[pts.length][0]), float(pts.replay[pts.length][0])
        total = int(pts.steps[pts.length].max())
        x = np.array([axis.pilot_check(s, total) for s in range(1, total + 1)])
        out["length_pilot"] = {"replay_share": r, "tokens": [s * axis.tokens_per_step for s in range(1, total + 1)], **{
            kind: point["fits"][kind]["all"].predict(x, 1 - replay if kind == "domain" else replay).tolist()
            for kind in KINDS}}
    return out
