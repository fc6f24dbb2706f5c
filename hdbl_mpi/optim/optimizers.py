"""The optimizers every training mode builds through :func:`optimizer_for` (method §7).

LARS and LAMB are written out here (torch has neither) with the update formula in each docstring, because
published implementations differ in details (where weight decay enters, what happens at zero norms, which
parameters are adapted) that change results; the tests pin the formulas to hand-computed numbers.
"""

from __future__ import annotations

from abc import ABCMeta, abstractmethod
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from hdbl_mpi.errors import ConfigError
from hdbl_mpi.optim import OPTIMIZERS


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Split trainable parameters into a decayed, trust-ratio-adapted group and a plain group.

    Parameters with ndim <= 1 (all biases, BatchNorm/LayerNorm scales and shifts) get no weight decay and
    ``adapt=False``: decaying them only fights the normalisation, and their norms are too small and noisy for a
    meaningful LARS/LAMB trust ratio (the usual practice since Goyal et al. 2017 and You et al. 2017/2019).
    Frozen parameters are left out so an optimizer never holds state for them; empty groups are dropped
    because torch rejects a group without parameters.
    """
    decay: list[nn.Parameter] = []
    plain: list[nn.Parameter] = []
    for param in model.parameters():
        if not param.requires_grad:
            continue
        (plain if param.ndim <= 1 else decay).append(param)
    groups = [
        {"params": decay, "weight_decay": weight_decay, "adapt": True},
        {"params": plain, "weight_decay": 0.0, "adapt": False},
    ]
    return [group for group in groups if group["params"]]


def _check_hyper(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


class _Layerwise(torch.optim.Optimizer, metaclass=ABCMeta):
    """What LARS and LAMB share: the closure, and one update per parameter that has a (dense) gradient."""

    @torch.no_grad()  # torch's step() is overloaded on the closure's type; one signature serves both here
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError(f"{type(self).__name__} does not support sparse gradients.")
                self._update(p, p.grad, group)
        return loss

    @abstractmethod
    def _update(self, p: torch.Tensor, g: torch.Tensor, group: dict[str, Any]) -> None:
        """Update parameter `p` in place from its gradient `g` with the settings of its `group`."""


class LARS(_Layerwise):
    """Layer-wise Adaptive Rate Scaling (You, Gitman and Ginsburg 2017) with heavy-ball momentum.

    For every parameter tensor ``w`` with gradient ``g`` in a group with ``adapt=True``::

        local_lr = trust_coefficient * ||w|| / (||g|| + weight_decay * ||w|| + eps)   (1.0 if ||w|| or ||g|| is 0)
        d        = (g + weight_decay * w) * local_lr
        v        = momentum * v + d        (v = d on the first step)
        w        = w - lr * v

    In a group with ``adapt=False`` the same update runs with ``local_lr = 1`` (plain SGD with momentum and
    coupled weight decay). The layer-wise ratio is what lets LARS keep large batches stable: each layer moves
    by about ``lr * trust_coefficient`` of its own norm whatever the scale of its gradient. The zero-norm
    fallback keeps freshly zero-initialised layers and layers without gradient signal from being frozen
    (ratio 0) or blown up (division by 0). Norms stay on the device, so a step never waits for the host.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,  # a default, as torch's optimizers have: Horovod re-creates the class from param groups
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        trust_coefficient: float = 0.001,
        eps: float = 1e-9,
    ) -> None:
        _check_hyper(lr > 0, f"LARS lr is {lr}; it must be > 0.")
        _check_hyper(0 <= momentum < 1, f"LARS momentum is {momentum}; it must be in [0, 1).")
        _check_hyper(weight_decay >= 0, f"LARS weight_decay is {weight_decay}; it must be >= 0.")
        _check_hyper(trust_coefficient > 0, f"LARS trust_coefficient is {trust_coefficient}; it must be > 0.")
        _check_hyper(eps >= 0, f"LARS eps is {eps}; it must be >= 0.")
        defaults = dict(
            lr=lr, momentum=momentum, weight_decay=weight_decay, trust_coefficient=trust_coefficient, eps=eps,
            adapt=True,
        )
        super().__init__(params, defaults)

    def _update(self, p: torch.Tensor, g: torch.Tensor, group: dict[str, Any]) -> None:
        wd, momentum = group["weight_decay"], group["momentum"]
        d = g.add(p, alpha=wd) if wd != 0 else g.clone()
        if group["adapt"]:
            w_norm = torch.linalg.vector_norm(p)
            g_norm = torch.linalg.vector_norm(g)
            ratio = group["trust_coefficient"] * w_norm / (g_norm + wd * w_norm + group["eps"])
            d.mul_(torch.where((w_norm > 0) & (g_norm > 0), ratio, 1.0))
        if momentum != 0:
            state = self.state[p]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = d
            else:
                d = state["momentum_buffer"].mul_(momentum).add_(d)
        p.add_(d, alpha=-group["lr"])


