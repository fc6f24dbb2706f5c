"""The dual-batch plan of method §4: how much data and which batch size each worker group gets.

Pure arithmetic (no torch, no MPI) so it can be checked against the paper's worked example in milliseconds and
used by cheap commands on a login node.

Step time is modelled as tau(B) = a*B + b seconds, so one pass over d samples at batch B costs (a + b/B)*d.
Large-batch workers get d_L = t*D/n samples per commit; the small-batch workers share what is left of one
epoch, and B_S is chosen so that their commit also takes t*T0, where T0 is the all-large-batch commit time.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Protocol

from hdbl_mpi.errors import ConfigError, PlanError

FACTOR_RULES = ("ratio", "sqrt", "none")
LR_SCALINGS = ("none", "sqrt", "linear")


def round_half_up(x: float) -> int:
    """Round to nearest, halves up. Python's round() rounds halves to even, which method §4's rule is not."""
    return int(math.floor(x + 0.5))


@dataclass(frozen=True)
class Plan:
    """One resolution's plan. Times are in the unit of a and b (seconds when they come from a profile)."""

    dataset_size: int
    workers: int
    small: int
    extra_time: float
    batch_large: int
    batch_small: int | None
    d_large: int
    d_small: int | None
    steps_large: int
    steps_small: int | None
    factor_rule: str
    factor_small: float
    time_a: float | None
    time_b: float | None
    baseline_commit_time: float | None
    commit_time_large: float | None
    commit_time_small: float | None

    @property
    def large(self) -> int:
        return self.workers - self.small

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def epoch_time(self) -> float | None:
        """Predicted wall time of one epoch: every worker makes one commit per epoch, in parallel."""
        times = [t for t in (self.commit_time_large, self.commit_time_small) if t is not None]
        return max(times) if times else None

    def share(self, group: str) -> tuple[int, int, int]:
        """(samples per commit, batch size, steps per commit) of a worker group."""
        if group == "small":
            assert self.d_small is not None and self.batch_small is not None and self.steps_small is not None
            return self.d_small, self.batch_small, self.steps_small
        return self.d_large, self.batch_large, self.steps_large


def update_factor(rule: str, d_small: int, d_large: int) -> float:
    """Model-update factor f of a small-batch push (method §3): d_S/d_L, its square root, or 1."""
    if rule == "ratio":
        return d_small / d_large
    if rule == "sqrt":
        return math.sqrt(d_small / d_large)
    if rule == "none":
        return 1.0
    raise PlanError(f"dual.factor is {rule!r}; use one of {', '.join(FACTOR_RULES)}.")


def lr_scale(rule: str, batch: int, batch_large: int) -> float:
    """Multiplier of the base LR for a worker of batch `batch`: (B / B_L)^k with k = 0, 1/2 or 1.

    The papers use one LR for both groups (k = 0). When B_S is far below B_L (e.g. on a CPU, where a step has
    little fixed cost and the balanced B_S is small), the same LR makes the small-batch workers' SGD noise so
    large that they stop improving; the linear rule (Goyal et al.) keeps the per-sample step the same.
    """
    exponent = {"none": 0.0, "sqrt": 0.5, "linear": 1.0}.get(rule)
    if exponent is None:
        raise PlanError(f"train.lr_scaling is {rule!r}; use one of {', '.join(LR_SCALINGS)}.")
    return (batch / batch_large) ** exponent


