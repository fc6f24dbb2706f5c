"""What each worker trains next: the one place that turns the plan into a worker's next commit.

The server sends every worker its :class:`Assignment` at start-up and with every reply (stage, resolution,
batch, samples per commit, learning rate, dropout), and the worker follows it as given: it holds no plan of its
own. So a stage switch, a re-balanced B_S (dual.replan) and the survivors' shares after a lost worker (ULFM)
reach the worker the same way, and nothing can disagree with the server.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from hdbl_mpi.comm.wire import REPLY, TAG_START
from hdbl_mpi.comm.world import SMALL, role_of
from hdbl_mpi.errors import PlanError
from hdbl_mpi.optim.schedules import scheduled_lr
from hdbl_mpi.ps.balance import Balance, SpeedBalance
from hdbl_mpi.ps.state import ServerState
from hdbl_mpi.rules.epoch_lengths import EpochLengths, commits_by_resolution
from hdbl_mpi.rules.merge import push_update
from hdbl_mpi.rules.plan import Plan, lr_scale, make_plan, round_half_up
from hdbl_mpi.rules.schedule import Schedule
from hdbl_mpi.rules.worker_plan import StepLine, WorkerPlan, for_survivors, rescaled, same_line_plan, worker_plan
from hdbl_mpi.schema import Config


@dataclass(frozen=True)
class Assignment:
    """A worker's next commit, as the server decided it."""

    stage: int
    resolution: int
    batch: int
    share: int  # samples to train this commit
    lr: float  # already scaled for the batch (train.lr_scaling)
    dropout: float

    @property
    def steps(self) -> int:
        return max(1, round_half_up(self.share / self.batch))

    def header(self, **control: float) -> np.ndarray:
        """The reply header: this assignment plus the reply's control fields (stop, global_commit, ...)."""
        return REPLY.pack(**asdict(self), **control)

    @classmethod
    def from_header(cls, values: dict[str, float]) -> Assignment:
        return cls(int(values["stage"]), int(values["resolution"]), int(values["batch"]), int(values["share"]),
                   values["lr"], values["dropout"])


