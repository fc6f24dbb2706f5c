"""The dual-batch plan against method §4's worked example and its impossible cases."""

import math

import pytest

from hdbl_mpi.errors import PlanError
from hdbl_mpi.rules.plan import feasible_extra_time, feasible_small_workers, make_plan, round_half_up, update_factor

EXAMPLE = dict(dataset_size=50_000, workers=4, batch_large=500, time_a=5.6607e-4, time_b=0.014041, extra_time=1.05)


@pytest.mark.parametrize("small,d_small,b_small",
                         [(1, 10_625, 84), (2, 11_875, 155), (3, 12_292, 205), (4, 12_500, 243)])
def test_spec_worked_example(small, d_small, b_small):
    plan = make_plan(small=small, **EXAMPLE)
    assert plan.d_large == 13_125
    assert plan.d_small == d_small
    assert plan.batch_small == b_small
    assert plan.factor_small == pytest.approx(d_small / 13_125)
    # Balanced: both groups' predicted commit times are t * T0 within the rounding of B_S.
    assert plan.commit_time_small == pytest.approx(1.05 * plan.baseline_commit_time, rel=0.01)
    # One round of n commits covers the data set (up to rounding of d_S).
    assert abs((4 - small) * plan.d_large + small * plan.d_small - 50_000) <= small


def test_formula_by_hand():
    D, n, n_s, B_L, a, b, t = 60_000, 4, 2, 256, 1.3e-3, 2.0e-3, 1.05
    T0 = (a + b / B_L) * D / n
    d_l = round_half_up(t * D / n)
    d_s = round_half_up((D - (n - n_s) * d_l) / n_s)
    b_s = round_half_up(b / (t * T0 / d_s - a))
    plan = make_plan(D, n, n_s, B_L, a, b, t)
    assert (plan.d_large, plan.d_small, plan.batch_small) == (d_l, d_s, b_s)
    assert plan.steps_small == round_half_up(d_s / b_s)


def test_no_small_workers_needs_no_time_model():
    plan = make_plan(50_000, 4, 0, 500, None, None, 1.05)
    assert plan.d_large == 12_500 and plan.batch_small is None and plan.steps_large == 25
    assert plan.commit_time_large is None


def test_round_half_up_is_not_bankers_rounding():
    assert round_half_up(84.5) == 85 and round_half_up(83.5) == 84 and round(84.5) == 84


def test_factor_rules():
    assert update_factor("ratio", 9, 16) == pytest.approx(0.5625)
    assert update_factor("sqrt", 9, 16) == pytest.approx(0.75)
    assert update_factor("none", 9, 16) == 1.0
    assert make_plan(small=2, factor="sqrt", **EXAMPLE).factor_small == pytest.approx(math.sqrt(11_875 / 13_125))


def test_large_workers_cover_the_epoch():
    # t = 1.4 with 3 large workers: 3 * 17,500 > 50,000 leaves nothing for the small one.
    with pytest.raises(PlanError) as err:
        make_plan(**{**EXAMPLE, "extra_time": 1.4}, small=1)
    text = str(err.value)
    assert "already cover the epoch" in text and "d_S=-2500" in text
    assert "dual.extra_time between" in text  # a feasible t range is suggested


def test_small_batch_rounds_below_one():
    # b = 0: a step has no fixed cost, so a small batch is not slower per sample and the balanced B_S is 0
    # (what a CPU at one thread per rank looks like). The message names the cause and the n_S/t that work.
    with pytest.raises(PlanError) as err:
        make_plan(60_000, 4, 2, 256, 1e-3, 0.0, 1.05)
    text = str(err.value)
    assert "rounds below 1" in text
    assert "no dual.extra_time in (1, 3] works with dual.small=2" in text


def test_b_s_never_exceeds_b_l_when_t_above_one():
    # d_S <= D/n whenever t > 1, so the balanced B_S stays below B_L: the B_S > B_L check is a guard only.
    for small in range(1, 5):
        for t in (1.0001, 1.01, 1.05, 1.2):
            try:
                plan = make_plan(small=small, **{**EXAMPLE, "extra_time": t})
            except PlanError:
                continue
            assert plan.batch_small <= plan.batch_large


def test_bad_inputs():
    with pytest.raises(PlanError, match="extra_time is 1.0"):
        make_plan(small=1, **{**EXAMPLE, "extra_time": 1.0})
    with pytest.raises(PlanError, match="dual.small is 5"):
        make_plan(small=5, **EXAMPLE)
    with pytest.raises(PlanError, match="hdbl profile"):
        make_plan(50_000, 4, 1, 500, None, 0.01, 1.05)
    with pytest.raises(PlanError, match="dual.factor"):
        make_plan(small=1, factor="half", **EXAMPLE)


def test_feasible_ranges():
    lo, hi = feasible_extra_time(50_000, 4, 1, 500, 5.6607e-4, 0.014041)
    assert 1.0 < lo <= 1.05 <= hi < 4 / 3  # 3 large workers cover the epoch at t = 4/3
    assert feasible_small_workers(50_000, 4, 500, 5.6607e-4, 0.014041, 1.05) == [1, 2, 3, 4]
