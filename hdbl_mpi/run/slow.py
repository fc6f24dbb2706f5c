"""Emulated slow ranks (`debug.slow`), for tests, benchmarks and drills: the same in every training mode, so the
parameter server and the data-parallel baselines meet the same stragglers. It is emulation, and says so in
summary.json: a rank is made slow by sleeping, which on a shared CPU hands its core to the others (a slow GPU
does not), so the benchmark runs paced (`pace`), where every rank's step is padded to a modelled device time and
no rank's speed depends on another's.

- `ranks: {RANK: FACTOR}`: each training step of that MPI rank takes FACTOR x its own measured time, the
  difference slept (in the parameter-server modes rank 0 is the server and trains nothing).
- `from_s: SECONDS`: the `ranks` factors apply only from that many seconds of wall time after the run's start
  (0: from the start): a worker that slows down mid-run, as when a neighbour's job lands on its node.
- `changing: {factor, p, period_s, seed}`: every `period_s` of wall time from the run's start, each worker is
  slowed by `factor` with probability `p`, drawn from a generator seeded by (seed, period, worker number), so
  every mode sees the same pattern (worker numbers count from 0: ranks 1..n with a server, 0..n-1 without).
- `pace: MARGIN`: a step of batch B at resolution r takes MARGIN x tau_r(B) x the rank's factor, tau_r(B) =
  a_r*B + b_r from the plan (the step-time model), or its real time where that is longer.
- `delay_s: {RANK: SECONDS}`: a fixed sleep before each push (or each epoch's synchronisation): a stalled worker.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from hdbl_mpi.rules.plan import Plan
    from hdbl_mpi.run.records import CommitRecord


class Slowdown:
    """One rank's emulated slowness; `pad` is called after each training step with its real duration."""

    def __init__(self, slow: Any, rank: int, worker: int, t0: float,
                 tau: Callable[[int, int], float] | None = None) -> None:
        self.static, self.from_s = float(slow.ranks.get(rank, 1.0)), float(slow.from_s)
        self.changing, self.pace, self.tau = slow.changing, float(slow.pace), tau
        self.delay_s = float(slow.delay_s.get(rank, 0.0))
        self.worker, self.t0 = worker, t0
        self.slept_s = 0.0

    @property
    def active(self) -> bool:
        return self.static != 1.0 or self.changing.p > 0 and self.changing.period_s > 0 or self.pace > 0

    def factor(self, now: float | None = None) -> float:
        """This rank's slowdown now: its static factor (once `from_s` has passed), times the changing factor in a
        period it is slowed in."""
        elapsed = (time.perf_counter() if now is None else now) - self.t0
        static = self.static if elapsed >= self.from_s else 1.0
        c = self.changing
        if c.p <= 0 or c.period_s <= 0:
            return static
        return static * (c.factor if slowed(c.seed, int(elapsed // c.period_s), self.worker, c.p) else 1.0)

    def pad(self, batch: int, resolution: int, compute_s: float) -> float:
        """Sleep what makes this step as slow as emulated; the seconds slept."""
        factor = self.factor()
        if self.pace > 0 and self.tau is not None:
            target = self.pace * self.tau(batch, resolution) * factor
        else:
            target = compute_s * factor
        return self._sleep(target - compute_s)

    def delay(self) -> float:
        """The fixed delay before a push or a synchronisation (a stalled worker); the seconds slept."""
        return self._sleep(self.delay_s)

    def _sleep(self, seconds: float) -> float:
        if seconds <= 0 or not math.isfinite(seconds):
            return 0.0
        time.sleep(seconds)
        self.slept_s += seconds
        return seconds


def slowed(seed: int, period: int, worker: int, p: float) -> bool:
    """Whether `worker` is slowed in `period`: the same answer in every mode and on every rank for one seed."""
    return bool(np.random.default_rng([seed, period, worker]).random() < p)


def pattern(seed: int, p: float, workers: int, periods: int) -> list[list[int]]:
    """The workers slowed in each of the first `periods` periods (for summary.json and the benchmark's report)."""
    return [[w for w in range(workers) if slowed(seed, k, w, p)] for k in range(periods)]


def make_slowdown(slow: Any, rank: int, worker: int, t0: float, plans: dict[int, Plan]) -> Slowdown:
    """This rank's Slowdown; the paced mode takes tau_r(B) = a_r*B + b_r from the plan of each resolution."""

    def tau(batch: int, resolution: int) -> float:
        plan = plans[resolution]
        if plan.time_a is None or plan.time_b is None:
            raise ValueError(f"debug.slow.pace needs the step-time model at {resolution} px (dual.time_a/time_b or "
                             "dual.profile)")
        return plan.time_a * batch + plan.time_b

    return Slowdown(slow, rank, worker, t0, tau)


def slow_record(slow: Any, commits: list[CommitRecord]) -> dict | None:
    """summary.json `slow`: what was emulated and each worker's seconds slept (from its commit records); None
    where nothing was."""
    quiet = not slow.ranks and not slow.delay_s and slow.pace == 0 and not (slow.changing.p and
                                                                           slow.changing.period_s)
    if quiet:
        return None
    slept: dict[str, float] = {}
    for record in commits:
        slept[str(record.worker)] = slept.get(str(record.worker), 0.0) + record.slowed_s
    return {"emulation": "sleeps, not a slower device (hdbl_mpi/run/slow.py)", **asdict(slow),
            "slept_s": {w: round(s, 3) for w, s in sorted(slept.items(), key=lambda kv: int(kv[0]))}}
