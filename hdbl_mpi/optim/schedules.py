"""The learning rate at any point of a run, and early stopping: pure Python, no torch.

The LR is computed from the (fractional) epoch rather than stepped like a torch scheduler, so a resumed run, a
LocalSGD round starting mid-epoch, the server's reply to a commit and a plot all get the same value without
replaying scheduler state.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from hdbl_mpi.errors import ConfigError
from hdbl_mpi.optim import LR_SCHEDULES

EARLY_STOPPING_MODES = ("max", "min")
SHAPES = (*LR_SCHEDULES, "constant")  # what lr_at computes; "constant" is a stage's own LR after warm-up


def scheduled_lr(train, schedule, epoch: float) -> float:
    """The LR at fractional `epoch` of a run: after the linear warm-up, either the schedule's stage LR (the
    multistep milestones, or a cyclic schedule's phases) or, with train.lr_schedule=cosine, cosine annealing
    from train.lr to train.min_lr over the whole run (a cyclic schedule's phase LRs are then not used)."""
    if train.lr_schedule == "cosine":
        return lr_at(epoch, train.lr, schedule="cosine", total_epochs=schedule.epochs,
                     warmup_epochs=train.warmup_epochs, min_lr=train.min_lr, warmup_start=train.warmup_start)
    stage_lr = schedule.at(min(int(epoch), schedule.epochs - 1)).lr
    return lr_at(epoch, stage_lr, schedule="constant", total_epochs=schedule.epochs,
                 warmup_epochs=train.warmup_epochs, warmup_start=train.warmup_start)


def lr_at(
    epoch: float,
    base_lr: float,
    *,
    schedule: str,
    total_epochs: int,
    warmup_epochs: float = 0.0,
    milestones: Sequence[int] = (),
    gamma: float = 0.1,
    min_lr: float = 0.0,
    warmup_start: float = 0.0,
) -> float:
    """The learning rate at a fractional epoch (epochs completed, e.g. 2.25 a quarter into the third epoch).

    Computed from the epoch rather than stepped like a torch scheduler, so a resumed run, a LocalSGD round
    starting mid-epoch and a plot all get the same value without replaying scheduler state.

    - Warm-up, for ``epoch < warmup_epochs``: linear from ``warmup_start * base_lr`` at epoch 0 to ``base_lr`` at
      ``warmup_epochs`` (Goyal et al. 2017; large-batch LARS/LAMB runs need it). It overrides the schedule.
    - ``constant``: ``base_lr``.
    - ``multistep``: ``base_lr * gamma ** (number of milestones <= epoch)``; milestones count from epoch 0.
    - ``cosine``: ``min_lr + (base_lr - min_lr) * (1 + cos(pi * p)) / 2`` with
      ``p = (epoch - warmup_epochs) / (total_epochs - warmup_epochs)`` clamped to [0, 1], so it starts at
      ``base_lr`` when warm-up ends and stays at ``min_lr`` from ``total_epochs`` on.
    """
    if epoch < 0:
        raise ValueError(f"lr_at needs a non-negative epoch, got {epoch}.")
    if schedule not in SHAPES:
        raise ConfigError(f"train.lr_schedule is {schedule!r}; choose one of {', '.join(SHAPES)}.")
    if total_epochs < 1:
        raise ConfigError(f"train.epochs is {total_epochs}; it must be >= 1.")
    if warmup_epochs < 0:
        raise ConfigError(f"train.warmup_epochs is {warmup_epochs}; it must be >= 0 (0 disables warm-up).")
    if not 0 <= warmup_start <= 1:
        raise ConfigError(f"train.warmup_start is {warmup_start}; it must be a fraction of train.lr in [0, 1].")
    if schedule == "cosine" and warmup_epochs >= total_epochs:
        raise ConfigError(
            f"train.warmup_epochs is {warmup_epochs} but train.epochs is {total_epochs}; the cosine schedule "
            "needs epochs left after warm-up."
        )
    if schedule == "cosine" and not 0 <= min_lr <= base_lr:
        raise ConfigError(f"train.min_lr is {min_lr}; it must be in [0, train.lr={base_lr}].")
    if warmup_epochs > 0 and epoch < warmup_epochs:
        return base_lr * (warmup_start + (1 - warmup_start) * epoch / warmup_epochs)
    if schedule == "constant":
        return base_lr
    if schedule == "multistep":
        return base_lr * gamma ** sum(1 for m in milestones if m <= epoch)
    progress = min(1.0, (epoch - warmup_epochs) / (total_epochs - warmup_epochs))
    return min_lr + (base_lr - min_lr) * (1 + math.cos(math.pi * progress)) / 2


class EarlyStopping:
    """Stop a run whose monitored metric has not improved for ``patience`` consecutive updates.

    An update improves when it beats the best so far by more than ``min_delta`` (``mode="max"`` for accuracy,
    ``"min"`` for a loss); a NaN never improves. ``patience=0`` disables stopping (the study's default) but still
    tracks the best value, which the run summary reports. The counters round-trip through
    :meth:`state_dict` so a resumed run stops at the same update as an uninterrupted one.
    """

    def __init__(self, patience: int, min_delta: float = 0.0, mode: str = "max") -> None:
        if patience < 0:
            raise ConfigError(f"train.patience is {patience}; it must be >= 0 (0 disables early stopping).")
        if min_delta < 0:
            raise ConfigError(f"train.min_delta is {min_delta}; it must be >= 0.")
        if mode not in EARLY_STOPPING_MODES:
            raise ConfigError(f"early stopping mode is {mode!r}; choose one of {', '.join(EARLY_STOPPING_MODES)}.")
        self.patience = patience
        self.min_delta = min_delta
        self.mode = mode
        self.best: float | None = None
        self.best_epoch: int | None = None
        self.bad_updates = 0
        self.updates = 0

    def _improves(self, value: float) -> bool:
        if self.best is None:
            return not math.isnan(value)
        if self.mode == "max":
            return value > self.best + self.min_delta
        return value < self.best - self.min_delta

    def update(self, value: float) -> bool:
        """Record one evaluation; True when the run should stop now."""
        if self._improves(value):
            self.best, self.best_epoch, self.bad_updates = value, self.updates, 0
        else:
            self.bad_updates += 1
        self.updates += 1
        return self.patience > 0 and self.bad_updates >= self.patience

    def state_dict(self) -> dict[str, Any]:
        return {
            "best": self.best, "best_epoch": self.best_epoch, "bad_updates": self.bad_updates,
            "updates": self.updates,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best = state["best"]
        self.best_epoch = state["best_epoch"]
        self.bad_updates = state["bad_updates"]
        self.updates = state["updates"]