def _solve(D: int, n: int, n_s: int, B_L: int, a: float, b: float, t: float) -> tuple[int, int, int]:
    """Return (d_L, d_S, B_S) or raise PlanError with the reason (without suggestions)."""
    n_l = n - n_s
    T0 = (a + b / B_L) * D / n
    d_l = round_half_up(t * D / n)
    d_s = round_half_up((D - n_l * d_l) / n_s)
    if d_s <= 0:
        raise PlanError(
            f"the {n_l} large-batch workers already cover the epoch (d_L={d_l} each), leaving d_S={d_s} samples "
            f"for the small-batch workers"
        )
    slack = t * T0 / d_s - a
    if slack <= 0:
        raise PlanError(
            f"a small-batch worker cannot finish d_S={d_s} samples in t*T0={t * T0:.4g} even with an infinite "
            f"batch (t*T0/d_S={t * T0 / d_s:.4g} <= a={a:.4g})"
        )
    b_s = round_half_up(b / slack)
    if b_s < 1:
        raise PlanError(f"the balanced small batch B_S={b / slack:.3g} rounds below 1")
    if b_s > B_L:
        raise PlanError(f"the balanced small batch B_S={b_s} exceeds B_L={B_L}")
    return d_l, d_s, b_s


def _feasible(D: int, n: int, n_s: int, B_L: int, a: float, b: float, t: float) -> bool:
    try:
        _solve(D, n, n_s, B_L, a, b, t)
    except PlanError:
        return False
    return True


def feasible_extra_time(
    D: int, n: int, n_s: int, B_L: int, a: float, b: float, lo: float = 1.0, hi: float = 3.0, step: float = 0.005
) -> tuple[float, float] | None:
    """Smallest and largest t on a grid of `step` in [lo, hi] for which the plan is valid, or None."""
    ok = [lo + i * step for i in range(int(round((hi - lo) / step)) + 1)]
    ok = [t for t in ok if t > 1.0 and _feasible(D, n, n_s, B_L, a, b, t)]
    return (round(min(ok), 4), round(max(ok), 4)) if ok else None


def feasible_small_workers(D: int, n: int, B_L: int, a: float, b: float, t: float) -> list[int]:
    """Every n_S in 1..n that gives a valid plan for this t."""
    return [k for k in range(1, n + 1) if _feasible(D, n, k, B_L, a, b, t)]


def make_plan(
    dataset_size: int,
    workers: int,
    small: int,
    batch_large: int,
    time_a: float | None,
    time_b: float | None,
    extra_time: float,
    factor: str = "ratio",
) -> Plan:
    """Compute the plan, or raise PlanError naming the cause and the t / n_S values that would work.

    With no small-batch workers the step-time model is optional (it only predicts times then)."""
    D, n, n_s, B_L, a, b, t = dataset_size, workers, small, batch_large, time_a, time_b, extra_time
    _check_counts(D, n, n_s, B_L, factor)
    if n_s == 0 and (a is None or b is None):
        d_l = round_half_up(D / n)
        return Plan(D, n, 0, 1.0, B_L, None, d_l, None, max(1, round_half_up(d_l / B_L)), None, factor, 1.0,
                    a, b, None, None, None)
    _check_step_model(a, b, t)
    assert a is not None and b is not None
    T0 = (a + b / B_L) * D / n
    if n_s == 0:
        d_l = round_half_up(D / n)
        return Plan(D, n, 0, 1.0, B_L, None, d_l, None, max(1, round_half_up(d_l / B_L)), None, factor, 1.0,
                    a, b, T0, (a + b / B_L) * d_l, None)
    if t <= 1.0:
        raise PlanError(
            f"dual.extra_time is {t}; with small-batch workers it must be > 1 (e.g. 1.05 or 1.1): the small "
            "batch needs time beyond the all-large-batch commit. Set dual.small=0 for a plain large-batch run."
        )
    try:
        d_l, d_s, b_s = _solve(D, n, n_s, B_L, a, b, t)
    except PlanError as err:
        raise PlanError(
            f"Impossible dual-batch plan (D={D}, n={n}, n_S={n_s}, B_L={B_L}, a={a:.4g}, b={b:.4g}, t={t}): "
            f"{err}. To fix: {'; '.join(_what_works(D, n, n_s, B_L, a, b, t))}."
        ) from None
    f = update_factor(factor, d_s, d_l)
    steps_l, steps_s = max(1, round_half_up(d_l / B_L)), max(1, round_half_up(d_s / b_s))
    return Plan(D, n, n_s, t, B_L, b_s, d_l, d_s, steps_l, steps_s, factor, f, a, b, T0,
                (a + b / B_L) * d_l, (a + b / b_s) * d_s)


