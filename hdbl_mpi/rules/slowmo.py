"""SlowMo (Wang et al. 2020): a momentum step on top of LocalSGD's average (method §7).

The arithmetic on flat parameter vectors, in place, free of MPI (the caller decides where the vectors live);
torch is only a type here: the tensors' own methods do the work.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def slowmo_update(
    global_params: torch.Tensor,
    averaged: torch.Tensor,
    slow_buffer: torch.Tensor,
    beta: float,
    alpha: float,
    lr: float,
) -> None:
    """SlowMo outer step (Wang et al. 2020, Algorithm 1) on flat parameter vectors, in place.

    With x_prev = ``global_params`` (the parameters every worker started the round from), x_avg = ``averaged``
    (the workers' parameters averaged after the round) and u = ``slow_buffer``::

        u     = beta * u + (x_prev - x_avg) / lr
        x_new = x_prev - alpha * lr * u

    x_new is written into ``global_params`` and u into ``slow_buffer``. Dividing by the fast learning rate
    ``lr`` (the LR the workers used in the round) makes u a gradient-like quantity, so beta acts as momentum
    independently of the LR schedule; ``lr`` must therefore be > 0, and a schedule that reaches 0 must pass the
    round's non-zero LR. With ``beta = 0`` and ``alpha = 1`` the step reduces to x_new = x_avg (exactly up
    to float rounding): plain LocalSGD averaging, the study's default.
    """
    if not lr > 0:
        raise ValueError(f"SlowMo needs the round's learning rate > 0, got {lr}.")
    if not global_params.shape == averaged.shape == slow_buffer.shape:
        raise ValueError(
            f"SlowMo vectors differ in shape: global {tuple(global_params.shape)}, averaged "
            f"{tuple(averaged.shape)}, buffer {tuple(slow_buffer.shape)}."
        )
    slow_buffer.mul_(beta).add_(global_params - averaged, alpha=1 / lr)
    global_params.sub_(slow_buffer, alpha=alpha * lr)
