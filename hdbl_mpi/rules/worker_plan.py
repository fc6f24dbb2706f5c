"""The plan per worker: method §4 generalised to workers of different speeds (docs/method.md, "Workers of
different speeds"). Pure arithmetic, like rules/plan.py, whose group-level :class:`Plan` it refines.

Worker i's step takes tau_i(B) = a_i*B + b_i seconds, so d samples at batch B cost c_i(B)*d with
c_i(B) = a_i + b_i/B. The papers' all-large-batch commit time T0 becomes the time in which every worker at B_L
finishes a share of its own and the shares cover the data set once: sum_i T0/c_i(B_L) = D, so
T0 = D / sum_i 1/c_i(B_L). Then, with the small group's extra time t:

- large-batch worker i trains d_i = t*T0 / c_i(B_L) samples at B_L (its commit takes t*T0);
- the small-batch workers share the rest, R = D - sum_L d_i, in proportion to their speed at B_L
  (d_j = R * (1/c_j(B_L)) / sum_S 1/c_k(B_L)), and each gets the batch B_j = b_j / (t*T0/d_j - a_j) that makes
  its commit take t*T0 too;
- every push weighs by its samples: f_i = rule(d_i / d_ref) with d_ref = round(t*D/n), the large-batch share of
  identical workers.

So every worker's commit takes the same time, a slow worker trains less per commit instead of holding the
others up, and identical workers get exactly the group plan's d_L, d_S, B_S and f (the same expressions are
evaluated: their relative speed is 1.0 exactly).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from hdbl_mpi.errors import PlanError
from hdbl_mpi.rules.plan import Plan, round_half_up, update_factor

SMALL, LARGE = "small", "large"


@dataclass(frozen=True)
class StepLine:
    """One worker's step-time line tau(B) = a*B + b (seconds per sample, seconds per step)."""

    a: float
    b: float

    def per_sample(self, batch: int) -> float:
        return self.a + self.b / batch

    def scaled(self, factor: float) -> StepLine:
        """The line of a worker `factor` times slower (a slowdown stretches the whole step)."""
        return StepLine(self.a * factor, self.b * factor)


@dataclass(frozen=True)
class WorkerShare:
    """What one worker trains per epoch (its share is split over k commits) and what its push weighs."""

    rank: int
    group: str
    line: StepLine
    samples: int
    batch: int
    factor: float
    commit_time: float  # predicted seconds to train `samples` at `batch` on `line`

    @property
    def steps(self) -> int:
        return max(1, round_half_up(self.samples / self.batch))


@dataclass(frozen=True)
class WorkerPlan:
    """Every worker's share at one resolution; `baseline_commit_time` is T0."""

    shares: tuple[WorkerShare, ...]
    baseline_commit_time: float

    def of(self, rank: int) -> WorkerShare:
        for share in self.shares:
            if share.rank == rank:
                return share
        raise KeyError(f"rank {rank} has no share in this plan")

    def handed_over(self, old: int, new: int) -> WorkerPlan:
        """The same plan with `old`'s share given to rank `new`: a spare taking a lost worker's place trains what
        it trained, so nobody else's share changes."""
        return replace(self, shares=tuple(replace(s, rank=new) if s.rank == old else s for s in self.shares))

    def lines(self) -> dict[int, StepLine]:
        return {s.rank: s.line for s in self.shares}

    @property
    def imbalance(self) -> float:
        """Slowest over fastest predicted commit (1.0 up to rounding)."""
        times = [s.commit_time for s in self.shares]
        return max(times) / min(times)

    def to_dict(self) -> dict:
        return {"baseline_commit_time": self.baseline_commit_time,
                "workers": [{"rank": s.rank, "group": s.group, "a": s.line.a, "b": s.line.b, "samples": s.samples,
                             "batch": s.batch, "steps": s.steps, "factor": s.factor, "commit_time": s.commit_time}
                            for s in self.shares]}


def worker_plan(plan: Plan, lines: dict[int, StepLine], groups: dict[int, str]) -> WorkerPlan:
    """Each worker's share for the workers `lines` (rank -> its line) in `groups` (rank -> small or large), on the
    group plan's D, n, B_L, t and factor rule (D and n are the plan's: the survivors' plan after a loss). Raises
    PlanError naming the worker that cannot be balanced."""
    if len(lines) != plan.workers or set(lines) != set(groups):
        raise PlanError(f"a plan for {plan.workers} workers was given lines for ranks {sorted(lines)}")
    D, B_L, t = plan.dataset_size, plan.batch_large, plan.extra_time
    speeds, c_ref = _relative_speeds({r: line.per_sample(B_L) for r, line in lines.items()})
    T0 = c_ref * D / plan.workers
    large = [r for r in sorted(lines) if groups[r] == LARGE]
    small = [r for r in sorted(lines) if groups[r] == SMALL]
    d_ref = round_half_up(t * D / plan.workers)  # t is 1.0 in a plan without small-batch workers
    samples = {r: round_half_up(t * D / plan.workers * speeds[r]) for r in large}
    rest = D - sum(samples.values())
    small_speed = sum(speeds[r] for r in small)
    shares = [_share(r, LARGE, lines[r], samples[r], B_L, plan.factor_rule, d_ref) for r in large]
    for r in small:
        d = round_half_up(rest * speeds[r] / small_speed)
        shares.append(_share(r, SMALL, lines[r], d, _balanced_batch(r, lines[r], d, t * T0, B_L),
                             plan.factor_rule, d_ref))
    return WorkerPlan(tuple(sorted(shares, key=lambda s: s.rank)), T0)


