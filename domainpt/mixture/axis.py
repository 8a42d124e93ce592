"""What the mixture law's D counts (mixture_plan.token_axis): where a check along a pilot, and the end of the full run,
sit on the one axis the law is fitted in.

    tokens    the tokens trained: step x tokens_per_step
    lr_area   the tokens trained weighted by the learning rate over its peak: lr_area(step) x tokens_per_step

A pilot's checks fall at different points of its decaying schedule (high LR early, low at its end), and the full run's
end is at the end of a schedule four or more times as long. In plain tokens the law reads the flattening that the
pilot's decay causes as saturation and predicts the long run too pessimistically; in LR area a check mid-way through a
cosine and the end of a longer run are compared by how much learning each has taken (Tissue et al. 2024, arXiv
2408.11029; measured on the medical demo in BENCHMARKS.md).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from domainpt.training.schedules import lr_area


def stretched_warmup(warmup: int, steps: int, run_steps: int) -> int:
    """A run's warm-up stretched over a pilot of `steps` (at least a step where the run warms up at all)."""
    return max(1, round(warmup * steps / run_steps)) if warmup else 0


@dataclass(frozen=True)
class Schedule:
    """A run's learning-rate schedule as train.* names it, in units of its peak."""
    warmup: int
    schedule: str
    min_ratio: float
    decay_share: float
    start_ratio: float


@dataclass
class TokenAxis:
    kind: str                # "lr_area" or "tokens"
    tokens_per_step: int
    pilot_steps: int         # an ordinary pilot's length (the length check's is longer)
    run: Schedule            # the full run's schedule (the recipe's own); a pilot's is the same, its warm-up stretched
    run_steps: int           # the full run's length (train.max_steps), what a pilot's warm-up is stretched from
    _ends: dict = field(default_factory=dict, init=False, compare=False, repr=False)  # run_end's, per step count

    def at(self, step: int, total: int, schedule: Schedule) -> float:
        """D at optimizer step `step` of a `total`-step run on `schedule`."""
        if self.kind == "tokens":
            return float(step * self.tokens_per_step)
        s = schedule
        return lr_area(step, total, s.warmup, s.schedule, s.min_ratio, s.decay_share, s.start_ratio) * self.tokens_per_step

    def pilot_schedule(self, steps: int) -> Schedule:
        return replace(self.run, warmup=stretched_warmup(self.run.warmup, steps, self.run_steps))

    def pilot_check(self, step: int, steps: int | None = None) -> float:
        """D at the held-out check after `step` steps of a pilot `steps` long (an ordinary pilot's by default)."""
        steps = steps or self.pilot_steps
        return self.at(step, steps, self.pilot_schedule(steps))

    def run_end(self, tokens: float) -> float:
        """D at the end of a full run of `tokens` tokens (its schedule over all of them): what a budget is asked at.
        Between whole steps (a plan asks of budget / 64, a fraction of a step on a short recipe) it is interpolated."""
        if self.kind == "tokens":
            return float(tokens)
        steps = tokens / self.tokens_per_step
        lo = math.floor(steps)
        below, above = self._end(lo), self._end(lo + 1)
        return below + (steps - lo) * (above - below)

    def _end(self, steps: int) -> float:
        if steps not in self._ends:  # a plan asks the same few budgets once per bootstrap resample
            self._ends[steps] = self.at(steps, steps, self.run) if steps else 0.0
        return self._ends[steps]

    def describe(self) -> str:
        return ("tokens weighted by the learning rate over its peak (LR area)" if self.kind == "lr_area"
                else "training tokens")
