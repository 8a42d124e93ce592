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