class Assignments:
    """The plans per resolution, the survivors' plans after a lost worker, the current B_S per resolution
    (in the checkpointed state), each worker's merge weight and, with dual.per_worker, each worker's share."""

    def __init__(self, config: Config, schedule: Schedule, plans: dict[int, Plan], state: ServerState,
                 workers: list[int], lines: dict[int, dict[int, StepLine]] | None = None) -> None:
        self.train, self.rule, self.n = config.train, config.ps.merge, config.dual.workers
        self.ks = commits_by_resolution(config.dual.commits_per_epoch, schedule.resolutions)  # k per resolution
        self.lengths = EpochLengths.for_run(config, schedule)  # the commits of each epoch
        self.schedule, self.plans, self.state = schedule, plans, state
        self.base = plans[max(plans)]  # d_L, d_S, n_S and f are the same at every resolution
        self.live: dict[int, Plan] = {}  # the survivors' plans after a lost worker
        self.stand_ins: dict[int, int] = {}  # a spare's rank -> the worker whose role it took (ps.spares)
        for r, p in plans.items():
            state.batch_small.setdefault(str(r), p.batch_small)
        # dual.per_worker: every worker's share per resolution (the survivors' after a loss), from its line
        self.shares = worker_plans(plans, state, workers, self.group, lines) if config.dual.per_worker else None
        self.outer_lr = config.ps.outer_lr or 1.0 / self.n  # 0: 1/n, the average of the workers' changes
        self.updates = {w: push_update(self.rule, self.factor(w), self.outer_lr) for w in workers}
        # A window of 4 commits' worth of data per group, whatever k: with short commits (large k) each one's time
        # is noisier, and a window of 4 commits would re-plan on noise. With a k per resolution, the largest k's.
        self.window = 4 * max(self.ks.values())
        threshold, replan = config.dual.replan_threshold, config.dual.replan
        self.balances = {r: Balance(p, threshold, self.window) for r, p in plans.items()} \
            if replan and self.base.small and self.shares is None else None
        self.speeds = SpeedBalance(threshold, self.window) if replan and self.shares is not None else None

    def group(self, rank: int) -> str:
        return role_of(self.stand_ins.get(rank, rank), self.base.small)

    def hand_over(self, lost: int, spare: int) -> None:
        """A spare takes a lost worker's role: its group, its share (dual.per_worker) and its merge weight, so
        nobody else's plan changes and an epoch is still n commits of the same sizes."""
        self.stand_ins[spare] = self.stand_ins.get(lost, lost)  # a stand-in's stand-in plays the first role
        if self.shares is not None:
            self._take({r: p.handed_over(lost, spare) for r, p in self.shares.items()})
        self.updates[spare] = self.updates[lost]

    def factor(self, rank: int) -> float:
        if self.shares is not None:
            return self.shares[max(self.shares)].of(rank).factor
        top = self.live[max(self.live)] if self.live else self.base
        return top.factor_small if self.group(rank) == SMALL else 1.0

    def stage(self) -> int:
        """The stage of commits starting now: from the global commit count, the same for every worker."""
        return self.schedule.index_at(self.lengths.done(self.state.merged))

    def send_first(self, comm: Any, workers: list[int]) -> None:
        """Every worker's first assignment, at start-up: sent before the server builds the rest of itself, so the
        workers' first commits overlap with that (after this, each reply carries the next assignment)."""
        for w in workers:
            header = self.next(w).header(epoch=self.lengths.done(self.state.merged), merged=self.state.merged)
            comm.Send(header, dest=w, tag=TAG_START)

    def lr(self) -> float:
        """The scheduled LR now (warm-up and cosine move per commit), before any per-batch scaling."""
        return scheduled_lr(self.train, self.schedule, self.lengths.position(self.state.merged))

    def next(self, rank: int) -> Assignment:
        index = self.stage()
        stage = self.schedule.stages[index]
        r, group = stage.resolution, self.group(rank)
        if self.shares is not None:
            share = self.shares[r].of(rank)
            batch, samples = share.batch, share.samples
        else:
            batch = int(self.state.batch_small[str(r)]) if group == SMALL else self.plans[r].batch_large
            samples = self.live.get(r, self.plans[r]).share(group)[0]
        lr = self.lr() * lr_scale(self.train.lr_scaling, batch, self.plans[r].batch_large)
        return Assignment(index, r, batch, round_half_up(samples / self.ks[r]), lr, stage.dropout)

    def observe(self, rank: int, info: dict[str, float], at_commit: int) -> dict | None:
        """Feed a commit's timing to the balance monitor (dual.replan); a re-plan record when B_S (per worker:
        the shares) change. Workers get their new share with their next assignment (a commit in progress keeps
        its own)."""
        if self.speeds is not None:
            return self._observe_speed(rank, info, at_commit)
        if self.balances is None:
            return None
        r = int(info["resolution"])
        change = self.balances[r].observe(self.group(rank), int(info["batch"]), info["compute_s"],
                                          int(info["steps"]), int(self.state.batch_small[str(r)]))
        if change is None:
            return None
        change.update(at_commit=at_commit, resolution=r)
        self.state.replans.append(change)
        self.state.batch_small[str(r)] = change["batch_small"]
        return change

    def _observe_speed(self, rank: int, info: dict[str, float], at_commit: int) -> dict | None:
        """dual.per_worker: each worker's speed against its line; on an imbalance, every resolution's shares are
        planned again with the lines scaled by the measured speeds."""
        assert self.speeds is not None and self.shares is not None
        r = int(info["resolution"])
        plan = self.shares[r]
        predicted = plan.of(rank).line.per_sample(int(info["batch"])) * info["steps"] * info["batch"]
        change = self.speeds.observe(rank, info["compute_s"], predicted, [s.rank for s in plan.shares])
        if change is None:
            return None
        scales = {int(w): f for w, f in change["scales"].items()}
        try:
            new = {q: rescaled(p, self.live.get(q, self.plans[q]), scales) for q, p in self.shares.items()}
        except PlanError as err:
            change.update(at_commit=at_commit, resolution=r, kept=f"no plan for the measured speeds ({err})")
            self.state.replans.append(change)
            return None
        self._take(new)
        change.update(at_commit=at_commit, resolution=r, samples={str(s.rank): s.samples for s in new[r].shares},
                      batches={str(s.rank): s.batch for s in new[r].shares})
        self.state.replans.append(change)
        return change

    def _take(self, shares: dict[int, WorkerPlan]) -> None:
        """Hand out these shares from now on: lines into the checkpointed state, merge weights renewed."""
        self.shares = shares
        self.state.worker_lines = _lines_state(shares)
        for s in shares[max(shares)].shares:
            self.updates[s.rank] = push_update(self.rule, s.factor, self.outer_lr)

    def survivors(self, alive: list[int], reason: str) -> dict | str:
        """Re-plan d_L, d_S, B_S and f for the surviving workers of each group; the re-plan record, or why the old
        shares stay. An epoch stays n commits (counters, stages and LR are defined that way), so the plan is
        made for D * n'/n samples over the n' survivors: their n commits per epoch (n*k with k commits per worker
        and epoch) again cover the data set once, with the groups balanced."""
        small = sum(1 for w in alive if self.group(w) == SMALL)
        try:
            live = {r: make_plan(round_half_up(p.dataset_size * len(alive) / self.n), len(alive), small,
                                 p.batch_large, p.time_a, p.time_b, p.extra_time, p.factor_rule)
                    for r, p in self.plans.items()}
            shares = {r: for_survivors(live[r], p, alive) for r, p in self.shares.items()} if self.shares else None
        except PlanError as err:
            return f"keeping the old data shares: no plan for the {len(alive)} survivors ({err})"
        self.live = live
        if shares is not None:
            self._take(shares)
        for r, p in live.items():
            if p.batch_small is not None:
                self.state.batch_small[str(r)] = p.batch_small
        for w in alive:
            self.updates[w] = push_update(self.rule, self.factor(w), self.outer_lr)
        self.speeds = SpeedBalance(self.speeds.threshold, self.window) if self.speeds is not None else None
        if self.balances is not None:
            self.balances = {r: Balance(p, self.balances[r].threshold, self.window) for r, p in live.items()} \
                if small else None
        top = live[max(live)]
        change = {"after_commit": self.state.merged, "reason": reason, "workers": len(alive), "small": small,
                  "d_large": top.d_large, "d_small": top.d_small, "batch_small": top.batch_small,
                  "factor_small": top.factor_small}
        if self.shares is not None:
            change["samples"] = {str(s.rank): s.samples for s in self.shares[max(self.shares)].shares}
        self.state.replans.append(change)
        return change


def worker_plans(plans: dict[int, Plan], state: ServerState, workers: list[int], group: Callable[[int], str],
                 lines: dict[int, dict[int, StepLine]] | None) -> dict[int, WorkerPlan]:
    """dual.per_worker: every worker's share per resolution, from the checkpoint's lines on a resume (re-plans
    included), else from each worker's own profiled line, else from the plan's line for all (the group plan's
    numbers exactly). The lines go into the checkpointed state."""
    out = {}
    groups = {w: group(w) for w in workers}
    for r, plan in plans.items():
        saved = state.worker_lines.get(str(r))
        resumed = {int(w): StepLine(*ab) for w, ab in (saved or {}).items()}
        mine = resumed if set(resumed) == set(workers) else (lines or {}).get(r)
        out[r] = worker_plan(plan, mine, groups) if mine else same_line_plan(plan, workers, groups)
    state.worker_lines = _lines_state(out)
    return out


def _lines_state(shares: dict[int, WorkerPlan]) -> dict:
    return {str(r): {str(s.rank): [s.line.a, s.line.b] for s in p.shares} for r, p in shares.items()}
