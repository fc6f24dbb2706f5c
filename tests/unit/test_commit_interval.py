"""dual.commit_interval turned into k (rules/commit_interval.py): steps, seconds and auto, the bounds, a k per
resolution, and the forms refused with what is accepted."""

from __future__ import annotations

import pytest

from hdbl_mpi.config import load_config
from hdbl_mpi.errors import ConfigError
from hdbl_mpi.rules.commit_interval import choose, parse
from hdbl_mpi.rules.plan import make_plan

# 4 large-batch workers, 60,000 samples, B_L 64: 234 steps and 15000 * (1e-4 + 2e-3/64) = 1.97 s an epoch
PLAN = make_plan(60000, 4, 0, 64, 1e-4, 2e-3, 1.0)


def test_the_forms():
    assert parse("auto") == ("auto", None) and parse("32 steps") == ("steps", 32.0)
    assert parse("2.5 s") == ("seconds", 2.5) and parse("1 step") == ("steps", 1.0)
    for bad in ("often", "0 steps", "-3 s", "5"):
        with pytest.raises(ConfigError, match="use auto, 'H steps'"):
            parse(bad)


def test_steps_and_seconds_give_k():
    assert PLAN.steps_large == 234
    assert choose("32 steps", {28: PLAN}, None, 0.05).k == 7  # 234 / 32 = 7.3
    assert choose("0.5 s", {28: PLAN}, None, 0.05).k == 4  # 1.97 s / 0.5 s = 3.9
    assert choose("1000 steps", {28: PLAN}, None, 0.05).k == 1 and choose("1 step", {28: PLAN}, None, 0.05).k == 234


def test_auto_keeps_the_exchange_within_its_share():
    chosen = choose("auto", {28: PLAN}, 0.004, 0.05)  # 4 ms a commit: 0.05 * 1.97 / 0.004 = 24.6
    assert chosen.k == 24 and chosen.share == [pytest.approx(0.004 * 24 / PLAN.commit_time_large)]
    assert chosen.share[0] <= 0.05 and choose("auto", {28: PLAN}, 10.0, 0.05).k == 1  # a slow exchange: the papers' k
    assert choose("auto", {28: PLAN}, 1e-7, 0.05).k == 234  # never less than a step per commit


def test_each_resolution_gets_its_own_k():
    small = make_plan(60000, 4, 0, 64, 0.25e-4, 0.5e-3, 1.0)  # a quarter of the time per epoch
    chosen = choose("auto", {28: PLAN, 20: small}, 0.004, 0.05)
    assert chosen.k == [6, 24] and chosen.resolutions == [20, 28]  # floor(0.05 * 0.49 / 0.004), then as above
    assert all(s <= 0.05 for s in chosen.share) and chosen.share[0] == pytest.approx(chosen.share[1])
    assert choose("0.5 s", {28: PLAN, 20: small}, None, 0.05).k == [1, 4]  # round(0.49 / 0.5), round(1.97 / 0.5)
    assert choose("32 steps", {28: PLAN, 20: small}, None, 0.05).k == 7  # the same steps: one number, as before


def test_time_based_intervals_need_the_step_model():
    blind = make_plan(60000, 4, 0, 64, None, None, 1.0)
    assert choose("16 steps", {28: blind}, None, 0.05).k == 15
    with pytest.raises(ConfigError, match="needs the predicted epoch time"):
        choose("auto", {28: blind}, 0.004, 0.05)


def test_the_config_checks_it():
    with pytest.raises(ConfigError, match="dual.commit_interval is 'soon'"):
        load_config(None, ["dual.batch_large=64", "dual.commit_interval=soon"])
    with pytest.raises(ConfigError, match="ps.mode=allreduce has no commits"):
        load_config(None, ["dual.batch_large=64", "dual.commit_interval=auto", "ps.mode=allreduce"])
    with pytest.raises(ConfigError, match="dual.commit_share is 1.5"):
        load_config(None, ["dual.batch_large=64", "dual.commit_share=1.5"])
