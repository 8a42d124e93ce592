"""What the loop does after a step whose loss or gradient norm is not finite (train.on_bad_step).

'skip' drops the update and goes on; 'rollback' goes back to the last checkpoint and past the batches that
caused it; 'stop' ends the run. Any policy stops after train.max_bad_steps bad steps without getting past the
last one. Pure bookkeeping, so it is tested without a model (tests/test_bad_steps.py).
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

from domainpt.errors import DomainptError


def bad_step_reason(loss: float, grad_norm: float | None, mixed_precision: str) -> str | None:
    """Why a step must not update the weights, or None. Under fp16 the loss scaler handles non-finite
    gradients itself (it skips the step and lowers the scale), so only the loss counts there."""
    if not math.isfinite(loss):
        return f"loss is {loss}"
    if grad_norm is not None and not math.isfinite(grad_norm) and mixed_precision != "fp16":
        return f"gradient norm is {grad_norm}"
    return None


@dataclasses.dataclass
class BadStepPolicy:
    on_bad_step: str  # skip | rollback | stop
    max_bad_steps: int
    bad_steps: int = 0  # in the whole run
    bad_in_a_row: int = 0  # since the loop last got past a bad step
    last_bad_at: int = 0  # the step number of the latest bad step

    def after_good_step(self, step_number: int) -> None:
        if step_number > self.last_bad_at:  # past the last bad step (after a rollback, only then)
            self.bad_in_a_row = 0

    def after_bad_step(self, step_number: int, reason: str, last_checkpoint: Path | None) -> str:
        """'skip' or 'rollback' for bad step `step_number` (1-based); raises DomainptError when the run must stop."""
        self.bad_steps += 1
        self.bad_in_a_row += 1
        self.last_bad_at = step_number
        if self.on_bad_step == "stop" or self.bad_in_a_row >= self.max_bad_steps:
            why = "train.on_bad_step=stop" if self.on_bad_step == "stop" else \
                f"{self.bad_in_a_row} bad steps without getting past step {self.last_bad_at}, train.max_bad_steps={self.max_bad_steps}"
            raise DomainptError(f"{reason} at step {step_number} ({why}); lower train.lr or check the data; "
                                f"the last good checkpoint is {last_checkpoint or 'none'}")
        if self.on_bad_step == "rollback":
            if last_checkpoint is None:
                raise DomainptError(f"{reason} at step {step_number}: train.on_bad_step=rollback needs a checkpoint to go "
                                    f"back to; set train.save_every")
            return "rollback"
        return "skip"