def _check_counts(D: int, n: int, n_s: int, B_L: int, factor: str) -> None:
    if factor not in FACTOR_RULES:
        raise PlanError(f"dual.factor is {factor!r}; use one of {', '.join(FACTOR_RULES)}.")
    if n < 1:
        raise PlanError(f"dual.workers is {n}; at least one worker is needed.")
    if not 0 <= n_s <= n:
        raise PlanError(f"dual.small is {n_s}; it must be between 0 and dual.workers={n}.")
    if B_L < 1:
        raise PlanError(f"the large batch B_L is {B_L}; it must be a positive integer.")
    if D < n:
        raise PlanError(f"the training set has {D} samples, fewer than the {n} workers.")


def _check_step_model(a: float | None, b: float | None, t: float) -> None:
    for name, value in (("dual.time_a", a), ("dual.time_b", b), ("dual.extra_time", t)):
        if value is not None and not math.isfinite(value):
            raise PlanError(f"{name} is {value}; it must be a finite number (measure a and b with `hdbl profile`).")
    if a is None or b is None or a < 0 or b < 0 or a + b <= 0:
        hint = ""
        if b is not None and b < 0:
            hint = (" A negative b means a training step has no measurable fixed cost on this device (typical of a "
                    "CPU at one thread): a small batch is then not slower per sample and no B_S balances the groups. "
                    "Use dual.small=0 there, or profile only the batch range you train with (dual.profile_max_batch,"
                    " hdbl profile --max-batch).")
        raise PlanError(
            f"the step-time model tau(B)=a*B+b has a={a}, b={b}; both must be >= 0 and not both 0. "
            f"Measure them with `hdbl profile` or copy them from a profile.{hint}"
        )


def _what_works(D: int, n: int, n_s: int, B_L: int, a: float, b: float, t: float) -> list[str]:
    """The t range (for this n_S) and the n_S values (for this t) that give a valid plan, as advice."""
    t_range = feasible_extra_time(D, n, n_s, B_L, a, b)
    hints = [f"with dual.small={n_s}, dual.extra_time between {t_range[0]} and {t_range[1]} works" if t_range
             else f"no dual.extra_time in (1, 3] works with dual.small={n_s}"]
    n_ok = feasible_small_workers(D, n, B_L, a, b, t)
    hints.append(f"with dual.extra_time={t}, dual.small in {n_ok} works" if n_ok
                 else f"no dual.small works with dual.extra_time={t}")
    return hints


def plan_resolutions(
    dataset_size: int,
    workers: int,
    small: int,
    extra_time: float,
    resolutions: list[int],
    batch_large: list[int],
    time_a: list[float | None],
    time_b: list[float | None],
    factor: str = "ratio",
) -> list[Plan]:
    """One plan per resolution (d_L and d_S do not depend on it; B_L, a, b and so B_S do)."""
    lengths = {len(resolutions), len(batch_large), len(time_a), len(time_b)}
    if len(lengths) != 1:
        raise PlanError(
            f"resolutions {resolutions}, batch_large {batch_large}, time_a {time_a} and time_b {time_b} must "
            "have one value per resolution each."
        )
    plans = []
    for r, B_L, a, b in zip(resolutions, batch_large, time_a, time_b, strict=True):
        try:
            plans.append(make_plan(dataset_size, workers, small, B_L, a, b, extra_time, factor))
        except PlanError as err:
            raise PlanError(f"at resolution {r}: {err}") from None
    return plans