class LAMB(_Layerwise):
    """Layer-wise Adaptive Moments for Batch training (You et al. 2019, arXiv:1904.00962 v3, Algorithm 2).

    For every parameter tensor ``w`` with gradient ``g``, at step ``t`` (1-based)::

        m     = beta1 * m + (1 - beta1) * g
        v     = beta2 * v + (1 - beta2) * g**2
        m_hat = m / (1 - beta1**t)
        v_hat = v / (1 - beta2**t)
        r     = m_hat / (sqrt(v_hat) + eps) + weight_decay * w
        trust = ||w|| / ||r||                     (1.0 if ||w|| or ||r|| is 0; adapt=False groups: always 1.0)
        w     = w - lr * trust * r

    The paper's scaling function phi is the identity here (no clipping of ||w||). Weight decay is decoupled
    from the moments (as in AdamW) but sits inside the trust ratio, as in the paper. The ratio makes every
    layer move by ``lr`` times its own norm per step, which is what keeps very large batches trainable.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,  # a default, as torch's optimizers have: Horovod re-creates the class from param groups
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-6,
        weight_decay: float = 0.0,
    ) -> None:
        _check_hyper(lr > 0, f"LAMB lr is {lr}; it must be > 0.")
        _check_hyper(all(0 <= b < 1 for b in betas), f"LAMB betas are {betas}; each must be in [0, 1).")
        _check_hyper(eps >= 0, f"LAMB eps is {eps}; it must be >= 0.")
        _check_hyper(weight_decay >= 0, f"LAMB weight_decay is {weight_decay}; it must be >= 0.")
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, adapt=True)
        super().__init__(params, defaults)

    def _update(self, p: torch.Tensor, g: torch.Tensor, group: dict[str, Any]) -> None:
        beta1, beta2 = group["betas"]
        wd = group["weight_decay"]
        state = self.state[p]
        if not state:
            state["step"] = 0
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        state["step"] += 1
        t = state["step"]
        m, v = state["exp_avg"], state["exp_avg_sq"]
        m.mul_(beta1).add_(g, alpha=1 - beta1)
        v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        denom = (v / (1 - beta2**t)).sqrt_().add_(group["eps"])
        r = (m / (1 - beta1**t)).div_(denom)
        if wd != 0:
            r.add_(p, alpha=wd)
        if group["adapt"]:
            w_norm = torch.linalg.vector_norm(p)
            r_norm = torch.linalg.vector_norm(r)
            r.mul_(torch.where((w_norm > 0) & (r_norm > 0), w_norm / r_norm, 1.0))
        p.add_(r, alpha=-group["lr"])


def make_optimizer(
    name: str,
    params: Iterable[dict[str, Any]] | Iterable[torch.Tensor],
    lr: float,
    momentum: float,
    weight_decay: float,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float | None = None,
    trust_coefficient: float = 0.001,
) -> torch.optim.Optimizer:
    """Build the optimizer the config names, so every training mode uses the same update rule.

    ``params`` is normally :func:`param_groups` output; a group's own ``weight_decay`` wins over the
    ``weight_decay`` argument (torch semantics), which only fills groups that lack one. ``sgd`` and ``sgdm``
    are both SGD with ``momentum`` (the study's SGDM; momentum 0 gives plain SGD). ``momentum`` is used by
    sgd/sgdm/lars, ``betas`` by adamw/lamb, ``trust_coefficient`` by lars. ``eps`` None keeps each optimizer's
    usual default (AdamW 1e-8, LAMB 1e-6, LARS 1e-9). The groups' ``adapt`` key is only read by LARS and LAMB;
    torch's SGD and AdamW keep it as an inert extra key, which also survives their state_dict round trip.
    """
    key = name.lower()
    # torch writes its defaults (eps, betas, ...) into the group dicts it is given; copies keep the caller's
    # groups clean, so building a second optimizer from them does not inherit the first one's settings.
    groups: list = [dict(group) if isinstance(group, dict) else group for group in params]
    if key in ("sgd", "sgdm"):
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if key == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=1e-8 if eps is None else eps,
                                 weight_decay=weight_decay)
    if key == "lars":
        return LARS(groups, lr=lr, momentum=momentum, weight_decay=weight_decay,
                    trust_coefficient=trust_coefficient, eps=1e-9 if eps is None else eps)
    if key == "lamb":
        return LAMB(groups, lr=lr, betas=betas, eps=1e-6 if eps is None else eps, weight_decay=weight_decay)
    raise ConfigError(f"train.optimizer is {name!r}; choose one of {', '.join(OPTIMIZERS)} (case-insensitive).")


def optimizer_for(model: nn.Module, train) -> torch.optim.Optimizer:
    """The optimizer of `train` (a TrainConfig) for `model`, with BatchNorm and bias parameters excluded from
    weight decay and trust-ratio adaptation: every training mode builds its optimizer here. It is built at
    train.lr; the modes set the scheduled LR (which a warm-up may start at 0) before each step or commit."""
    return make_optimizer(train.optimizer, param_groups(model, train.weight_decay), train.lr, train.momentum,
                          train.weight_decay, (train.betas[0], train.betas[1]), None, train.trust_coefficient)
