"""What the server knows: its counters (checkpointed) and where every worker is right now (not checkpointed)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from hdbl_mpi.run.book import BookState


@dataclass
class ServerState(BookState):
    """The server's checkpointed counters besides the epoch book's (plain types, for weights_only loading)."""

    merged: int = 0  # commits merged so far (a rejected push counts: its data was used up)
    commits_by_worker: dict = field(default_factory=dict)  # str(rank) -> commits
    samples_by_group: dict = field(default_factory=lambda: {"small": 0, "large": 0})
    epoch_loss_sum: float = 0.0
    epoch_correct: float = 0.0
    epoch_samples: float = 0.0
    batch_small: dict = field(default_factory=dict)  # current B_S per resolution (str), after re-plans
    replans: list = field(default_factory=list)
    worker_lines: dict = field(default_factory=dict)  # dual.per_worker: str(resolution) -> {str(rank): [a, b]}
    nonfinite_rejected: dict = field(default_factory=dict)  # str(rank) -> pushes rejected for NaN/Inf
    missing_commits: int = 0  # commits a stalled worker never delivered at the end of an ASP run
    lost_workers: list = field(default_factory=list)  # ULFM: {rank, at_commit, error_class, time} of each dead rank
    replacements: list = field(default_factory=list)  # ps.spares: {rank, by, at_commit, lost_at, first_commit_s}
    chaos: list = field(default_factory=list)  # debug.chaos: {rank, at_commit, fraction, time} of each kill ordered

    def commits(self, rank: int) -> int:
        return int(self.commits_by_worker[str(rank)])


@dataclass
class Roster:
    """Where every worker is: training a commit, held for its reply, told to stop, given up on, or lost."""

    workers: list[int]
    training: set[int] = field(default_factory=set)  # computing a commit right now
    training_since: dict[int, float] = field(default_factory=dict)  # monotonic time its commit started
    pending: dict[int, tuple[int, float]] = field(default_factory=dict)  # held: (global commit id, arrival)
    stopped: set[int] = field(default_factory=set)  # told to stop
    stalled: set[int] = field(default_factory=set)  # ASP: given up on after ps.timeout_s / 2 without a commit
    lost: set[int] = field(default_factory=set)  # ULFM: died; the run goes on without them

    def __post_init__(self) -> None:
        for w in self.workers:
            self.start(w)

    def start(self, rank: int) -> None:
        self.training.add(rank)
        self.training_since[rank] = time.monotonic()

    def hold(self, rank: int, global_commit: int, arrived: float) -> None:
        self.training.discard(rank)
        self.pending[rank] = (global_commit, arrived)

    def active(self) -> list[int]:
        """Workers not yet told to stop."""
        return [w for w in self.workers if w not in self.stopped]

    def alive(self) -> list[int]:
        return [w for w in self.workers if w not in self.lost]

    def done(self) -> bool:
        """Every worker stopped, was given up on, or died."""
        return len(self.stopped | self.stalled | self.lost) == len(self.workers)
