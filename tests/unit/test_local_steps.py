"""LocalSGD local-step strategies and the SlowMo update (hdbl_mpi.rules.local_steps) against explicit sequences."""

import pytest
import torch

from hdbl_mpi.errors import ConfigError
from hdbl_mpi.rules.local_steps import STRATEGIES, make_local_steps
from hdbl_mpi.rules.slowmo import slowmo_update


def _by_loss(strategy, losses):
    """H for each round when the rounds report `losses` (round 0 sees no loss); epochs are irrelevant here."""
    hs = [strategy.next_h(0, 0.0, None)]
    for r, loss in enumerate(losses, start=1):
        hs.append(strategy.next_h(r, float(r), loss))
    return hs


def _by_epoch(strategy, epochs):
    return [strategy.next_h(r, float(e), None) for r, e in enumerate(epochs)]


def test_constant_keeps_h():
    assert _by_loss(make_local_steps("constant", 4, 1, 8, 10), [3.0, 1.0, 9.0]) == [4, 4, 4, 4]


def test_loss_halve_double_doubles_on_lower_loss_and_halves_otherwise():
    s = make_local_steps("loss_halve_double", 4, 1, 16, 10)
    losses = [2.0, 1.8, 1.5, 1.4, 1.45, 1.45, 1.46, 1.47, 1.48]
    # first loss is only the reference; 16 is the cap, equal loss halves, 1 is the floor
    assert _by_loss(s, losses) == [4, 4, 8, 16, 16, 8, 4, 2, 1, 1]


def test_loss_halve_double_halves_odd_h_half_up():
    assert _by_loss(make_local_steps("loss_halve_double", 3, 1, 8, 10), [2.0, 2.1, 2.2]) == [3, 3, 2, 1]


def test_loss_window_compares_sliding_window_means():
    s = make_local_steps("loss_window", 4, 1, 32, 10, window=2)
    # decisions start once 4 losses are known: [5,4 | 3,2] better, [4,3 | 2,3] better, [3,2 | 3,4] worse, ...
    assert _by_loss(s, [5.0, 4.0, 3.0, 2.0, 3.0, 4.0, 5.0]) == [4, 4, 4, 4, 8, 16, 8, 4]


def test_improvement_steps_h_by_relative_improvement():
    s = make_local_steps("improvement", 4, 2, 6, 10, threshold=0.1)
    # 10 -> 8 is 20 %, 8 -> 7 12.5 %, 7 -> 6.5 7 %, 6.5 -> 5 23 %, 5 -> 4 20 % (capped at 6), 4 -> 4 0 %
    assert _by_loss(s, [10.0, 8.0, 7.0, 6.5, 5.0, 4.0, 4.0]) == [4, 4, 5, 6, 5, 6, 6, 5]
    s = make_local_steps("improvement", 5, 1, 9, 10, threshold=0.0, step=3)
    assert _by_loss(s, [1.0, 1.0, 1.1, 1.2]) == [5, 5, 8, 5, 2]  # equal loss is a 0 % improvement


def test_linear_strategies_round_half_up():
    up = make_local_steps("linear_increase", 0, 1, 4, 6)
    assert _by_epoch(up, [0, 1, 2, 3, 4, 5, 6, 9]) == [1, 2, 2, 3, 3, 4, 4, 4]  # 1.5 -> 2, 2.5 -> 3, 3.5 -> 4
    down = make_local_steps("linear_decrease", 0, 1, 4, 6)
    assert _by_epoch(down, [0, 1, 2, 3, 4, 5, 6, 9]) == [4, 4, 3, 3, 2, 2, 1, 1]
    assert up.next_h(8, 2.25, None) == 2  # fractional epoch: 1 + 3 * 0.375 = 2.125


def test_pow2_strategies_double_or_halve_every_share_of_training():
    up = make_local_steps("pow2_increase", 0, 2, 32, 10)  # 4 doublings: 5 levels of 2 epochs each
    assert _by_epoch(up, range(11)) == [2, 2, 4, 4, 8, 8, 16, 16, 32, 32, 32]
    down = make_local_steps("pow2_decrease", 0, 1, 12, 10, every=1)
    assert _by_epoch(down, range(7)) == [12, 6, 3, 2, 1, 1, 1]  # 1.5 -> 2, 0.75 -> 1, then the floor
    tenths = make_local_steps("pow2_increase", 0, 1, 64, 10, every=0.1)
    assert tenths.next_h(0, 0.3, None) == 8  # 0.3 / 0.1 is 2.9999999999999996 in floats, still step 3


def test_reverse_cosine_rises_slowly_at_both_ends():
    s = make_local_steps("reverse_cosine", 0, 1, 4, 4)
    # 1 + 3 * (1 - cos(pi f)) / 2 at f = 0, .25, .5, .75, 1: 1, 1.44, 2.5, 3.56, 4
    assert _by_epoch(s, range(5)) == [1, 1, 3, 4, 4]


def test_sigmoid_switches_around_mid_training():
    s = make_local_steps("sigmoid", 0, 1, 9, 10)
    # 1 + 8 / (1 + exp(-10 (f - 0.5))): 1.05, 1.14, 1.38, 1.95, 3.15, 5, 6.85, 8.05, 8.62, 8.86, 8.95
    assert _by_epoch(s, range(11)) == [1, 1, 1, 2, 3, 5, 7, 8, 9, 9, 9]
    gentle = make_local_steps("sigmoid", 0, 1, 9, 10, steepness=2)
    assert _by_epoch(gentle, [0, 5, 10]) == [3, 5, 7]  # 1 + 8/(1 + e) = 3.15, 5, 1 + 8/(1 + 1/e) = 6.85


