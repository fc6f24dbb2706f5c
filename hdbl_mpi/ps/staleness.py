"""Each push's staleness (merges since its worker pulled) and what the merge makes of it: the staleness decay of
its weight and, for the delayed outer momentum, the end of each round of pushes (rules/merge.py says why)."""

from __future__ import annotations

from hdbl_mpi.rules.merge import scaled, staleness_scale
from hdbl_mpi.rules.policy import OP_AVERAGE, OP_DELTA, OP_MERGE, OP_MOMENTUM, Update
from hdbl_mpi.schema import Config

MERGES = (OP_MERGE, OP_DELTA, OP_AVERAGE)  # what changes W for the workers (a BSP round changes it at its end)


class PushClock:
    """Counts W's merges, remembers the count each worker pulled at, and turns a push's update into the one to
    apply (scaled by its staleness) plus, with the delayed outer momentum, the round's momentum step when the
    push ends a round of as many pushes as there are workers training."""

    def __init__(self, config: Config, workers: list[int]) -> None:
        self.decay = config.ps.staleness_decay
        self.delayed = config.ps.merge == "delta" and config.ps.outer_delayed
        self.version = 0  # merges into W so far in this serve()
        self.pulled = {w: 0 for w in workers}  # the version each worker last pulled
        self.round_pushes = 0
        self.by_commit: dict[int, int] = {}  # global commit -> its staleness, until the commit's record comes
        self.seen: dict[int, list[int]] = {w: [0, 0, 0] for w in workers}  # pushes, summed staleness, largest

    def push(self, src: int, update: Update, training: int) -> tuple[Update, Update | None, int]:
        """(the update to apply, the round's momentum step or None, the push's staleness); `training`: workers
        neither stopped nor lost, the length of a round."""
        staleness = self.version - self.pulled[src]
        seen = self.seen[src]
        seen[0], seen[1], seen[2] = seen[0] + 1, seen[1] + staleness, max(seen[2], staleness)
        update = scaled(update, staleness_scale(staleness, self.decay))
        if update.op in MERGES:
            self.version += 1
        end = None
        if self.delayed and update.op == OP_DELTA:
            self.round_pushes += 1
            if self.round_pushes >= training:
                self.round_pushes, end = 0, Update(OP_MOMENTUM)
        return update, end, staleness

    def round_end(self, update: Update) -> None:
        """A BSP round's average: W changed for everyone."""
        if update.op in MERGES:
            self.version += 1

    def join(self, rank: int) -> None:
        """A spare that took a lost worker's role pulled W as it is now."""
        self.pulled[rank] = self.version
        self.seen[rank] = [0, 0, 0]

    def reply(self, rank: int) -> None:
        self.pulled[rank] = self.version

    def summary(self) -> dict:
        """summary.json's `staleness`: mean and largest per worker and overall, and the decay applied."""
        pushes = sum(v[0] for v in self.seen.values())
        return {"decay": self.decay, "mean": sum(v[1] for v in self.seen.values()) / pushes if pushes else None,
                "max": max((v[2] for v in self.seen.values() if v[0]), default=None),
                "by_worker": {str(w): {"mean": v[1] / v[0], "max": v[2]} for w, v in self.seen.items() if v[0]}}