# JSON key -> Plan attribute, for the values that can differ between resolutions.
_PER_RESOLUTION = (
    ("d_large", "d_large"), ("d_small", "d_small"), ("batch_large", "batch_large"), ("batch_small", "batch_small"),
    ("steps_large", "steps_large"), ("steps_small", "steps_small"), ("time_a", "time_a"), ("time_b", "time_b"),
    ("commit_time_large", "commit_time_large"), ("commit_time_small", "commit_time_small"),
    ("epoch_time", "epoch_time"), ("baseline_epoch_time", "baseline_commit_time"),
)


def plan_summary(plans: list[Plan], resolutions: list[int]) -> dict:
    """The stable JSON form of `hdbl plan --json`: lists aligned with `resolutions`."""
    first = plans[0]
    return {
        "dataset_size": first.dataset_size,
        "workers": first.workers,
        "small": first.small,
        "large": first.large,
        "extra_time": first.extra_time,
        "factor_rule": first.factor_rule,
        "factor": first.factor_small,
        "resolutions": list(resolutions),
        **{key: [getattr(p, attr) for p in plans] for key, attr in _PER_RESOLUTION},
    }


def _fmt(value: float | int | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def format_plan(plans: list[Plan], resolutions: list[int]) -> str:
    """A readable table of the plan, one row per resolution."""
    p = plans[0]
    head = (f"Dual-batch plan: D={p.dataset_size}, n={p.workers} workers ({p.small} small-batch, {p.large} "
            f"large-batch), t={p.extra_time}, factor {p.factor_rule} (f={p.factor_small:.4f})")
    columns = ("res", "B_L", "d_L", "steps_L", "B_S", "d_S", "steps_S", "commit_L_s", "commit_S_s",
               "epoch_s", "baseline_s", "vs_base")
    rows = []
    for r, q in zip(resolutions, plans, strict=True):
        ratio = q.epoch_time / q.baseline_commit_time if q.epoch_time and q.baseline_commit_time else None
        rows.append((str(r), str(q.batch_large), str(q.d_large), str(q.steps_large), _fmt(q.batch_small, "d"),
                     _fmt(q.d_small, "d"), _fmt(q.steps_small, "d"), _fmt(q.commit_time_large, ".4g"),
                     _fmt(q.commit_time_small, ".4g"), _fmt(q.epoch_time, ".4g"),
                     _fmt(q.baseline_commit_time, ".4g"), _fmt(ratio, ".3f")))
    widths = [max(len(c), *(len(row[i]) for row in rows)) for i, c in enumerate(columns)]
    lines = [head, "  ".join(c.rjust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.rjust(w) for v, w in zip(row, widths, strict=True)) for row in rows]
    lines.append("Times are in the unit of a and b (seconds when they come from `hdbl profile`); an epoch is one "
                 "commit per worker, in parallel.")
    return "\n".join(lines)


class Profiled(Protocol):
    """What a plan takes from a profile entry (hdbl_mpi/profiling/entry.py's ProfileEntry is one)."""

    @property
    def b_max(self) -> int: ...
    @property
    def a(self) -> float: ...
    @property
    def b(self) -> float: ...


def plan_for_config(config, dataset_size: int, profile_entry: Profiled | None, index: int, count: int) -> Plan:
    """The plan of the `index`-th of `count` resolutions of a run. Explicit config values win (one value for
    every resolution, or a list with one per resolution); the profile entry fills in B_L (its B_max), a and b."""
    d = config.dual

    def pick(value, key: str):
        if isinstance(value, list):
            if len(value) != count:
                raise ConfigError(f"dual.{'batch_large' if key == 'b_max' else 'time_' + key} has {len(value)} "
                                  f"values but the schedule has {count} resolutions; give one per resolution.")
            return value[index]
        return value if value is not None or profile_entry is None else getattr(profile_entry, key)

    return make_plan(dataset_size, d.workers, d.small, pick(d.batch_large, "b_max"), pick(d.time_a, "a"),
                     pick(d.time_b, "b"), d.extra_time, d.factor)
