"""The chaos drill (debug.chaos): workers SIGKILLed on purpose, at random commits, seeded, so that losing and
replacing workers (ps.fault_tolerance: ulfm, ps.spares) is tried rather than assumed (bench/chaos.py runs it).

The server decides, because only it knows who is still training: when the merged commits reach the next kill's
point it picks one of the workers still training at random and orders it, with its next reply, to SIGKILL
itself part-way through that commit's compute (run/faults.py: kill_after). A replacement is a worker like any
other, so it can be picked too. Every draw comes from `debug.chaos.seed`, so a drill can be run again.
"""

from __future__ import annotations

import random
import time

from hdbl_mpi.schema import ChaosConfig


class Chaos:
    """The kill plan of one run and the orders given so far."""

    def __init__(self, config: ChaosConfig, total: int, merged: int, log: list[dict]) -> None:
        self.rng = random.Random(config.seed)
        first, last = max(1, int(config.start * total)), max(1, int(config.end * total))
        points = range(first, last + 1)
        planned = sorted(self.rng.sample(points, min(config.kills, len(points))))
        self.due_at = [c for c in planned if c > merged]  # a resumed run keeps the kills still ahead of it
        self.orders: dict[int, float] = {}  # rank -> fraction of its next commit's compute before it dies
        self.doomed: set[int] = set()  # ranks given their order: dying in the commit they are training
        self.log = log  # summary.json's `chaos`: each order given (in the checkpointed state, across restarts)

    def observe(self, merged: int, candidates: list[int]) -> str | None:
        """After a merge: order the kill that is due, if any; a line that says whom."""
        pool = sorted(set(candidates) - set(self.orders) - self.doomed)
        if not self.due_at or self.due_at[0] > merged or not pool:
            return None
        self.due_at.pop(0)
        victim, fraction = self.rng.choice(pool), self.rng.uniform(0.1, 0.9)
        self.orders[victim] = fraction
        self.log.append({"rank": victim, "at_commit": merged, "fraction": round(fraction, 3), "time": time.time()})
        return (f"debug.chaos: rank {victim} is to SIGKILL itself {100 * fraction:.0f} % into its next commit "
                f"(kill {len(self.log)}, ordered at commit {merged})")

    def order(self, rank: int) -> float:
        """The order for `rank`'s reply (0: none); given once, and the rank is not drawn again (a kill drawn for a
        worker already dying would be lost: 2 of 30 kills were, in the first drill)."""
        if rank not in self.orders:
            return 0.0
        self.doomed.add(rank)
        return self.orders.pop(rank)
