"""The speed-weighted allreduce's arithmetic (rules/speed_split.py, baselines/speeds.py's loss scale): batches in
proportion to speed that sum exactly to the step's samples within the memory cap, and the scaled losses whose
plain mean over ranks is the gradient of the mean over all the step's samples."""

from __future__ import annotations

import pytest
import torch

from hdbl_mpi.rules.speed_split import speed_batches


def test_equal_speeds_split_evenly_and_a_twice_slower_rank_gets_half():
    assert speed_batches([1.0] * 4, 256, 128) == [64, 64, 64, 64]
    assert speed_batches([1.0, 1.0, 1.0, 2.0], 256, 128) == [73, 73, 73, 37]


def test_the_sum_is_exact_and_every_rank_keeps_one_sample():
    for per in ([0.3, 0.7, 1.1], [1.0, 1e6], [2.0, 3.0, 5.0, 7.0, 11.0]):
        got = speed_batches(per, 100, 1000)
        assert sum(got) == 100 and min(got) >= 1, got


def test_the_cap_pins_the_fast_ranks_and_the_rest_share_by_speed():
    assert speed_batches([1.0, 10.0, 10.0, 10.0], 256, 100) == [100, 52, 52, 52]
    assert speed_batches([1.0, 1.0], 10, 3) == [5, 5]  # a cap below the even split cannot hold: it gives way


def test_bad_times_are_refused():
    with pytest.raises(ValueError, match="finite and > 0"):
        speed_batches([1.0, 0.0], 10, 10)
    with pytest.raises(ValueError, match="at least one"):
        speed_batches([1.0, 1.0, 1.0], 2, 10)


class FakeComm:
    def __init__(self, rank: int, size: int, gathered: list | None = None) -> None:
        self.rank, self.size, self.gathered = rank, size, gathered

    def allgather(self, _value: float) -> list:
        return self.gathered


def test_scaled_losses_averaged_over_ranks_give_the_sample_mean_gradient():
    """Rank i's loss is the mean over its B_i samples, scaled by SpeedWeights.loss_scale; the backends average
    the ranks' gradients (divide by n), which leaves the gradient of the mean over all the step's samples."""
    from hdbl_mpi.baselines.speeds import SpeedWeights

    torch.manual_seed(0)
    w = torch.randn(5, requires_grad=True)
    batches = [7, 3, 2]  # 3 ranks, B_L = 4: 12 samples a step
    data = [torch.randn(b, 5) for b in batches]
    grads = []
    for rank, x in enumerate(data):
        scale = SpeedWeights(FakeComm(rank, 3), 4, 0, None, batches).loss_scale
        (g,) = torch.autograd.grad((x @ w).pow(2).mean() * scale, w)
        grads.append(g)
    (expected,) = torch.autograd.grad((torch.cat(data) @ w).pow(2).mean(), w)
    assert torch.allclose(torch.stack(grads).mean(0), expected, atol=1e-6)


def test_a_rebalance_splits_by_the_measured_speeds_and_keeps_a_history():
    from hdbl_mpi.baselines.speeds import SpeedWeights
    from hdbl_mpi.rules.worker_plan import StepLine

    lines = [StepLine(1e-3, 0.0), StepLine(2e-3, 0.0)]
    weights = SpeedWeights(FakeComm(1, 2, gathered=[1.0e-3, 1.0e-3]), 64, 0, lines)
    assert weights.batches == [85, 43] and weights.history[0]["from"] == "profile"
    assert weights.loss_scale == pytest.approx(2 * 43 / 128)
    weights.rebalance(own_s=0.043, samples=43, at_epoch=0.5)  # both now run 1 ms a sample: even again
    assert weights.batches == [64, 64] and weights.summary()["changes"] == 1