@pytest.mark.parametrize("name", STRATEGIES)
def test_every_strategy_stays_within_bounds(name):
    s = make_local_steps(name, 5, 3, 11, 20)
    losses = [5.0, 4.0, 3.0, 2.5, 2.0, 1.0, 0.5, 0.4, 0.3, 0.2, 0.1, 0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]
    hs = [s.next_h(0, 0.0, None)] + [s.next_h(r, r * 1.3, loss) for r, loss in enumerate(losses, start=1)]
    assert all(3 <= h <= 11 for h in hs)
    assert s.name == name


def test_bad_arguments_name_the_config_key():
    with pytest.raises(ConfigError, match="local.h_min"):
        make_local_steps("constant", 1, 0, 4, 10)
    with pytest.raises(ConfigError, match="local.h_max"):
        make_local_steps("linear_increase", 1, 8, 4, 10)
    with pytest.raises(ConfigError, match="local.h is 9"):
        make_local_steps("loss_halve_double", 9, 1, 8, 10)
    with pytest.raises(ConfigError, match="local.window"):
        make_local_steps("loss_window", 4, 1, 8, 10, window=0)
    with pytest.raises(ConfigError, match="local.threshold"):
        make_local_steps("improvement", 4, 1, 8, 10, threshold=-0.1)
    with pytest.raises(ConfigError, match="local.every"):
        make_local_steps("pow2_increase", 4, 1, 8, 10, every=0)
    with pytest.raises(ConfigError, match="local.steepness"):
        make_local_steps("sigmoid", 4, 1, 8, 10, steepness=-1)
    with pytest.raises(ConfigError, match="train.epochs"):
        make_local_steps("reverse_cosine", 4, 1, 8, 0)
    with pytest.raises(ConfigError, match="local.strategy is 'cosine'.*constant, loss_halve_double"):
        make_local_steps("cosine", 4, 1, 8, 10)
    with pytest.raises(ConfigError, match="local.window.*accepts only local.threshold, local.step"):
        make_local_steps("improvement", 4, 1, 8, 10, window=3)


def test_loss_state_survives_a_resume_and_rounds_must_increase():
    losses = [2.0, 1.8, 1.9, 1.7, 1.6]
    straight = make_local_steps("loss_window", 4, 1, 32, 10, window=1)
    expected = _by_loss(straight, losses)
    first = make_local_steps("loss_window", 4, 1, 32, 10, window=1)
    hs = _by_loss(first, losses[:3])
    resumed = make_local_steps("loss_window", 4, 1, 32, 10, window=1)
    resumed.load_state_dict(first.state_dict())
    hs += [resumed.next_h(r, float(r), loss) for r, loss in enumerate(losses[3:], start=4)]
    assert hs == expected == [4, 4, 8, 4, 8, 16]
    with pytest.raises(ValueError, match="rounds must increase"):
        resumed.next_h(5, 5.0, 1.5)
    with pytest.raises(ConfigError, match="local.strategy is 'loss_halve_double'.*'loss_window'"):
        make_local_steps("loss_halve_double", 4, 1, 32, 10).load_state_dict(first.state_dict())


def test_slowmo_without_momentum_is_plain_averaging():
    torch.manual_seed(0)
    x, avg = torch.randn(50, dtype=torch.float64), torch.randn(50, dtype=torch.float64)
    u = torch.zeros(50, dtype=torch.float64)
    slowmo_update(x, avg, u, beta=0.0, alpha=1.0, lr=0.05)
    assert torch.allclose(x, avg, rtol=0, atol=1e-14)


def test_slowmo_two_steps_with_momentum():
    x = torch.tensor([1.0, 2.0], dtype=torch.float64)
    u = torch.zeros(2, dtype=torch.float64)
    # u = 0.5*0 + ([1, 2] - [0.9, 2.2]) / 0.1 = [1, -2]; x = x - 0.5*0.1*u = [0.95, 2.1]
    slowmo_update(x, torch.tensor([0.9, 2.2], dtype=torch.float64), u, beta=0.5, alpha=0.5, lr=0.1)
    assert x.tolist() == pytest.approx([0.95, 2.1], rel=1e-12)
    assert u.tolist() == pytest.approx([1.0, -2.0], rel=1e-12)
    # u = 0.5*[1, -2] + ([0.95, 2.1] - [0.8, 2.3]) / 0.1 = [2, -3]; x = [0.95, 2.1] - 0.05*u = [0.85, 2.25]
    slowmo_update(x, torch.tensor([0.8, 2.3], dtype=torch.float64), u, beta=0.5, alpha=0.5, lr=0.1)
    assert u.tolist() == pytest.approx([2.0, -3.0], rel=1e-12)
    assert x.tolist() == pytest.approx([0.85, 2.25], rel=1e-12)


def test_slowmo_rejects_zero_lr_and_mismatched_shapes():
    v = torch.zeros(3)
    with pytest.raises(ValueError, match="learning rate"):
        slowmo_update(v.clone(), v.clone(), v.clone(), 0.5, 1.0, 0.0)
    with pytest.raises(ValueError, match="shape"):
        slowmo_update(v.clone(), torch.zeros(4), v.clone(), 0.5, 1.0, 0.1)
