"""What each worker trains next: the one place that turns the plan into a worker's next commit.

The server sends every worker its :class:`Assignment` at start-up and with every reply (stage, resolution,
batch, samples per commit, learning rate, dropout), and the worker follows it as given: it holds no plan of its
own. So a stage switch, a re-balanced B_S (dual.replan) and the survivors' shares after a lost worker (ULFM)
reach the worker the same way, and nothing can disagree with the server.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from hdbl_mpi.comm.wire import REPLY, TAG_START
from hdbl_mpi.comm.world import SMALL, role_of
from hdbl_mpi.errors import PlanError
from hdbl_mpi.optim.schedules import scheduled_lr
from hdbl_mpi.ps.balance import Balance
from hdbl_mpi.ps.state import ServerState
from hdbl_mpi.rules.merge import push_update
from hdbl_mpi.rules.plan import Plan, lr_scale, make_plan, round_half_up
from hdbl_mpi.rules.schedule import Schedule
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
    (in the checkpointed state) and each worker's merge weight."""

    def __init__(self, config: Config, schedule: Schedule, plans: dict[int, Plan], state: ServerState,
                 workers: list[int]) -> None:
        self.train, self.rule, self.n = config.train, config.ps.merge, config.dual.workers
        self.k = config.dual.commits_per_epoch
        self.per_epoch = self.n * self.k  # commits of one epoch
        self.schedule, self.plans, self.state = schedule, plans, state
        self.base = plans[max(plans)]  # d_L, d_S, n_S and f are the same at every resolution
        self.live: dict[int, Plan] = {}  # the survivors' plans after a lost worker
        for r, p in plans.items():
            state.batch_small.setdefault(str(r), p.batch_small)
        self.outer_lr = config.ps.outer_lr or 1.0 / self.n  # 0: 1/n, the average of the workers' changes
        self.updates = {w: push_update(self.rule, self.factor(w), self.outer_lr) for w in workers}
        # A window of 4 commits' worth of data per group, whatever k: with short commits (large k) each one's time
        # is noisier, and a window of 4 commits would re-plan on noise.
        self.window = 4 * self.k
        threshold = config.dual.replan_threshold
        self.balances = {r: Balance(p, threshold, self.window) for r, p in plans.items()} \
            if config.dual.replan and self.base.small else None

    def group(self, rank: int) -> str:
        return role_of(rank, self.base.small)

    def factor(self, rank: int) -> float:
        top = self.live[max(self.live)] if self.live else self.base
        return top.factor_small if self.group(rank) == SMALL else 1.0

    def stage(self) -> int:
        """The stage of commits starting now: from the global commit count, the same for every worker."""
        return self.schedule.index_at(self.state.merged // self.per_epoch)

    def send_first(self, comm: Any, workers: list[int]) -> None:
        """Every worker's first assignment, at start-up: sent before the server builds the rest of itself, so the
        workers' first commits overlap with that (after this, each reply carries the next assignment)."""
        for w in workers:
            header = self.next(w).header(epoch=self.state.merged // self.per_epoch, merged=self.state.merged)
            comm.Send(header, dest=w, tag=TAG_START)

    def lr(self) -> float:
        """The scheduled LR now (warm-up and cosine move per commit), before any per-batch scaling."""
        return scheduled_lr(self.train, self.schedule, self.state.merged / self.per_epoch)

    def next(self, rank: int) -> Assignment:
        index = self.stage()
        stage = self.schedule.stages[index]
        r, group = stage.resolution, self.group(rank)
        plan = self.live.get(r, self.plans[r])
        batch = int(self.state.batch_small[str(r)]) if group == SMALL else self.plans[r].batch_large
        lr = self.lr() * lr_scale(self.train.lr_scaling, batch, self.plans[r].batch_large)
        return Assignment(index, r, batch, round_half_up(plan.share(group)[0] / self.k), lr, stage.dropout)

    def observe(self, group: str, info: dict[str, float], at_commit: int) -> dict | None:
        """Feed a commit's timing to the balance monitor (dual.replan); a re-plan record when B_S changes.
        Small-batch workers get the new B_S with their next assignment (a commit in progress keeps its batch)."""
        if self.balances is None:
            return None
        r = int(info["resolution"])
        change = self.balances[r].observe(group, int(info["batch"]), info["compute_s"], int(info["steps"]),
                                          int(self.state.batch_small[str(r)]))
        if change is None:
            return None
        change.update(at_commit=at_commit, resolution=r)
        self.state.replans.append(change)
        self.state.batch_small[str(r)] = change["batch_small"]
        return change

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
        except PlanError as err:
            return f"keeping the old data shares: no plan for the {len(alive)} survivors ({err})"
        self.live = live
        for r, p in live.items():
            if p.batch_small is not None:
                self.state.batch_small[str(r)] = p.batch_small
        for w in alive:
            self.updates[w] = push_update(self.rule, self.factor(w), self.outer_lr)
        if self.balances is not None:
            self.balances = {r: Balance(p, self.balances[r].threshold, self.window) for r, p in live.items()} \
                if small else None
        top = live[max(live)]
        change = {"after_commit": self.state.merged, "reason": reason, "workers": len(alive), "small": small,
                  "d_large": top.d_large, "d_small": top.d_small, "batch_small": top.batch_small,
                  "factor_small": top.factor_small}
        self.state.replans.append(change)
        return change
