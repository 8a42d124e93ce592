"""The bad-step policy (train.on_bad_step), without a model: what the loop does after each good or bad step.
tests/test_reliability.py runs the same policy through real killed and NaN-injected runs."""
from pathlib import Path

import pytest

from domainpt.errors import DomainptError
from domainpt.training.bad_steps import BadStepPolicy, bad_step_reason

CKPT = Path("run/pretrain/checkpoints/step_4")


def test_a_step_is_bad_when_its_loss_or_gradient_norm_is_not_finite():
    assert bad_step_reason(2.5, 1.0, "no") is None
    assert bad_step_reason(float("nan"), 1.0, "no") == "loss is nan"
    assert bad_step_reason(2.5, float("inf"), "bf16") == "gradient norm is inf"
    assert bad_step_reason(2.5, None, "no") is None  # no norm computed (e.g. DeepSpeed clips itself)


def test_under_fp16_a_non_finite_gradient_is_the_loss_scalers_business():
    assert bad_step_reason(2.5, float("inf"), "fp16") is None
    assert bad_step_reason(float("inf"), 1.0, "fp16") == "loss is inf"


def test_skip_goes_on_and_counts_every_bad_step():
    p = BadStepPolicy("skip", max_bad_steps=5)
    assert p.after_bad_step(6, "loss is nan", CKPT) == "skip"
    p.after_good_step(7)
    assert p.after_bad_step(9, "loss is nan", None) == "skip"  # skip needs no checkpoint
    assert (p.bad_steps, p.bad_in_a_row) == (2, 1)  # the good step 7 reset the run of bad ones


def test_too_many_bad_steps_in_a_row_stop_and_name_the_last_good_checkpoint():
    p = BadStepPolicy("skip", max_bad_steps=3)
    p.after_bad_step(6, "loss is nan", CKPT)
    p.after_bad_step(7, "loss is nan", CKPT)
    with pytest.raises(DomainptError, match=r"loss is nan at step 8 \(3 bad steps without getting past step 8, "
                                            r"train.max_bad_steps=3\).*last good checkpoint is run/pretrain/checkpoints/step_4"):
        p.after_bad_step(8, "loss is nan", CKPT)


def test_stop_stops_at_the_first_bad_step():
    with pytest.raises(DomainptError, match=r"gradient norm is inf at step 2 \(train.on_bad_step=stop\).*is none"):
        BadStepPolicy("stop", max_bad_steps=5).after_bad_step(2, "gradient norm is inf", None)


def test_rollback_needs_a_checkpoint_to_go_back_to():
    p = BadStepPolicy("rollback", max_bad_steps=5)
    assert p.after_bad_step(6, "loss is nan", CKPT) == "rollback"
    with pytest.raises(DomainptError, match="rollback needs a checkpoint to go back to; set train.save_every"):
        BadStepPolicy("rollback", max_bad_steps=5).after_bad_step(3, "loss is nan", None)


def test_after_a_rollback_only_getting_past_the_bad_step_resets_the_count():
    """Rolled back from step 6 to step 4: good steps 5 and 6 replay old ground, so a bad step that keeps coming
    back still reaches max_bad_steps instead of looping forever."""
    p = BadStepPolicy("rollback", max_bad_steps=2)
    assert p.after_bad_step(6, "loss is nan", CKPT) == "rollback"
    p.after_good_step(5)
    p.after_good_step(6)  # not past step 6 yet
    with pytest.raises(DomainptError, match="2 bad steps without getting past step 7"):
        p.after_bad_step(7, "loss is nan", CKPT)
    q = BadStepPolicy("rollback", max_bad_steps=2)
    q.after_bad_step(6, "loss is nan", CKPT)
    q.after_good_step(7)  # past it: the count starts again
    assert q.after_bad_step(8, "loss is nan", CKPT) == "rollback"
