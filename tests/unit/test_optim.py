"""Optimizers, LR schedule and early stopping (hdbl_mpi.optim) against numbers worked out by hand."""

import math

import pytest
import torch
from torch import nn

from hdbl_mpi.errors import ConfigError
from hdbl_mpi.optim.optimizers import LAMB, LARS, make_optimizer, param_groups
from hdbl_mpi.optim.schedules import EarlyStopping, lr_at


def _param(*values: float) -> nn.Parameter:
    return nn.Parameter(torch.tensor(values, dtype=torch.float64))


def _step(opt: torch.optim.Optimizer, grads: dict[nn.Parameter, list[float]]) -> None:
    for p, g in grads.items():
        p.grad = torch.tensor(g, dtype=torch.float64)
    opt.step()


def test_lars_two_steps_with_trust_ratio_and_momentum():
    w, b = _param(3.0, 4.0), _param(1.0, -2.0)
    opt = LARS(
        [{"params": [w], "weight_decay": 0.1, "adapt": True}, {"params": [b], "weight_decay": 0.0, "adapt": False}],
        lr=1.0, momentum=0.9, trust_coefficient=0.01,
    )
    # Step 1: ||w|| = 5, ||g|| = 0.5, local_lr = 0.01*5/(0.5 + 0.1*5) = 0.05, d = ([.3,.4] + 0.1*[3,4])*0.05.
    _step(opt, {w: [0.3, 0.4], b: [0.5, 0.5]})
    assert w.tolist() == pytest.approx([2.97, 3.96], rel=1e-8)
    assert b.tolist() == pytest.approx([0.5, -2.5], rel=1e-12)  # no trust ratio: plain SGD step, v = g
    # Step 2: ||w|| = 4.95, local_lr = 0.01*4.95/(0.5 + 0.495) = 0.0495/0.995,
    # d = [0.597, 0.796]*local_lr = [0.0297, 0.0396], v = 0.9*[0.03, 0.04] + d = [0.0567, 0.0756].
    _step(opt, {w: [0.3, 0.4], b: [0.5, 0.5]})
    assert w.tolist() == pytest.approx([2.9133, 3.8844], rel=1e-8)
    assert b.tolist() == pytest.approx([-0.45, -3.45], rel=1e-12)  # v = 0.9*0.5 + 0.5 = 0.95


def test_lars_zero_norm_falls_back_to_ratio_one():
    w = _param(0.0, 0.0)
    opt = LARS([w], lr=0.5, momentum=0.0, trust_coefficient=0.001)
    _step(opt, {w: [1.0, -2.0]})
    assert w.tolist() == [-0.5, 1.0]  # ratio 1 (not 0): a zero-initialised layer still learns


def test_lamb_two_steps_with_bias_correction_and_trust_ratio():
    w, b = _param(1.0, 2.0), _param(0.5, -0.5)
    opt = LAMB(
        [{"params": [w], "weight_decay": 0.01, "adapt": True}, {"params": [b], "weight_decay": 0.0, "adapt": False}],
        lr=0.1,
    )
    _step(opt, {w: [0.1, -0.2], b: [0.2, 0.2]})
    # Step 1: m_hat = g, v_hat = g**2, so r = g/(|g| + 1e-6) + 0.01*w.
    r = [0.1 / 0.100001 + 0.01, -0.2 / 0.200001 + 0.02]
    trust = math.sqrt(1.0 + 4.0) / math.hypot(*r)
    w1 = [1.0 - 0.1 * trust * r[0], 2.0 - 0.1 * trust * r[1]]
    assert w1 == pytest.approx([0.83952, 2.15571], abs=1e-5)
    assert w.tolist() == pytest.approx(w1, rel=1e-12)
    # adapt=False: w - lr*r with r = 0.2/0.200001 (a trust ratio ||b||/||r|| = 0.5 would halve the step).
    assert b.tolist() == pytest.approx([0.5 - 0.1 * 0.2 / 0.200001, -0.5 - 0.1 * 0.2 / 0.200001], rel=1e-12)

    _step(opt, {w: [0.3, 0.1], b: [0.2, 0.2]})
    m = [0.9 * 0.01 + 0.1 * 0.3, 0.9 * -0.02 + 0.1 * 0.1]  # = 0.9*(0.1*g1) + 0.1*g2
    v = [0.999 * 0.001 * 0.01 + 0.001 * 0.09, 0.999 * 0.001 * 0.04 + 0.001 * 0.01]
    bc1, bc2 = 1 - 0.9**2, 1 - 0.999**2
    r = [(m[i] / bc1) / (math.sqrt(v[i] / bc2) + 1e-6) + 0.01 * w1[i] for i in range(2)]
    trust = math.hypot(*w1) / math.hypot(*r)
    assert w.tolist() == pytest.approx([w1[0] - 0.1 * trust * r[0], w1[1] - 0.1 * trust * r[1]], rel=1e-12)
    # Same gradient twice: m_hat = g and v_hat = g**2 again after bias correction.
    step = 0.1 * 0.2 / 0.200001
    assert b.tolist() == pytest.approx([0.5 - 2 * step, -0.5 - 2 * step], rel=1e-12)


