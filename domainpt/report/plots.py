"""Report plots as PNG files (matplotlib, no display needed)."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def training_curves(metrics: list[dict], history: list[dict], path: Path) -> Path:
    """Training loss and the held-out domain/general perplexities over steps (the forgetting curve);
    `history` holds the held-out checks, including the one before the first step."""
    fig, ax1 = plt.subplots(figsize=(7, 3.5))
    good = [m for m in metrics if m.get("loss") is not None]  # skipped (NaN) steps carry no loss
    ax1.plot([m["step"] for m in good], [m["loss"] for m in good], color="#888888", lw=1, label="training loss")
    ax1.set_xlabel("optimizer step")
    ax1.set_ylabel("training loss")
    ax2 = ax1.twinx()
    for key, color, label in (("eval_domain_ppl", "#c0392b", "held-out domain ppl"), ("eval_general_ppl", "#2471a3", "held-out general ppl")):
        pts = [(m["step"], m[key]) for m in history if m.get(key) is not None]
        if pts:
            ax2.plot(*zip(*pts), marker="o", color=color, label=label)
    ax2.set_ylabel("perplexity")
    lines = ax1.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
    labels = ax1.get_legend_handles_labels()[1] + ax2.get_legend_handles_labels()[1]
    ax1.legend(lines, labels, loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=3, fontsize=8, frameon=False)
    ax1.set_title("Continued pre-training: loss and forgetting")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def task_bars(tasks: dict, path: Path) -> Path:
    """Per task: zero-shot and fine-tuned scores of both models, with interval error bars."""
    names = list(tasks)
    fig, ax = plt.subplots(figsize=(max(5, 2.6 * len(names)), 3.5))
    series = [("general_model", "zero_shot", "general zero-shot", "#aed6f1"), ("domain_model", "zero_shot", "domain zero-shot", "#f5b7b1"),
              ("general_model", "finetuned", "general + LoRA", "#2471a3"), ("domain_model", "finetuned", "domain + LoRA", "#c0392b")]
    width = 0.8 / len(series)
    for k, (model, kind, label, color) in enumerate(series):
        xs, ys, err = [], [], [[], []]
        for i, n in enumerate(names):
            e = tasks[n][model].get(kind)
            if e is None:
                continue
            xs.append(i + (k - 1.5) * width)
            ys.append(e["mean"])
            err[0].append(e["mean"] - e["ci"][0])
            err[1].append(e["ci"][1] - e["mean"])
        ax.bar(xs, ys, width, yerr=err, capsize=3, color=color, label=label)
    ax.set_xticks(range(len(names)), names)
    ax.set_ylabel(tasks[names[0]]["metric"] if names else "")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8, ncol=2)
    ax.set_title("Task scores (95% bootstrap intervals)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def cost_vs_gain(points: list[dict], path: Path) -> Path:
    """Several runs: pre-training compute (GPU-hours or CPU-hours) against mean task gain."""
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for p in points:
        ax.errorbar(p["cost"], p["gain"], yerr=[[p["gain"] - p["ci"][0]], [p["ci"][1] - p["gain"]]], fmt="o", capsize=3)
        ax.annotate(p["name"], (p["cost"], p["gain"]), fontsize=8, xytext=(4, 4), textcoords="offset points")
    ax.axhline(0, color="#999999", lw=0.8)
    ax.set_xlabel(points[0]["cost_unit"] if points else "cost")
    ax.set_ylabel("mean task gain (domain - general)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
