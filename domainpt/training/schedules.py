"""Learning-rate schedules as pure functions of the step: multiplier of the peak LR in [0, 1]."""
from __future__ import annotations

import math


def lr_multiplier(step: int, total: int, warmup: int, schedule: str, min_ratio: float = 0.1, decay_share: float = 0.2,
                  start_ratio: float = 0.0) -> float:
    """LR at optimizer step `step` (0-based) as a share of the peak.

    The warm-up rises linearly from start_ratio (0, or the checkpoint's final LR over the peak when
    re-warming from where the base model's pre-training ended) to 1 at step `warmup`.
    cosine:   warm-up, then cosine from 1 to min_ratio at the last step.
    wsd:      warm-up, stable at 1, then linear decay to min_ratio over the last decay_share of steps.
    constant: warm-up, then 1.
    """
    if warmup > 0 and step < warmup:
        return start_ratio + (1 - start_ratio) * (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        span = max(1, total - 1 - warmup)
        progress = min(1.0, (step - warmup) / span)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    if schedule == "wsd":
        decay_steps = max(1, round(total * decay_share))
        decay_start = total - decay_steps
        if step < decay_start:
            return 1.0
        progress = min(1.0, (step - decay_start + 1) / decay_steps)
        return 1.0 - (1 - min_ratio) * progress
    raise ValueError(f"unknown schedule {schedule}")



def lr_area(steps: int, total: int, warmup: int, schedule: str, min_ratio: float = 0.1, decay_share: float = 0.2,
            start_ratio: float = 0.0) -> float:
    """The learning rate summed over the first `steps` optimizer steps of a `total`-step run, in units of the peak:
    how many steps at the peak LR the run has taken so far (= `steps` on a constant schedule). The loss of a run
    depends on it more than on its step count (Tissue et al. 2024, arXiv 2408.11029): mid-way through a cosine a run
    has taken more of its learning than its share of steps says. In closed form (each piece of lr_multiplier is an
    arithmetic or a cosine series), so a plan can ask it of runs of millions of steps at once."""
    if not 0 <= steps <= total:
        raise ValueError(f"lr_area: steps must be in [0, total={total}], got {steps}")
    w = min(steps, warmup)
    area = w * start_ratio + (1 - start_ratio) * w * (w + 1) / (2 * warmup) if w else 0.0
    after = steps - w  # steps past the warm-up: warmup .. steps - 1
    if after <= 0 or schedule == "constant":
        return area + max(0, after)
    if schedule == "cosine":
        theta = math.pi / max(1, total - 1 - warmup)  # step warmup + k is at cos(theta k), k = 0 .. after - 1
        cosines = math.sin(after * theta / 2) * math.cos((after - 1) * theta / 2) / math.sin(theta / 2)
        return area + after * (min_ratio + (1 - min_ratio) / 2) + (1 - min_ratio) / 2 * cosines
    if schedule == "wsd":
        decay_steps = max(1, round(total * decay_share))
        decay_start = total - decay_steps
        stable = max(0, min(steps, decay_start) - warmup)
        first, last = max(warmup, decay_start) - decay_start + 1, steps - decay_start  # progress x decay_steps
        decaying = max(0, last - first + 1)
        return area + stable + decaying - (1 - min_ratio) * (first + last) * decaying / (2 * decay_steps)
    raise ValueError(f"unknown schedule {schedule}")