def _tiny_model(conv_bias: bool = True) -> nn.Module:
    conv = nn.Conv2d(3, 4, 3, bias=conv_bias)
    return nn.Sequential(conv, nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5))


def test_param_groups_keep_bn_and_biases_out_of_decay_and_adaptation():
    model = _tiny_model()
    conv, bn, linear = model[0], model[1], model[4]
    groups = param_groups(model, 5e-4)
    assert [(g["weight_decay"], g["adapt"]) for g in groups] == [(5e-4, True), (0.0, False)]
    assert {id(p) for p in groups[0]["params"]} == {id(conv.weight), id(linear.weight)}
    assert {id(p) for p in groups[1]["params"]} == {id(conv.bias), id(bn.weight), id(bn.bias), id(linear.bias)}


def test_param_groups_skip_frozen_parameters_and_drop_empty_groups():
    model = nn.Linear(3, 2, bias=False)
    assert len(param_groups(model, 0.1)) == 1
    model.weight.requires_grad_(False)
    assert param_groups(model, 0.1) == []


@pytest.mark.parametrize(
    "name, kind", [("sgd", torch.optim.SGD), ("SGDM", torch.optim.SGD), ("AdamW", torch.optim.AdamW),
                   ("lars", LARS), ("LAMB", LAMB)],
)
def test_make_optimizer_builds_each_kind_and_keeps_group_settings(name, kind):
    model = _tiny_model(conv_bias=False)  # a bias before BatchNorm gets a zero gradient and need not move
    opt = make_optimizer(name, param_groups(model, 1e-3), lr=0.02, momentum=0.8, weight_decay=1e-3)
    assert type(opt) is kind
    assert [(g["lr"], g["weight_decay"], g["adapt"]) for g in opt.param_groups] == [
        (0.02, 1e-3, True), (0.02, 0.0, False)
    ]
    model(torch.randn(2, 3, 8, 8)).sum().backward()
    before = [p.detach().clone() for p in model.parameters()]
    opt.step()  # the extra "adapt" key does not bother torch's own optimizers
    assert all(not torch.equal(a, p) for a, p in zip(before, model.parameters(), strict=True))
    again = make_optimizer(name, param_groups(model, 1e-3), lr=0.02, momentum=0.8, weight_decay=1e-3)
    again.load_state_dict(opt.state_dict())
    assert len(again.state) == len(list(model.parameters()))


def test_make_optimizer_passes_hyperparameters_through_without_touching_the_groups():
    params = param_groups(_tiny_model(), 0.0)
    assert make_optimizer("sgdm", params, 0.1, 0.7, 0.0).param_groups[0]["momentum"] == 0.7
    adamw = make_optimizer("adamw", params, 0.1, 0.7, 0.0, betas=(0.8, 0.99))
    assert adamw.param_groups[0]["betas"] == (0.8, 0.99) and adamw.param_groups[0]["eps"] == 1e-8
    lars = make_optimizer("lars", params, 0.1, 0.7, 0.0, trust_coefficient=0.02, eps=1e-7)
    assert (lars.param_groups[0]["trust_coefficient"], lars.param_groups[0]["eps"]) == (0.02, 1e-7)
    assert make_optimizer("lamb", params, 0.1, 0.7, 0.0).param_groups[0]["eps"] == 1e-6
    assert set(params[0]) == {"params", "weight_decay", "adapt"}  # torch fills defaults into copies only


def test_make_optimizer_rejects_unknown_names_listing_the_valid_ones():
    with pytest.raises(ConfigError, match=r"train.optimizer is 'adam'.*sgd, sgdm, adamw, lars, lamb"):
        make_optimizer("adam", param_groups(_tiny_model(), 0.0), 0.1, 0.9, 0.0)


