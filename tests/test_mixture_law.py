"""The continual pre-training laws (domainpt/mixture/law.py): fits recover known curves, the form is chosen by how it
predicts a share it has not seen, and a form with too few points is refused."""
import numpy as np
import pytest

from domainpt.mixture.law import FORMS, choose_form, fit, huber, leave_one_share_out

SHARES = [0.1, 0.25, 0.5, 0.75, 0.9]
TOKENS = np.array([0.2, 0.4, 0.6, 0.8, 1.0]) * 1e5


def grid(shares=SHARES):
    t, r = np.meshgrid(TOKENS, shares)
    return t.ravel(), r.ravel()


def test_cmr_fit_recovers_its_parameters():
    known = np.array([2.5, -0.4, 0.3, -0.2, 0.6])  # A1 < 0: at a high share the loss falls faster with tokens
    t, r = grid()
    f = fit("cmr", t, r, FORMS["cmr"].curve(known, t / 1e5, r))
    np.testing.assert_allclose(f.params, known, rtol=1e-3, atol=1e-3)
    assert f.r2 > 0.9999


def test_dcpt_fit_recovers_the_identifiable_parameters_and_predicts_beyond_its_points():
    known = np.array([2.0, 0.6, 0.5, 0.3, 0.05, 0.4, 0.05])
    t, r = grid()
    f = fit("dcpt", t, r, FORMS["dcpt"].curve(known, t / 1e5, r))
    # B, beta and eta set how the loss falls with tokens; E trades off against C, gamma and eps (a nearly constant term
    # across five shares), so only their sum is pinned down: it shows in the predictions below
    np.testing.assert_allclose(f.params[1:4], known[1:4], rtol=0.05)
    for tokens, share in ((4e5, 0.4), (1e6, 0.1), (2e5, 0.6)):  # 4-10x the pilots' tokens, shares between theirs
        assert f.predict(tokens, share) == pytest.approx(FORMS["dcpt"].curve(known, tokens / 1e5, share), rel=2e-3)


def test_a_rising_curve_forgetting_is_fitted_too():
    known = np.array([3.0, -1.0, -0.2, 0.5, 0.5])  # A0 < 0: general loss rises with tokens at a low replay share
    t, r = grid()
    y = FORMS["cmr"].curve(known, t / 1e5, r)
    assert y[0] < y[4]  # share 0.1: the loss rises from the first point to the last
    assert fit("cmr", t, r, y).r2 > 0.9999


def test_the_form_that_predicts_unseen_shares_is_chosen_not_the_one_with_more_parameters():
    t, r = grid()
    rng = np.random.default_rng(0)
    y = FORMS["cmr"].curve(np.array([2.5, -0.4, 0.3, -0.2, 0.6]), t / 1e5, r) * np.exp(rng.normal(0, 0.002, len(t)))
    name, errors = choose_form(t, r, y)
    assert set(errors) == {"dcpt", "cmr"} and None not in errors.values()
    assert name == min(errors, key=errors.get)
    assert errors["cmr"] < 0.01  # the true form predicts each left-out share's last point within 1%


def test_leave_one_share_out_error_is_large_when_the_law_is_wrong():
    t, r = grid()
    y = 2.0 + 0.5 * np.sin(8 * r) + 0.1 / (t / 1e5)  # no monotone law in the share fits this
    assert leave_one_share_out("cmr", t, r, y) > 0.02


def test_too_few_points_for_a_form_are_refused():
    with pytest.raises(ValueError, match="cannot fit 7 parameters"):
        fit("dcpt", [1e5, 2e5, 3e5], [0.1, 0.1, 0.1], [2.0, 1.9, 1.8])


def test_huber_is_quadratic_inside_delta_and_linear_outside():
    assert huber(np.array([1e-4]))[0] == pytest.approx(0.5e-8)
    assert huber(np.array([0.1]))[0] == pytest.approx(1e-3 * (0.1 - 0.5e-3))
