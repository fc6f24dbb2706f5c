"""How often a worker commits (`dual.commit_interval`), turned into k commits per worker and epoch at start-up.

The papers commit once per epoch (k = 1, `dual.commits_per_epoch`, still the default). On a large data set a
worker then trains hundreds of steps between merges, and the merged model trails its workers (docs/BENCHMARKS.md:
ResNet-18 on an H200 at k = 1 stayed at chance for two epochs where k = 8 reached 1.0); at a very large k each
commit is a step or two and the exchange, not the compute, sets the pace. An interval a user need not tune:

- "H steps": k = round(steps of a large-batch worker per epoch / H);
- "T s": k = round(predicted seconds of a large-batch worker's epoch / T);
- "auto": the largest k at which the exchange (one push and merged reply of the model, measured at start-up)
  stays within `dual.commit_share` of a commit: k = floor(share * epoch seconds / exchange seconds).

Each resolution of a cyclic schedule gets its own k (its epoch takes its own time, and its steps depend on its
B_L), so that a commit lasts about the same time at every resolution and the exchange keeps its share at each;
with one resolution, or the same k everywhere, `dual.commits_per_epoch` stays one number (rules/epoch_lengths.py
counts the epochs either way). k is at least 1 and at most the steps of a large-batch worker's epoch (a commit is
at least one step). Pure arithmetic.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass

from hdbl_mpi.errors import ConfigError
from hdbl_mpi.rules.epoch_lengths import config_form
from hdbl_mpi.rules.plan import Plan

_FORMS = "auto, 'H steps' (e.g. '32 steps') or 'T s' (e.g. '2.5 s')"


@dataclass(frozen=True)
class Interval:
    """What was asked, the k chosen and the figures it was chosen from (summary.json `commit_interval`); the lists
    follow `resolutions` (low to high)."""

    asked: str
    k: int | list[int]  # dual.commits_per_epoch as chosen: one number, or one per resolution when they differ
    resolutions: list[int]
    epoch_s: list[float] | None  # predicted seconds of a large-batch worker's epoch at each resolution
    exchange_s: float | None  # auto: one commit's exchange as measured at start-up
    share: list[float] | None  # auto: the exchange's predicted share of a commit at each resolution

    def to_dict(self) -> dict:
        return asdict(self)


def parse(asked: str) -> tuple[str, float | None]:
    """('auto' | 'steps' | 'seconds', the number); ConfigError naming the accepted forms."""
    text = asked.strip().lower()
    if text == "auto":
        return "auto", None
    found = re.fullmatch(r"([0-9]*\.?[0-9]+)\s*(steps?|s|sec|seconds?)", text)
    if not found or float(found.group(1)) <= 0:
        raise ConfigError(f"dual.commit_interval is {asked!r}; use {_FORMS}.")
    return ("steps" if found.group(2).startswith("step") else "seconds"), float(found.group(1))


def choose(asked: str, plans: dict[int, Plan], exchange_s: float | None, share: float) -> Interval:
    """k at each resolution for `asked`, from the run's plans (one per resolution)."""
    kind, number = parse(asked)
    resolutions = sorted(plans)
    steps = [plans[r].steps_large for r in resolutions]
    times = [plans[r].commit_time_large for r in resolutions]
    epoch_s = [float(t) for t in times if t is not None] if None not in times else None
    if kind == "steps":
        assert number is not None
        return _interval(asked, resolutions, [round(s / number) for s in steps], steps, epoch_s)
    if epoch_s is None:
        raise ConfigError(f"dual.commit_interval {asked!r} needs the predicted epoch time: set dual.profile (a file "
                          "or auto) or dual.time_a and dual.time_b, or give the interval in steps.")
    if kind == "seconds":
        assert number is not None
        return _interval(asked, resolutions, [round(e / number) for e in epoch_s], steps, epoch_s)
    if exchange_s is None or exchange_s <= 0:
        raise ConfigError("dual.commit_interval: auto needs the measured exchange time (a server and a worker)")
    ks = [math.floor(share * e / exchange_s) for e in epoch_s]
    return _interval(asked, resolutions, ks, steps, epoch_s, exchange_s)


def _interval(asked: str, resolutions: list[int], ks: list[int], steps: list[int], epoch_s: list[float] | None,
              exchange_s: float | None = None) -> Interval:
    bounded = [max(1, min(k, s)) for k, s in zip(ks, steps, strict=True)]
    shares = [exchange_s * k / e for k, e in zip(bounded, epoch_s, strict=True)] \
        if exchange_s is not None and epoch_s is not None else None
    return Interval(asked, config_form(dict(zip(resolutions, bounded, strict=True))), resolutions, epoch_s,
                    exchange_s, shares)