def _relative_speeds(per_sample: dict[int, float]) -> tuple[dict[int, float], float]:
    """Each worker's speed relative to the mean speed (1.0 exactly when all are equal), and the per-sample time
    of that mean speed (the harmonic mean of the c_i)."""
    values = set(per_sample.values())
    if len(values) == 1:
        return {r: 1.0 for r in per_sample}, values.pop()
    mean_speed = sum(1.0 / c for c in per_sample.values()) / len(per_sample)
    return {r: (1.0 / c) / mean_speed for r, c in per_sample.items()}, 1.0 / mean_speed


def _balanced_batch(rank: int, line: StepLine, samples: int, commit_time: float, batch_large: int) -> int:
    """B_j with c_j(B_j) * d_j = t*T0, or PlanError saying why there is none."""
    if samples <= 0:
        raise PlanError(f"the large-batch workers already cover the epoch: small-batch rank {rank} gets "
                        f"{samples} samples")
    slack = commit_time / samples - line.a
    if slack <= 0:
        raise PlanError(f"small-batch rank {rank} cannot train {samples} samples in {commit_time:.4g} s even with "
                        f"an infinite batch (a={line.a:.4g} s/sample)")
    batch = round_half_up(line.b / slack)
    if not 1 <= batch <= batch_large:
        raise PlanError(f"small-batch rank {rank}'s balanced batch {line.b / slack:.4g} is outside 1..B_L="
                        f"{batch_large}")
    return batch


def _share(rank: int, group: str, line: StepLine, samples: int, batch: int, rule: str, d_ref: int) -> WorkerShare:
    factor = 1.0 if samples == d_ref else update_factor(rule, samples, d_ref)
    return WorkerShare(rank, group, line, samples, batch, factor, line.per_sample(batch) * samples)


def rescaled(current: WorkerPlan, plan: Plan, scales: dict[int, float]) -> WorkerPlan:
    """The plan again with each worker's line stretched by its measured slowdown (`scales`: rank -> factor
    measured over the predicted time; ranks left out keep their line)."""
    lines = {s.rank: s.line.scaled(scales.get(s.rank, 1.0)) for s in current.shares}
    return worker_plan(plan, lines, {s.rank: s.group for s in current.shares})


def for_survivors(plan: Plan, current: WorkerPlan, alive: list[int]) -> WorkerPlan:
    """The survivors' shares on the survivors' group plan `plan`, each keeping its line."""
    kept = [current.of(r) for r in alive]
    return worker_plan(plan, {s.rank: s.line for s in kept}, {s.rank: s.group for s in kept})


def same_line_plan(plan: Plan, ranks: list[int], groups: dict[int, str]) -> WorkerPlan:
    """Every worker on the group plan's averaged line (what a run without per-worker profiles plans from)."""
    if plan.time_a is None or plan.time_b is None:
        raise PlanError("dual.per_worker needs the step-time model: set dual.profile (a file, or auto), or "
                        "dual.time_a and dual.time_b")
    line = StepLine(plan.time_a, plan.time_b)
    return worker_plan(plan, {r: line for r in ranks}, groups)


def groups_of(workers: int, small: int) -> dict[int, str]:
    """Rank -> group of a run's workers (ranks 1..n; the first n_S are the small-batch group)."""
    return {w: SMALL if w <= small else LARGE for w in range(1, workers + 1)}


def plans_per_worker(plans: dict[int, Plan], lines: dict[int, dict[int, StepLine]] | None,
                     slower: dict[int, float] | None = None) -> dict[int, WorkerPlan]:
    """Every resolution's per-worker plan for workers 1..n: from each one's own line where `lines` has them
    (else the plan's line for all), stretched by `slower` (rank -> factor: what if that worker were slower)."""
    out = {}
    for r, plan in plans.items():
        groups = groups_of(plan.workers, plan.small)
        own = (lines or {}).get(r) or same_line_plan(plan, sorted(groups), groups).lines()
        stretched = {w: line.scaled((slower or {}).get(w, 1.0)) for w, line in own.items()}
        out[r] = worker_plan(plan, stretched, groups)
    return out


def format_worker_plan(plan: WorkerPlan, resolution: int) -> str:
    """One row per worker: the per-worker table of `hdbl plan` and the start-up line."""
    head = f"{resolution} px, T0={plan.baseline_commit_time:.4g} s:"
    rows = [f"  rank {s.rank} {s.group:5s} a={1e3 * s.line.a:.4g} ms/sample b={1e3 * s.line.b:.4g} ms/step  "
            f"d={s.samples} B={s.batch} steps={s.steps} f={s.factor:.4f} commit {s.commit_time:.4g} s"
            for s in plan.shares]
    return "\n".join([head, *rows])

