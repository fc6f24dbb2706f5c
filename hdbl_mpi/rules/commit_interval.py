"""How often a worker commits (`dual.commit_interval`), turned into k commits per worker and epoch at start-up.

The papers commit once per epoch (k = 1, `dual.commits_per_epoch`, still the default). On a large data set a
worker then trains hundreds of steps between merges, and the merged model trails its workers (docs/BENCHMARKS.md:
ResNet-18 on an H200 at k = 1 stayed at chance for two epochs where k = 8 reached 1.0); at a very large k each
commit is a step or two and the exchange, not the compute, sets the pace. An interval a user need not tune:

- "H steps": k = round(steps of a large-batch worker per epoch / H);
- "T s": k = round(predicted seconds of a large-batch worker's epoch / T);
- "auto": the largest k at which the exchange (one push and merged reply of the model, measured at start-up)
  stays within `dual.commit_share` of a commit: k = floor(share * epoch seconds / exchange seconds).

k is at least 1 and at most the steps of a large-batch worker's epoch (a commit is at least one step), and one k
holds for the whole run: with several resolutions the one whose epoch is shortest decides (so the share holds at
every resolution; a k per stage is not there yet). Pure arithmetic.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass

from hdbl_mpi.errors import ConfigError
from hdbl_mpi.rules.plan import Plan

_FORMS = "auto, 'H steps' (e.g. '32 steps') or 'T s' (e.g. '2.5 s')"


@dataclass(frozen=True)
class Interval:
    """What was asked, the k chosen and the figures it was chosen from (summary.json `commit_interval`)."""

    asked: str
    k: int
    epoch_s: float | None  # predicted seconds of a large-batch worker's epoch (the shortest resolution's)
    exchange_s: float | None  # auto: one commit's exchange as measured at start-up
    share: float | None  # auto: the exchange's predicted share of a commit at this k

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


def choose(asked: str, plans: list[Plan], exchange_s: float | None, share: float) -> Interval:
    """k for `asked` over the run's plans (one per resolution)."""
    kind, number = parse(asked)
    steps = min(p.steps_large for p in plans)
    times = [p.commit_time_large for p in plans if p.commit_time_large is not None]
    epoch_s = min(times) if len(times) == len(plans) else None
    if kind == "steps":
        assert number is not None
        return Interval(asked, _bounded(round(steps / number), steps), epoch_s, None, None)
    if epoch_s is None:
        raise ConfigError(f"dual.commit_interval {asked!r} needs the predicted epoch time: set dual.profile (a file "
                          "or auto) or dual.time_a and dual.time_b, or give the interval in steps.")
    if kind == "seconds":
        assert number is not None
        return Interval(asked, _bounded(round(epoch_s / number), steps), epoch_s, None, None)
    if exchange_s is None or exchange_s <= 0:
        raise ConfigError("dual.commit_interval: auto needs the measured exchange time (a server and a worker)")
    k = _bounded(math.floor(share * epoch_s / exchange_s), steps)
    return Interval(asked, k, epoch_s, exchange_s, exchange_s * k / epoch_s)


def _bounded(k: int, steps: int) -> int:
    return max(1, min(k, steps))
