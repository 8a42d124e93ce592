"""plan-mixture's plan.md (the plan in words and tables) and plan.png (measured points, fitted curves, the held-out
share, the recommendation)."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

KINDS = ("domain", "general")


def _iv(iv) -> str:
    return f" [{iv[0]:.4f}, {iv[1]:.4f}]" if iv else ""


def _pct(x: float) -> str:
    return f"{x:+.2%}"


def _ivp(iv) -> str:
    return f" [{iv[0]:+.2%}, {iv[1]:+.2%}]" if iv else ""


def plan_markdown(plan: dict) -> str:
    v, rec, fits = plan["validation"], plan["recommendation"], plan["fits"]
    conf = f"{plan['confidence']:.0%}"
    docs = " and ".join(f"{plan['heldout_documents'][k]} {k}" for k in plan["resampled_kinds"])
    boot = (f"Intervals: {conf} bootstrap over the held-out documents ({docs}; {plan['bootstrap_samples']} resamples, "
            f"every law refitted, {plan['bootstrap_failed']} that would not fit left out); they hold the chosen forms and "
            "the recommended share fixed and do not include run-to-run (seed) variation of the pilots."
            ) if plan["bootstrap_samples"] else ""
    if plan["interval_note"]:
        boot += f" {plan['interval_note'][0].upper()}{plan['interval_note'][1:]}."
    lines = [f"# Mixture plan: {plan['recipe']}", "",
             f"Pilots of {plan['model']} at {len(plan['pilots'])} replay shares; held-out loss is mean NLL per token "
             f"(nats). {boot}", "", "## Recommendation", ""]
    if rec["replay_share"] is None:
        least = rec["least_general_loss"]
        lines.append(f"**No share meets the bound**: at {rec['budget_tokens']:,.0f} tokens every piloted share's predicted "
                     f"general loss exceeds the base model's {rec['base_general_loss']:.4f} x (1 + "
                     f"{rec['max_general_increase']:g}) = {rec['general_bound']:.4f}; the lowest is "
                     f"{least['predicted']:.4f} at replay share {least['replay_share']:g}. Replay more general text than "
                     "was piloted, train fewer tokens, or allow more forgetting (mixture_plan.max_general_increase).")
    else:
        ivs = rec.get("interval", {})
        sat = rec["saturation_tokens"]
        lines += [f"**Replay share {rec['replay_share']:g}** at {rec['budget_tokens']:,.0f} tokens: predicted domain loss "
                  f"{rec['predicted_domain_loss']:.4f}{_iv(ivs.get('domain_loss'))} (base model "
                  f"{rec['base_domain_loss']:.4f}), general loss {rec['predicted_general_loss']:.4f}"
                  f"{_iv(ivs.get('general_loss'))} within the bound {rec['general_bound']:.4f} (base "
                  f"{rec['base_general_loss']:.4f} x (1 + {rec['max_general_increase']:g})).", "",
                  f"Use it: `domainpt run RECIPE {rec['override']}` (steps of {rec['tokens_per_step']:,} tokens: "
                  "train.global_batch_size, or train.batch_size x grad_accum of one process; on P processes without "
                  "train.global_batch_size a step is P times as many tokens).", "",
                  "More tokens stop paying (doubling them lowers the predicted domain loss by less than "
                  "mixture_plan.min_gain_per_doubling) " + (
                      (f"at or below ~{sat:,.0f} tokens (the smallest checked)." if rec["saturation_at_or_below"]
                       else f"at ~{sat:,.0f} tokens.") if sat else "nowhere up to 1,024 x the budget.")]
        if rec.get("p_general_over_bound") is not None:
            lines += ["", f"The share was chosen on the point predictions, so it sits near the bound: in "
                          f"{rec['p_general_over_bound']:.0%} of the resamples its predicted general loss is over it."]
    if rec["extrapolation_factor"] > 2:
        lines += ["", f"**The budget is {rec['extrapolation_factor']:.1f}x the longest ordinary pilot's tokens** "
                      f"({rec['extrapolation_factor_axis']:.1f}x on the law's axis): the "
                      "recommendation extrapolates that far in tokens, further than the validation below checks "
                      "(each pilot's last check from its earlier ones). " + (
                          "Checks along a pilot fall at different points of its learning-rate schedule, which the law "
                          "in plain tokens (mixture_plan.token_axis) reads as an effect of tokens."
                          if plan["token_axis"]["kind"] == "tokens" else
                          "The law places the pilots' checks and the full run's end by the learning rate each has "
                          "taken (mixture_plan.token_axis: lr_area), not by their tokens alone.")]
    lines += ["", "## Validation (the law's own errors, as measured)", "",
              "Relative error = predicted / measured - 1 (positive: the law predicts a higher loss than was measured).",
              "", "| check | loss | predicted | measured | relative error |", "|---|---|---|---|---|"]
    for kind in KINDS:
        x = v[kind]
        lines.append(f"| held-out share {v['replay_share']:g} (interpolation) | {kind} | {x['predicted']:.4f}{_iv(x['interval'])} "
                     f"| {x['measured']:.4f} | {_pct(x['relative_error'])}{_ivp(x['relative_error_interval'])} |")
    for kind in KINDS:
        x = v["extrapolation"][kind]
        lines.append(f"| last check from the earlier ones (worst of {x['worst_of']} pilots: share {x['replay_share']:g}) "
                     f"| {kind} | {x['predicted']:.4f}{_iv(x['interval'])} | {x['measured']:.4f} | "
                     f"{_pct(x['relative_error'])}{_ivp(x['relative_error_interval'])} |")
    lines += length_rows(plan)
    lines += ["", "## Fits", "", "| loss | form | parameters | R² | leave-one-share-out error per form |", "|---|---|---|---|---|"]
    for kind in KINDS:
        f = fits[kind]
        params = ", ".join(f"{k}={p:.4g}" for k, p in f["params"].items())
        loso = ", ".join(f"{k} {e:.2%}" if e is not None else f"{k}: too few points to fit without a share"
                         for k, e in f["leave_one_share_out_error"].items())
        lines.append(f"| {kind} (r = {f['share']}) | `{f['formula']}` | {params} | {f['r2']:.4f} | {loso} |")
    lines += ["", f"D: {plan['token_axis']['means']}, in units of {fits['domain']['d_unit']:,.0f} (the "
              "longest ordinary pilot's end); a pilot's checks at their steps of its schedule, the budget at the end of the full "
              "run's. The form with "
              "the lowest leave-one-share-out error (each fitted share's last check predicted from the other shares) is "
              "chosen per loss; R² alone would favour the form with more parameters.", "", "## Pilots", "",
              "| replay share | steps | tokens | domain loss (last) | general loss (last) | seconds |", "|---|---|---|---|---|---|"]
    for p in plan["pilots"] + [x for x in [plan.get("length_pilot")] if x]:
        lines.append(f"| {p['replay_share']:g}{' (length check)' if p is plan.get('length_pilot') else ''} | {p['steps']} "
                     f"| {p['tokens']:,} | {p['domain_loss'][-1][1]:.4f} | {p['general_loss'][-1][1]:.4f} | {p['seconds']:.0f} |")
    lines += ["", f"Base model: domain loss {plan['base']['domain_loss']:.4f}, general loss {plan['base']['general_loss']:.4f}.",
              "", "![plan](plan.png)", ""]
    return "\n".join(lines)


def length_rows(plan: dict) -> list[str]:
    """The length check's rows of the validation table, and the two token axes on it."""
    x = plan["validation"].get("length")
    if not x:
        return []
    rows = [f"| a pilot {x['steps']} steps long (share {x['replay_share']:g}), its end from the other pilots | {kind} | "
            f"{x[kind]['predicted']:.4f}{_iv(x[kind]['interval'])} | {x[kind]['measured']:.4f} | "
            f"{_pct(x[kind]['relative_error'])}{_ivp(x[kind]['relative_error_interval'])} |" for kind in KINDS]
    other = x.get("other_axis")
    if other:
        errs = " and ".join(f"{kind} {_pct(x[kind]['relative_error'])} against {_pct(other[kind]['relative_error'])}"
                            for kind in KINDS)
        rows += ["", f"The length check under this plan's token axis (`{x['axis']}`) and under `{other['axis']}` "
                     f"(mixture_plan.token_axis): {errs}. It is the only check here of how the law carries to a longer "
                     "schedule, which the recommendation relies on; where the other axis does clearly better, refit "
                     "with it (the pilots are kept)."]
    return rows