def test_lr_warmup_is_linear_from_the_start_fraction():
    kw = dict(schedule="constant", total_epochs=20, warmup_epochs=5, warmup_start=0.1)
    assert lr_at(0, 0.1, **kw) == pytest.approx(0.01)
    assert lr_at(2.5, 0.1, **kw) == pytest.approx(0.055)
    assert lr_at(5, 0.1, **kw) == pytest.approx(0.1)
    assert lr_at(12.3, 0.1, **kw) == 0.1
    assert lr_at(1.0, 0.2, schedule="constant", total_epochs=20, warmup_epochs=4) == pytest.approx(0.05)


def test_lr_multistep_boundaries():
    kw = dict(schedule="multistep", total_epochs=30, milestones=[10, 20], gamma=0.1)
    assert lr_at(9.99, 0.1, **kw) == pytest.approx(0.1)
    assert lr_at(10, 0.1, **kw) == pytest.approx(0.01)
    assert lr_at(19.5, 0.1, **kw) == pytest.approx(0.01)
    assert lr_at(20, 0.1, **kw) == pytest.approx(0.001)


def test_lr_cosine_endpoints_and_midpoint_after_warmup():
    kw = dict(schedule="cosine", total_epochs=105, warmup_epochs=5, min_lr=0.001)
    assert lr_at(5, 0.1, **kw) == pytest.approx(0.1)
    assert lr_at(55, 0.1, **kw) == pytest.approx(0.0505)
    assert lr_at(80, 0.1, **kw) == pytest.approx(0.001 + 0.099 * (1 + math.cos(math.pi * 0.75)) / 2)
    assert lr_at(105, 0.1, **kw) == pytest.approx(0.001)
    assert lr_at(120, 0.1, **kw) == pytest.approx(0.001)
    assert lr_at(2.5, 0.1, **kw) == pytest.approx(0.05)  # warm-up from 0 (warmup_start defaults to 0)


def test_lr_rejects_bad_settings_naming_the_key():
    with pytest.raises(ConfigError, match="train.lr_schedule.*multistep, cosine, constant"):
        lr_at(1, 0.1, schedule="poly", total_epochs=10)
    with pytest.raises(ConfigError, match="train.warmup_epochs"):
        lr_at(1, 0.1, schedule="cosine", total_epochs=10, warmup_epochs=10)
    with pytest.raises(ConfigError, match="train.warmup_start"):
        lr_at(1, 0.1, schedule="constant", total_epochs=10, warmup_epochs=2, warmup_start=1.5)
    with pytest.raises(ConfigError, match="train.min_lr"):
        lr_at(1, 0.1, schedule="cosine", total_epochs=10, min_lr=0.2)


def test_early_stopping_counts_updates_without_improvement():
    stop = EarlyStopping(patience=2, min_delta=0.01)
    assert [stop.update(v) for v in [0.50, 0.60, 0.605, 0.59]] == [False, False, False, True]
    assert (stop.best, stop.best_epoch, stop.bad_updates) == (0.60, 1, 2)

    loss = EarlyStopping(patience=2, mode="min")
    assert [loss.update(v) for v in [2.0, 1.5, 1.6, 1.4, 1.4, 1.45]] == [False, False, False, False, False, True]
    assert (loss.best, loss.best_epoch) == (1.4, 3)


def test_early_stopping_patience_zero_never_stops_but_tracks_the_best():
    stop = EarlyStopping(patience=0)
    assert not any(stop.update(v) for v in [0.9, 0.1, 0.1, 0.1, 0.1])
    assert (stop.best, stop.best_epoch, stop.bad_updates) == (0.9, 0, 4)


def test_early_stopping_state_round_trip_keeps_counting():
    first = EarlyStopping(patience=3)
    for v in [0.4, 0.5, 0.45]:
        first.update(v)
    resumed = EarlyStopping(patience=3)
    resumed.load_state_dict(first.state_dict())
    assert [resumed.update(v) for v in [0.48, 0.49]] == [False, True]
    assert (resumed.best, resumed.best_epoch) == (0.5, 1)


def test_early_stopping_rejects_bad_settings():
    with pytest.raises(ConfigError, match="train.patience"):
        EarlyStopping(patience=-1)
    with pytest.raises(ConfigError, match="mode"):
        EarlyStopping(patience=1, mode="up")
