"""The server's per-worker shares (ps/assign.py with dual.per_worker, ps/balance.py: SpeedBalance), without MPI:
identical workers get what the group plan gives them; a worker measured twice as slow gets about half the share
in the next assignment; the lines are checkpointed; survivors keep their speeds."""

from __future__ import annotations

import pytest

from hdbl_mpi.config import config_from_dict
from hdbl_mpi.ps.assign import Assignments
from hdbl_mpi.ps.balance import SpeedBalance, describe_replan
from hdbl_mpi.ps.state import ServerState
from hdbl_mpi.rules.plan import make_plan
from hdbl_mpi.rules.schedule import from_config
from hdbl_mpi.rules.worker_plan import StepLine

A, B = 1.6e-4, 3.0e-3
WORKERS = [1, 2, 3, 4]


def _assignments(per_worker: bool, replan: bool = False, state: ServerState | None = None,
                 lines: dict | None = None) -> Assignments:
    config = config_from_dict({"data": {"name": "synthetic"}, "train": {"epochs": 4}, "dual": {
        "workers": 4, "small": 2, "batch_large": 64, "time_a": A, "time_b": B, "per_worker": per_worker,
        "replan": replan, "replan_threshold": 1.2}})
    plans = {16: make_plan(60000, 4, 2, 64, A, B, 1.05)}
    return Assignments(config, from_config(config, 16), plans, state or ServerState(), WORKERS, lines)


def _commit(assign: Assignments, rank: int, slowdown: float, at: int) -> dict | None:
    task = assign.next(rank)
    compute = slowdown * (A * task.batch + B) * task.steps
    info = {"resolution": 16.0, "batch": float(task.batch), "steps": float(task.steps), "compute_s": compute}
    return assign.observe(rank, info, at)


def test_identical_workers_are_assigned_exactly_what_the_group_plan_gives():
    papers, mine = _assignments(False), _assignments(True)
    for w in WORKERS:
        assert mine.next(w) == papers.next(w)
        assert mine.factor(w) == papers.factor(w) and mine.updates[w] == papers.updates[w]


def test_a_worker_measured_twice_as_slow_gets_half_the_share_of_the_others():
    assign = _assignments(True, replan=True)
    before = {w: assign.next(w).share for w in WORKERS}
    changes = [c for at in range(1, 4) for w in WORKERS if (c := _commit(assign, w, 2.0 if w == 4 else 1.0, at))]
    (change,) = changes
    assert change["kind"] == "speeds" and change["imbalance"] == pytest.approx(2.0, rel=0.02)
    assert change["scales"]["4"] == pytest.approx(2.0, rel=1e-6) and change["scales"]["3"] == pytest.approx(1.0)
    after = {w: assign.next(w).share for w in WORKERS}
    assert after[4] == pytest.approx(after[3] / 2, abs=1) and after[3] > before[3]
    assert assign.factor(4) == pytest.approx(assign.factor(3) / 2, rel=1e-3)
    assert assign.state.worker_lines["16"]["4"] == pytest.approx([2 * A, 2 * B])
    assert assign.state.replans == [change] and "rank 4: d=" in describe_replan(change, 1.2)
    # the re-planned commits are balanced: no further re-plan
    assert not [c for at in range(4, 8) for w in WORKERS if _commit(assign, w, 2.0 if w == 4 else 1.0, at)]


def test_a_resume_hands_out_the_checkpointed_lines():
    first = _assignments(True, replan=True)
    for at in range(1, 4):
        for w in WORKERS:
            _commit(first, w, 2.0 if w == 4 else 1.0, at)
    state = ServerState(worker_lines=first.state.worker_lines)
    again = _assignments(True, state=state)
    assert [again.next(w) for w in WORKERS] == [first.next(w) for w in WORKERS]


def test_profiled_lines_are_used_and_survivors_keep_their_speed():
    lines = {16: {1: StepLine(A, B), 2: StepLine(A, B), 3: StepLine(A, B), 4: StepLine(3 * A, 3 * B)}}
    assign = _assignments(True, lines=lines)
    assert assign.next(4).share == pytest.approx(assign.next(3).share / 3, abs=1)
    change = assign.survivors([2, 3, 4], "lost rank(s) [1]")
    assert isinstance(change, dict) and set(change["samples"]) == {"2", "3", "4"}
    assert assign.next(4).share == pytest.approx(assign.next(3).share / 3, abs=1)


def test_the_speed_monitor_skips_first_commits_waits_for_every_worker_and_one_slow_commit_is_not_enough():
    monitor = SpeedBalance(threshold=1.2, window=4)
    assert monitor.observe(1, 9.0, 1.0, [1, 2]) is None and monitor.observe(2, 9.0, 1.0, [1, 2]) is None  # first
    assert monitor.observe(1, 1.0, 1.0, [1, 2]) is None and monitor.observe(1, 1.1, 1.0, [1, 2]) is None
    assert monitor.observe(2, 1.1, 1.0, [1, 2]) is None and monitor.observe(2, 1.0, 1.0, [1, 2]) is None
    assert monitor.observe(2, 3.0, 1.0, [1, 2]) is None  # the median of 1.1, 1.0, 3.0: one outlier
    change = monitor.observe(2, 3.0, 1.0, [1, 2])
    assert change is not None and change["scales"]["2"] == pytest.approx(2.05)  # median of 1.1, 1.0, 3.0, 3.0
    assert change["scales"]["1"] == pytest.approx(1.05) and change["imbalance"] == pytest.approx(2.05 / 1.05)
    assert monitor.samples == {}


def test_a_commit_trained_on_an_old_share_is_judged_by_the_line_it_is_predicted_with_now():
    monitor = SpeedBalance(threshold=1.2, window=4)
    for rank in (1, 2):
        monitor.observe(rank, 5.0, 1.0, [1, 2])
    # rank 2 is twice as slow; its line already says so (predicted 2.0): its speed matches, no imbalance
    for _ in range(3):
        assert monitor.observe(1, 1.0, 1.0, [1, 2]) is None and monitor.observe(2, 2.0, 2.0, [1, 2]) is None


@pytest.mark.parametrize("per_worker", [False, True])
def test_a_spare_is_handed_the_lost_workers_role_exactly(per_worker):
    """ps.spares: the spare (rank 5) taking small-batch rank 2's place gets rank 2's group, batch, share and merge
    weight; nobody else's assignment changes, and a stand-in's stand-in (rank 6) plays the same role."""
    assign = _assignments(per_worker)
    before = {w: (assign.next(w), assign.updates[w]) for w in WORKERS}
    assign.hand_over(2, 5)
    assert assign.group(5) == "small" and assign.next(5) == before[2][0] and assign.updates[5] == before[2][1]
    assert all((assign.next(w), assign.updates[w]) == before[w] for w in (1, 3, 4))
    assign.hand_over(5, 6)
    assert assign.group(6) == "small" and assign.next(6) == before[2][0] and assign.factor(6) == assign.factor(1)


def test_a_hand_over_to_a_spare_that_turned_out_dead_can_be_undone_for_the_next_one():
    assign = _assignments(True)
    before = assign.next(3)
    assign.hand_over(3, 5)
    assign.hand_over(5, 3)  # the send to spare 5 failed: the role goes back to rank 3's name
    assign.hand_over(3, 6)
    assert assign.next(6) == before and assign.group(6) == "large"
