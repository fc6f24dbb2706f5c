"""debug.slow (hdbl_mpi/run/slow.py): emulated slow ranks, the same in every mode."""

from __future__ import annotations

import time

import pytest

from hdbl_mpi.config import config_from_dict, load_config
from hdbl_mpi.errors import ConfigError
from hdbl_mpi.run.records import CommitRecord
from hdbl_mpi.run.slow import Slowdown, pattern, slow_record, slowed
from hdbl_mpi.schema import SlowChanging, SlowConfig


def test_a_static_factor_sleeps_what_makes_the_step_that_much_slower(monkeypatch):
    naps: list[float] = []
    monkeypatch.setattr(time, "sleep", naps.append)
    s = Slowdown(SlowConfig(ranks={2: 3.0}), rank=2, worker=1, t0=0.0)
    assert s.active and s.pad(64, 32, 0.5) == pytest.approx(1.0) and naps == [pytest.approx(1.0)]
    other = Slowdown(SlowConfig(ranks={2: 3.0}), rank=1, worker=0, t0=0.0)
    assert not other.active and other.pad(64, 32, 0.5) == 0.0 and s.slept_s == pytest.approx(1.0)


def test_a_factor_from_s_applies_only_once_that_many_seconds_have_passed():
    c = SlowChanging(factor=3.0, p=1.0, period_s=5.0, seed=0)
    late = Slowdown(SlowConfig(ranks={2: 2.0}, from_s=10.0), rank=2, worker=1, t0=100.0)
    both = Slowdown(SlowConfig(ranks={2: 2.0}, from_s=10.0, changing=c), rank=2, worker=1, t0=100.0)
    assert late.active and late.factor(109.9) == 1.0 and late.factor(110.0) == late.factor(500.0) == 2.0
    assert both.factor(105.0) == 3.0 and both.factor(111.0) == 6.0  # the changing pattern is not delayed


def test_the_paced_mode_pads_every_step_to_the_modelled_time(monkeypatch):
    monkeypatch.setattr(time, "sleep", lambda s: None)
    tau = lambda batch, resolution: 0.001 * batch + 0.01  # noqa: E731
    fast = Slowdown(SlowConfig(pace=1.5), rank=1, worker=0, t0=0.0, tau=tau)
    slow = Slowdown(SlowConfig(pace=1.5, ranks={2: 2.0}), rank=2, worker=1, t0=0.0, tau=tau)
    assert fast.pad(100, 32, 0.05) == pytest.approx(1.5 * 0.11 - 0.05)  # its own speed no longer matters
    assert slow.pad(100, 32, 0.05) == pytest.approx(2 * 1.5 * 0.11 - 0.05)
    assert fast.pad(100, 32, 1.0) == 0.0  # a step slower than the model is left as it is


def test_the_changing_pattern_is_the_seeds_and_the_same_in_every_mode():
    c = SlowChanging(factor=3.0, p=0.25, period_s=10.0, seed=7)
    drawn = pattern(7, 0.25, workers=4, periods=40)
    assert drawn == pattern(7, 0.25, workers=4, periods=40) and drawn != pattern(8, 0.25, workers=4, periods=40)
    share = sum(len(w) for w in drawn) / (4 * 40)
    assert 0.1 < share < 0.4  # about p
    # worker 1 is rank 2 under a parameter server and rank 1 without one: the same factor at the same moment
    with_server = Slowdown(SlowConfig(changing=c), rank=2, worker=1, t0=100.0)
    without = Slowdown(SlowConfig(changing=c), rank=1, worker=1, t0=100.0)
    for period in range(40):
        now = 100.0 + 10.0 * period + 5.0
        expected = 3.0 if slowed(7, period, 1, 0.25) else 1.0
        assert with_server.factor(now) == without.factor(now) == expected


def test_summary_says_what_was_emulated_and_what_each_worker_slept():
    record = CommitRecord(1, "small", "h", 1, 1, 1, 0, 32, 64, 2, 128, 0.1, 1.0, 0.5, 2.0, 0.1, 0.0, 2.1, 0.0,
                          slowed_s=1.0)
    got = slow_record(SlowConfig(ranks={1: 2.0}), [record, record])
    assert got is not None and got["slept_s"] == {"1": 2.0} and got["ranks"] == {1: 2.0}
    assert "emulation" in got and slow_record(SlowConfig(), [record]) is None


@pytest.mark.parametrize("assignment, message", [
    ("debug.slow.ranks={0: 2}", r"debug.slow.ranks names rank 0; the training ranks of this config are 1..4 \(rank 0 "
                                r"is the server\)"),
    ("debug.slow.ranks={9: 2}", "names rank 9"),
    ("debug.slow.ranks={1: 0.5}", r"debug.slow.ranks\[1\] is 0.5; it must be a number >= 1"),
    ("debug.slow.delay_s={1: -1}", r"debug.slow.delay_s\[1\] is -1; it must be a number >= 0"),
    ("debug.slow.changing={factor: 3, p: 1.5, period_s: 5}", "debug.slow.changing.p is 1.5"),
    ("debug.slow.changing={factor: 3, p: 0.5}", "debug.slow.changing.period_s is 0.0"),
    ("debug.slow.pace=1.3", "debug.slow.pace pads each step to the step-time model"),
    ("debug.slow.from_s=-1", r"debug.slow.from_s is -1.0; give the seconds after the run's start"),
])
def test_bad_slow_settings_say_what_to_do(assignment, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, ["dual.batch_large=64", assignment])


def test_every_rank_trains_without_a_server_and_the_old_keys_still_read():
    assert load_config(None, ["dual.batch_large=64", "ps.mode=allreduce", "debug.slow.ranks={0: 2}"]
                       ).debug.slow.ranks == {0: 2}
    old = config_from_dict({"dual": {"batch_large": 64}, "debug": {"slow_rank": 2, "slow_seconds": 0.5}})
    assert old.debug.slow.delay_s == {2: 0.5}  # a run directory's config.yaml of an earlier version
    assert config_from_dict({"dual": {"batch_large": 64}, "debug": {"slow_rank": -1, "slow_seconds": 0.0}}
                            ).debug.slow == SlowConfig()
