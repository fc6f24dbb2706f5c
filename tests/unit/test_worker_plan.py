"""The plan per worker (rules/worker_plan.py): identical workers get the group plan exactly; workers of different
speeds get shares that make every commit take the same time and still cover the data set once."""

from __future__ import annotations

import itertools

import pytest

from hdbl_mpi.errors import PlanError
from hdbl_mpi.rules.plan import make_plan
from hdbl_mpi.rules.worker_plan import LARGE, SMALL, StepLine, for_survivors, rescaled, same_line_plan, worker_plan


def _groups(n: int, small: int) -> dict[int, str]:
    return {r: SMALL if r <= small else LARGE for r in range(1, n + 1)}


@pytest.mark.parametrize(("D", "n", "n_s", "B_L", "a", "b", "t"), [
    (60000, 4, 2, 64, 1.6e-4, 3.0e-3, 1.05),       # the CPU demo's shape
    (50000, 4, 2, 512, 1.55e-5, 9.85e-3, 1.05),    # the H200's ResNet-18 at 32 px
    (1281167, 16, 4, 256, 1.1e-3, 2.0e-2, 1.1),    # ImageNet-sized
    (10001, 3, 1, 100, 2.0e-4, 1.0e-2, 1.2),
    (60000, 4, 0, 64, 1.6e-4, 3.0e-3, 1.0),        # no small-batch group
])
def test_identical_workers_get_the_group_plan_exactly(D, n, n_s, B_L, a, b, t):
    plan = make_plan(D, n, n_s, B_L, a, b, t)
    per = same_line_plan(plan, list(range(1, n + 1)), _groups(n, n_s))
    assert per.baseline_commit_time == plan.baseline_commit_time
    for share in per.shares:
        samples, batch, steps = plan.share(share.group)
        assert (share.samples, share.batch, share.steps) == (samples, batch, steps)
        assert share.factor == (plan.factor_small if share.group == SMALL else 1.0)
        expected = plan.commit_time_small if share.group == SMALL else plan.commit_time_large
        assert share.commit_time == expected


def test_the_exact_match_holds_over_a_grid_of_shapes():
    for D, n, B_L, t in itertools.product((9999, 50000, 60001), (2, 3, 4, 8), (32, 100, 512), (1.05, 1.1, 1.25)):
        for n_s in range(1, n):
            try:
                plan = make_plan(D, n, n_s, B_L, 1.0e-4, 5.0e-3, t)
            except PlanError:
                continue
            per = same_line_plan(plan, list(range(1, n + 1)), _groups(n, n_s))
            assert [(s.samples, s.batch) for s in per.shares] == [
                plan.share(g)[:2] for g in _groups(n, n_s).values()], (D, n, n_s, B_L, t)


def test_a_twice_slower_large_worker_trains_half_as_much_in_the_same_time():
    plan = make_plan(60000, 4, 2, 64, 1.6e-4, 3.0e-3, 1.05)
    line = StepLine(1.6e-4, 3.0e-3)
    lines = {1: line, 2: line, 3: line, 4: line.scaled(2.0)}
    per = worker_plan(plan, lines, _groups(4, 2))
    fast, slow = per.of(3), per.of(4)
    assert slow.samples == pytest.approx(fast.samples / 2, abs=1)
    assert slow.factor == pytest.approx(fast.factor / 2, rel=1e-3)  # its push weighs its samples
    assert per.imbalance == pytest.approx(1.0, abs=0.02)  # every commit takes t*T0, up to rounding
    assert sum(s.samples for s in per.shares) == pytest.approx(60000, abs=4)
    # T0 is the all-large commit of the mixed workers: slower than identical workers', faster than the slow one's
    assert plan.baseline_commit_time < per.baseline_commit_time < 2 * plan.baseline_commit_time


def test_a_slower_small_worker_gets_less_data_in_the_same_time():
    plan = make_plan(60000, 4, 2, 64, 1.6e-4, 3.0e-3, 1.05)
    line = StepLine(1.6e-4, 3.0e-3)
    per = worker_plan(plan, {1: line.scaled(1.5), 2: line, 3: line, 4: line}, _groups(4, 2))
    # a uniform slowdown stretches a and b alike: its share shrinks by the factor and its balanced batch stays
    assert per.of(1).samples == pytest.approx(per.of(2).samples / 1.5, abs=1)
    assert per.of(1).batch == per.of(2).batch
    other = worker_plan(plan, {1: StepLine(3.2e-4, 3.0e-3), 2: line, 3: line, 4: line}, _groups(4, 2))
    assert other.of(1).batch != other.of(2).batch  # a slower per-sample cost alone: a batch of its own
    assert other.imbalance == pytest.approx(1.0, abs=0.03)
    assert per.imbalance == pytest.approx(1.0, abs=0.03)
    assert per.of(3).samples == per.of(4).samples


def test_rescaling_by_the_measured_slowdown_rebalances():
    plan = make_plan(60000, 4, 2, 64, 1.6e-4, 3.0e-3, 1.05)
    start = same_line_plan(plan, [1, 2, 3, 4], _groups(4, 2))
    slowed = rescaled(start, plan, {4: 2.0})
    mean_speed = (3 + 0.5) / 4  # relative to the others: rank 4 at half their speed
    assert slowed.of(4).samples == pytest.approx(start.of(4).samples * 0.5 / mean_speed, abs=1)
    assert slowed.of(3).samples == pytest.approx(start.of(3).samples / mean_speed, abs=1)
    recovered = rescaled(slowed, plan, {4: 0.5})
    assert [(s.samples, s.batch) for s in recovered.shares] == [(s.samples, s.batch) for s in start.shares]


def test_survivors_keep_their_lines():
    plan = make_plan(60000, 4, 2, 64, 1.6e-4, 3.0e-3, 1.05)
    line = StepLine(1.6e-4, 3.0e-3)
    per = worker_plan(plan, {1: line, 2: line, 3: line, 4: line.scaled(2.0)}, _groups(4, 2))
    three = make_plan(45000, 3, 1, 64, 1.6e-4, 3.0e-3, 1.05)
    left = for_survivors(three, per, [2, 3, 4])
    assert [s.rank for s in left.shares] == [2, 3, 4]
    assert left.of(4).line == line.scaled(2.0) and left.of(4).samples < left.of(3).samples


def test_large_workers_that_cover_the_epoch_alone_are_refused_naming_the_small_worker():
    plan = make_plan(60000, 4, 1, 64, 1.6e-4, 3.0e-3, 1.3)  # identical workers: d_S = 1500
    line = StepLine(1.6e-4, 3.0e-3)
    faster = line.scaled(0.8)
    with pytest.raises(PlanError, match="small-batch rank 1 gets -"):
        worker_plan(plan, {1: line, 2: faster, 3: faster, 4: faster}, _groups(4, 1))