def plan_plot(plan: dict, path: Path) -> Path:
    """Per loss: each pilot's measured checks, the fitted law per share, the held-out share starred, the budget and
    (general) the bound."""
    c, rec = plan["curves"], plan["recommendation"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    cmap = plt.get_cmap("viridis")
    shares = c["replay_shares"]
    for ax, kind in zip(axes, KINDS):
        for i, r in enumerate(shares):
            color = cmap(i / max(1, len(shares) - 1))
            recommended = rec["replay_share"] is not None and r == rec["replay_share"]
            ax.plot(c["tokens"], c[kind][i], color=color, lw=2.2 if recommended else 1,
                    ls="-" if recommended else "--", label=f"replay {r:g}" + (" (recommended)" if recommended else ""))
            pilot = next((p for p in plan["pilots"] if p["replay_share"] == r), None)
            along = c.get("along_pilots")
            if pilot and along:  # the law along the pilot's own schedule, through its checks
                j = along["replay_shares"].index(r)
                ax.plot(along["tokens"], along[kind][j], color=color, lw=0.8, alpha=0.7)
            if pilot:
                held = r == plan["validation"]["replay_share"]
                xs, ys = zip(*pilot[f"{kind}_loss"])
                ax.scatter(xs, ys, color=color, marker="*" if held else "o", s=80 if held else 25, zorder=3)
        long, along = plan.get("length_pilot"), c.get("length_pilot")
        if long and along:  # the length check: its checks, and the law fitted without it along its schedule
            ax.plot(along["tokens"], along[kind], color="#c0392b", lw=0.8)
            xs, ys = zip(*long[f"{kind}_loss"])
            ax.scatter(xs, ys, color="#c0392b", marker="D", s=22, zorder=3,
                       label=f"{long['steps']}-step pilot (length check)" if kind == "general" else None)
        ax.axvline(rec["budget_tokens"], color="#555555", lw=0.8, ls=":")
        if kind == "general":
            ax.axhline(rec["general_bound"], color="#c0392b", lw=0.8, ls=":", label="forgetting bound")
        if rec["replay_share"] is not None:
            iv = (rec.get("interval") or {}).get(f"{kind}_loss")
            if iv:
                ax.errorbar([rec["budget_tokens"]], [rec[f"predicted_{kind}_loss"]],
                            yerr=[[rec[f"predicted_{kind}_loss"] - iv[0]], [iv[1] - rec[f"predicted_{kind}_loss"]]],
                            fmt="s", color="black", capsize=3, zorder=4)
        ax.set_xscale("log")
        ax.set_xlabel("training tokens (dashed, thick: a full run's end; thin: along a pilot; dotted: the budget)", fontsize=8)
        ax.set_ylabel(f"held-out {kind} loss (nats/token)")
        ax.set_title(f"{kind} loss: measured and fitted (star: the held-out share, fitted without it)", fontsize=8)
    axes[1].legend(fontsize=7, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
