"""Merge rules (method §3) as applied by the server: one torch.lerp_ with the rule's weight."""

import numpy as np
import pytest
import torch

from hdbl_mpi.rules.merge import bsp_weights, merge_weight


@pytest.mark.parametrize("f", [1.0, 0.8095, 0.25])
def test_journal_rule(f):
    rng = np.random.default_rng(0)
    W, Wk = rng.normal(size=1000).astype(np.float32), rng.normal(size=1000).astype(np.float32)
    expected = (W + f * Wk) / (1 + f)
    merged = torch.from_numpy(W.copy()).lerp_(torch.from_numpy(Wk), merge_weight("journal", f))
    np.testing.assert_allclose(merged.numpy(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("f", [1.0, 0.8095, 0.25])
def test_conference_rule(f):
    rng = np.random.default_rng(1)
    W, Wk = rng.normal(size=1000).astype(np.float32), rng.normal(size=1000).astype(np.float32)
    expected = W + (f / 2) * (Wk - W)
    merged = torch.from_numpy(W.copy()).lerp_(torch.from_numpy(Wk), merge_weight("conference", f))
    np.testing.assert_allclose(merged.numpy(), expected, rtol=1e-5, atol=1e-6)


def test_rules_agree_only_for_large_batch_pushes():
    assert merge_weight("journal", 1.0) == merge_weight("conference", 1.0) == 0.5
    assert merge_weight("journal", 0.5) == pytest.approx(1 / 3)
    assert merge_weight("conference", 0.5) == pytest.approx(0.25)


def test_bsp_weights_are_normalised_factors():
    assert bsp_weights([1.0, 1.0, 0.5]) == pytest.approx([0.4, 0.4, 0.2])
    with pytest.raises(ValueError):
        bsp_weights([])


def test_bad_rule_and_factor():
    with pytest.raises(ValueError, match="unknown merge rule"):
        merge_weight("average", 1.0)
    with pytest.raises(ValueError):
        merge_weight("journal", 0.0)


def test_the_delta_rule_steps_parameters_and_interpolates_buffers():
    """W_params += outer_lr * f * Delta_k; the BatchNorm statistics (after the split) move as in the journal rule."""
    from hdbl_mpi.ps.shards import ShardMath
    from hdbl_mpi.rules.merge import push_update
    from hdbl_mpi.rules.policy import OP_DELTA

    update = push_update("delta", 0.5, outer_lr=0.8)
    assert (update.op, update.value, update.value2) == (OP_DELTA, pytest.approx(0.4), pytest.approx(1 / 3))
    W = torch.tensor([1.0, 2.0, 3.0, 10.0, 20.0])
    math_ = ShardMath(W, split=3)
    math_.recv.copy_(torch.tensor([0.5, -1.0, 0.0, 13.0, 17.0]))  # parameter changes, then pushed buffers
    math_.apply(update)
    assert W.tolist() == pytest.approx([1.2, 1.6, 3.0, 11.0, 19.0])


def test_outer_nesterov_momentum_accumulates_over_pushes():
    """v = m*v + lr*Delta; W += lr*Delta + m*v: the same change pushed twice moves W further the second time."""
    from hdbl_mpi.ps.shards import ShardMath

    W = torch.zeros(2)
    math_ = ShardMath(W, momentum=0.5)
    for _ in range(2):
        math_.recv.fill_(1.0)
        math_.step(0.1, 0.5)
    # push 1: v = 0.1, W = 0.1 + 0.05 = 0.15; push 2: v = 0.05 + 0.1 = 0.15, W = 0.15 + 0.1 + 0.075 = 0.325
    assert W.tolist() == pytest.approx([0.325, 0.325])


def test_workers_push_their_change_only_under_the_delta_rule():
    from hdbl_mpi.rules.merge import push_update, pushes_change
    from hdbl_mpi.rules.policy import OP_MERGE

    assert pushes_change("delta") and not pushes_change("journal") and not pushes_change("conference")
    assert push_update("journal", 1.0).op == OP_MERGE and push_update("journal", 1.0).value == 0.5


def test_delayed_momentum_adds_up_to_one_nesterov_step_on_the_rounds_sum():
    """Two pushes of 1.0 at lr 0.1 in a round of 2: each goes in plainly (W = 0.2), then the round's momentum step:
    v = 0.5*0 + 0.2, W += 0.5*v -> 0.3, exactly Nesterov's step on the summed change g = 0.2 (W += g + m*v)."""
    from hdbl_mpi.ps.shards import ShardMath
    from hdbl_mpi.rules.policy import OP_MOMENTUM, Update

    W = torch.zeros(2)
    math_ = ShardMath(W, momentum=0.5, delayed=True)
    for _ in range(2):
        math_.recv.fill_(1.0)
        math_.step(0.1, 0.5)
    assert W.tolist() == pytest.approx([0.2, 0.2])
    math_.apply(Update(OP_MOMENTUM))
    assert W.tolist() == pytest.approx([0.3, 0.3]) and math_.velocity.tolist() == pytest.approx([0.2, 0.2])
    for _ in range(2):  # the next round: v = 0.5*0.2 + 0.2 = 0.3; W = 0.3 + 0.2 + 0.15
        math_.recv.fill_(1.0)
        math_.step(0.1, 0.5)
    math_.apply(Update(OP_MOMENTUM))
    assert W.tolist() == pytest.approx([0.65, 0.65])


def test_a_stale_push_weighs_less_by_the_decay():
    from hdbl_mpi.rules.merge import push_update, scaled, staleness_scale
    from hdbl_mpi.rules.policy import OP_DROP, Update

    assert staleness_scale(0, 0.5) == 1.0 and staleness_scale(3, 0.5) == pytest.approx(0.5)
    assert staleness_scale(7, 0.0) == 1.0
    merge = push_update("journal", 1.0)
    assert scaled(merge, 0.5).value == pytest.approx(0.25)
    delta = scaled(push_update("delta", 1.0, outer_lr=0.25), 0.5)
    assert (delta.value, delta.value2) == (pytest.approx(0.125), pytest.approx(0.25))
    assert scaled(Update(OP_DROP), 0.5) == Update(OP_DROP)
    with pytest.raises(ValueError, match="cannot be negative"):
        staleness_scale(-1, 0.5)


def test_the_clock_counts_merges_since_each_pull_and_ends_rounds():
    from hdbl_mpi.config import config_from_dict
    from hdbl_mpi.ps.staleness import PushClock
    from hdbl_mpi.rules.merge import push_update
    from hdbl_mpi.rules.policy import OP_MOMENTUM

    config = config_from_dict({"dual": {"workers": 2, "batch_large": 8}, "ps": {
        "merge": "delta", "outer_momentum": 0.9, "outer_delayed": True, "staleness_decay": 1.0}})
    clock = PushClock(config, [1, 2])
    push = push_update("delta", 1.0, outer_lr=0.5)
    first, end, staleness = clock.push(1, push, training=2)
    assert staleness == 0 and first == push and end is None
    clock.reply(1)
    second, end, staleness = clock.push(2, push, training=2)  # pulled before rank 1's merge: 1 merge old
    assert staleness == 1 and second.value == pytest.approx(0.25) and end.op == OP_MOMENTUM
    _, end, staleness = clock.push(1, push, training=2)
    assert staleness == 1 and end is None
    assert clock.summary()["by_worker"] == {"1": {"mean": 0.5, "max": 1}, "2": {"mean": 1.0, "max": 1}}
