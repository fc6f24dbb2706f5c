"""LocalSGD's number of local steps H per round (method §7; SlowMo's outer step is in rules/slowmo.py).

In LocalSGD each of K workers takes H optimizer steps on its own shard, then the workers average their
parameters: one synchronisation round. A larger H means fewer averages (less communication) but more drift
between the workers' models. The study tries to have both by changing H during training, either from the
training loss (communicate less while training progresses) or as a function of the epoch. Each strategy is a
small object asked once per round for the H of the round about to start; the strategies are plain Python (no
MPI, no torch), so every rank makes the same decision and the rules can be checked against explicit sequences.

Rounding: every H computed from a real-valued formula is rounded half up (2.5 -> 3), the project's rule (see
hdbl_mpi.rules.plan.round_half_up), then clamped to [h_min, h_max]. A value within 1e-9 of a half counts as the half,
so cos/exp rounding at a symmetric point (cos(pi/2) is 6e-17, not 0) cannot flip the documented result; epoch
boundaries of the pow2 strategies get the same 1e-9 allowance (epoch 0.3 with every 0.1 is step 3, not 2).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any

from hdbl_mpi.errors import ConfigError

STRATEGIES = (
    "constant",
    "loss_halve_double",
    "loss_window",
    "improvement",
    "linear_increase",
    "linear_decrease",
    "pow2_increase",
    "pow2_decrease",
    "reverse_cosine",
    "sigmoid",
)

_HALF_TOLERANCE = 1e-9


def _round_h(x: float) -> int:
    """Round half up, treating values within 1e-9 below a half as the half (see the module docstring)."""
    return math.floor(x + 0.5 + _HALF_TOLERANCE)


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class LocalSteps(ABC):
    """Decides H, the local steps of the next LocalSGD round, always within [h_min, h_max].

    :meth:`next_h` is called once per round, in round order, before the round starts: ``round`` is the 0-based
    index of that round, ``epoch`` the fractional number of epochs completed so far, and ``loss`` the mean
    training loss of the round just finished (None before round 0). Loss-driven strategies keep state (their
    current H and loss history); :meth:`state_dict` / :meth:`load_state_dict` carry it across a resume.
    ``name`` is the strategy's key in :data:`STRATEGIES`.
    """

    name: str

    def __init__(self, h_min: int, h_max: int) -> None:
        _require(_is_int(h_min) and h_min >= 1, f"local.h_min is {h_min!r}; it must be an integer >= 1.")
        _require(
            _is_int(h_max) and h_max >= h_min,
            f"local.h_max is {h_max!r}; it must be an integer >= local.h_min={h_min}.",
        )
        self.h_min = h_min
        self.h_max = h_max

    def clamp(self, h: int) -> int:
        return max(self.h_min, min(self.h_max, h))

    @abstractmethod
    def next_h(self, round: int, epoch: float, loss: float | None) -> int:
        """H for round ``round``, which starts after ``epoch`` epochs; ``loss`` is the previous round's."""

    def state_dict(self) -> dict[str, Any]:
        return {"strategy": self.name}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Refuse a checkpoint of another strategy: its H history would be dropped or misread silently."""
        if state["strategy"] != self.name:
            raise ConfigError(
                f"local.strategy is {self.name!r} but the checkpoint was written with {state['strategy']!r}; "
                "resume with the same strategy or start a new run."
            )


class EpochLocalSteps(LocalSteps):
    """H as a fixed function of training progress ``f = clamp(epoch / total_epochs, 0, 1)``; no state.

    - ``linear_increase``: h_min + (h_max - h_min) * f
    - ``linear_decrease``: h_max - (h_max - h_min) * f
    - ``reverse_cosine``: h_min + (h_max - h_min) * (1 - cos(pi * f)) / 2, slow at both ends (cosine annealing
      turned upside down: communicate often early, when the models move fast, and rarely late)
    - ``sigmoid``: h_min + (h_max - h_min) / (1 + exp(-steepness * (f - 0.5))), the switch from frequent to rare
      averaging concentrated around mid-training; it reaches the bounds only approximately at f = 0 and 1
    """

    SHAPES = ("linear_increase", "linear_decrease", "reverse_cosine", "sigmoid")

    def __init__(self, shape: str, h_min: int, h_max: int, total_epochs: int, steepness: float = 10.0) -> None:
        super().__init__(h_min, h_max)
        if shape not in self.SHAPES:
            raise ValueError(f"unknown epoch shape {shape!r}; one of {', '.join(self.SHAPES)}.")
        _require(
            _is_int(total_epochs) and total_epochs >= 1, f"train.epochs is {total_epochs!r}; it must be >= 1."
        )
        _require(
            isinstance(steepness, (int, float)) and not isinstance(steepness, bool) and steepness > 0,
            f"local.steepness is {steepness!r}; it must be a number > 0.",
        )
        self.name = shape
        self.total_epochs = total_epochs
        self.steepness = float(steepness)

    def h_of(self, f: float) -> float:
        """The unrounded H at progress f."""
        lo, hi = self.h_min, self.h_max
        if self.name == "linear_increase":
            return lo + (hi - lo) * f
        if self.name == "linear_decrease":
            return hi - (hi - lo) * f
        if self.name == "reverse_cosine":
            return lo + (hi - lo) * (1 - math.cos(math.pi * f)) / 2
        return lo + (hi - lo) / (1 + math.exp(-self.steepness * (f - 0.5)))

    def next_h(self, round: int, epoch: float, loss: float | None) -> int:
        if epoch < 0:
            raise ValueError(f"round {round} starts at epoch {epoch}; epochs are >= 0.")
        return self.clamp(_round_h(self.h_of(min(1.0, epoch / self.total_epochs))))


class ConstantLocalSteps(LocalSteps):
    """``constant``: H = h in every round (plain LocalSGD)."""

    name = "constant"

    def __init__(self, h: int, h_min: int, h_max: int) -> None:
        super().__init__(h_min, h_max)
        _require(
            _is_int(h) and h_min <= h <= h_max,
            f"local.h is {h!r}; it must be an integer in [local.h_min={h_min}, local.h_max={h_max}].",
        )
        self.h = h

    def next_h(self, round: int, epoch: float, loss: float | None) -> int:
        return self.h


class LossLocalSteps(LocalSteps):
    """Base of the loss-driven strategies: H starts at ``h`` and changes once per reported loss.

    Rounds must be asked for in increasing order: asking twice for the same round would feed its loss twice
    and move H twice, and on a resume that is the bug to catch, not to absorb.
    """

    def __init__(self, h: int, h_min: int, h_max: int) -> None:
        super().__init__(h_min, h_max)
        _require(
            _is_int(h) and h_min <= h <= h_max,
            f"local.h is {h!r}; it is the starting H and must be an integer in "
            f"[local.h_min={h_min}, local.h_max={h_max}].",
        )
        self.h = h
        self.last_round = -1

    def next_h(self, round: int, epoch: float, loss: float | None) -> int:
        if round <= self.last_round:
            raise ValueError(f"H for round {round} asked after round {self.last_round}; rounds must increase.")
        self.last_round = round
        if loss is not None:
            self.h = self.clamp(self._decide(loss))
        return self.h

    @abstractmethod
    def _decide(self, loss: float) -> int:
        """The new H (before clamping) given the loss of the round just finished."""

    def _halved(self) -> int:
        return _round_h(self.h / 2)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "h": self.h, "last_round": self.last_round}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.h = state["h"]
        self.last_round = state["last_round"]


class LossHalveDouble(LossLocalSteps):
    """``loss_halve_double``: loss lower than the previous round's -> H doubles, otherwise H halves.

    Decreasing loss means the workers' local models are still moving somewhere useful, so averaging less often
    costs little accuracy and saves communication; a flat or rising loss points to drift between the workers
    (or noise), which more frequent averaging damps. Halving rounds half up (H=3 -> 2). The first reported
    loss only sets the reference, so H changes from the third round on. A NaN loss counts as not lower.
    """

    name = "loss_halve_double"

    def __init__(self, h: int, h_min: int, h_max: int) -> None:
        super().__init__(h, h_min, h_max)
        self.prev_loss: float | None = None

    def _decide(self, loss: float) -> int:
        prev, self.prev_loss = self.prev_loss, loss
        if prev is None:
            return self.h
        return self.h * 2 if loss < prev else self._halved()

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "prev_loss": self.prev_loss}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.prev_loss = state["prev_loss"]


class LossWindow(LossLocalSteps):
    """``loss_window``: mean loss of the last ``window`` rounds below the mean of the ``window`` rounds before
    it -> H doubles, otherwise H halves (half up).

    The windows slide by one round, so once ``2 * window`` losses are known every round decides; before that
    H stays. Averaging over a window makes the decision robust to the round-to-round noise of a small shard,
    which makes ``loss_halve_double`` (``window=1``) flip H back and forth.
    """

    name = "loss_window"

    def __init__(self, h: int, h_min: int, h_max: int, window: int = 3) -> None:
        super().__init__(h, h_min, h_max)
        _require(_is_int(window) and window >= 1, f"local.window is {window!r}; it must be an integer >= 1.")
        self.window = window
        self.history: list[float] = []

    def _decide(self, loss: float) -> int:
        self.history = (self.history + [loss])[-2 * self.window:]
        if len(self.history) < 2 * self.window:
            return self.h
        older = sum(self.history[: self.window]) / self.window
        recent = sum(self.history[self.window:]) / self.window
        return self.h * 2 if recent < older else self._halved()

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "history": list(self.history)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.history = list(state["history"])


class Improvement(LossLocalSteps):
    """``improvement``: relative improvement ``(prev - loss) / prev >= threshold`` -> H + ``step``, otherwise
    H - ``step``.

    An additive variant of the loss rule: H creeps up while each round still cuts the loss by at least
    ``threshold`` (default 1 %), and creeps down as soon as progress slows, instead of jumping by factors of
    two. ``prev`` is the previous round's loss; the first reported loss only sets it. A previous loss <= 0
    (nothing left to improve) or a NaN counts as no improvement.
    """

    name = "improvement"

    def __init__(self, h: int, h_min: int, h_max: int, threshold: float = 0.01, step: int = 1) -> None:
        super().__init__(h, h_min, h_max)
        _require(
            isinstance(threshold, (int, float)) and not isinstance(threshold, bool) and threshold >= 0,
            f"local.threshold is {threshold!r}; it must be a number >= 0 (a fraction of the previous loss).",
        )
        _require(_is_int(step) and step >= 1, f"local.step is {step!r}; it must be an integer >= 1.")
        self.threshold = float(threshold)
        self.step = step
        self.prev_loss: float | None = None

    def _decide(self, loss: float) -> int:
        prev, self.prev_loss = self.prev_loss, loss
        if prev is None:
            return self.h
        improved = prev > 0 and (prev - loss) / prev >= self.threshold
        return self.h + self.step if improved else self.h - self.step

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "prev_loss": self.prev_loss}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.prev_loss = state["prev_loss"]


def _doublings(h_min: int, h_max: int) -> int:
    """How many doublings take h_min to h_max or just past it."""
    return math.ceil(math.log2(h_max / h_min) - _HALF_TOLERANCE) if h_max > h_min else 0


def _pow2_every(h_min: int, h_max: int, total_epochs: int, every: float | None) -> float:
    """Default spacing: each of the d + 1 levels of H (d doublings) gets an equal share of the training."""
    if every is None:
        return total_epochs / (_doublings(h_min, h_max) + 1)
    _require(
        isinstance(every, (int, float)) and not isinstance(every, bool) and every > 0,
        f"local.every is {every!r}; it must be a number of epochs > 0.",
    )
    return float(every)


class Pow2LocalSteps(LocalSteps):
    """``pow2_increase``: H = h_min * 2**n, ``pow2_decrease``: H = h_max / 2**n (half up), where
    ``n = floor(epoch / every)``, clamped to [h_min, h_max].

    H doubles (or halves) once every ``every`` epochs, so it stays on powers of two when h_min (h_max) is one.
    By default ``every = total_epochs / (d + 1)`` with ``d = ceil(log2(h_max / h_min))`` doublings, so every
    level of H gets an equal share of the training and the last level is reached for the last share.
    """

    def __init__(
        self, h_min: int, h_max: int, total_epochs: int, increase: bool, every: float | None = None
    ) -> None:
        super().__init__(h_min, h_max)
        _require(
            _is_int(total_epochs) and total_epochs >= 1, f"train.epochs is {total_epochs!r}; it must be >= 1."
        )
        self.every = _pow2_every(h_min, h_max, total_epochs, every)
        self.increase = increase
        self.name = "pow2_increase" if increase else "pow2_decrease"

    def next_h(self, round: int, epoch: float, loss: float | None) -> int:
        if epoch < 0:
            raise ValueError(f"round {round} starts at epoch {epoch}; epochs are >= 0.")
        # Capping n keeps 2**n finite for very long runs; past the cap H is pinned at a bound anyway.
        n = min(math.floor(epoch / self.every + _HALF_TOLERANCE), 62)
        h = self.h_min * 2**n if self.increase else _round_h(self.h_max / 2**n)
        return self.clamp(h)


_OPTIONS = {
    "loss_window": ("window",),
    "improvement": ("threshold", "step"),
    "pow2_increase": ("every",),
    "pow2_decrease": ("every",),
    "sigmoid": ("steepness",),
}


def make_local_steps(name: str, h: int, h_min: int, h_max: int, total_epochs: int, **options: Any) -> LocalSteps:
    """Build the H strategy the config names (case-insensitive); every rank builds the same one.

    ``h`` is H for ``constant`` and the starting H of the loss-driven strategies (it must lie in
    [h_min, h_max] there); the epoch strategies ignore it. ``options`` are the strategy's own knobs:
    ``window`` (loss_window), ``threshold`` and ``step`` (improvement), ``every`` (pow2_*), ``steepness``
    (sigmoid); any other option is rejected so a misspelt key cannot be silently ignored.

    The rules, with f = clamp(epoch / total_epochs, 0, 1), rounded half up and clamped to [h_min, h_max]:

    - constant: H = h.
    - loss_halve_double: loss < previous round's loss -> 2H, else H/2.
    - loss_window: mean of the last ``window`` losses < mean of the ``window`` before -> 2H, else H/2.
    - improvement: (prev - loss) / prev >= threshold -> H + step, else H - step.
    - linear_increase: h_min + (h_max - h_min) * f;  linear_decrease: h_max - (h_max - h_min) * f.
    - pow2_increase: h_min * 2**floor(epoch / every);  pow2_decrease: h_max / 2**floor(epoch / every).
    - reverse_cosine: h_min + (h_max - h_min) * (1 - cos(pi * f)) / 2.
    - sigmoid: h_min + (h_max - h_min) / (1 + exp(-steepness * (f - 0.5))), steepness 10 by default.
    """
    key = name.lower()
    if key not in STRATEGIES:
        raise ConfigError(f"local.strategy is {name!r}; choose one of {', '.join(STRATEGIES)}.")
    allowed = _OPTIONS.get(key, ())
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        accepted = f"it accepts only {', '.join('local.' + o for o in allowed)}" if allowed else "it takes none"
        raise ConfigError(
            f"local strategy {key!r} got option(s) {', '.join('local.' + o for o in unknown)}; {accepted}."
        )
    if key == "constant":
        return ConstantLocalSteps(h, h_min, h_max)
    if key == "loss_halve_double":
        return LossHalveDouble(h, h_min, h_max)
    if key == "loss_window":
        return LossWindow(h, h_min, h_max, **options)
    if key == "improvement":
        return Improvement(h, h_min, h_max, **options)
    if key in ("pow2_increase", "pow2_decrease"):
        return Pow2LocalSteps(h_min, h_max, total_epochs, increase=key == "pow2_increase", **options)
    return EpochLocalSteps(key, h_min, h_max, total_epochs, **options)
