"""The synchronisation modes of the parameter server (method §3): when a push merges, when a reply goes out.

One small class per mode behind one interface, free of MPI and torch, so each rule reads in a few lines and is
unit-tested on plain numbers. The server asks its policy three things:

- :meth:`SyncPolicy.on_push`: what a push does to the global vector (an :class:`Update`, applied alike on every
  shard by ``ps/shards.py``);
- :meth:`SyncPolicy.round_end`: whether the pushes held so far end a round (BSP: average them);
- :meth:`SyncPolicy.may_reply`: whether a held worker may get its reply now (SSP: the staleness bound).

The operations are numbered here because they travel to the shard servers in a control message.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

# What a decision does to the global vector W (the shard servers receive these numbers).
OP_MERGE = 0  # W <- lerp(W, W_k, value): ASP/SSP merge with the rule's weight (rules/merge.py)
OP_DROP = 1  # receive W_k and discard it: a rejected (non-finite) push
OP_ACCUMULATE = 2  # BSP: add value * W_k to the round's sum
OP_ACCUMULATE_OWN = 3  # BSP, rejected push: add value * W (the worker "changed nothing")
OP_AVERAGE = 4  # BSP round end: W <- sum / value
OP_DELTA = 5  # W_params += value * Delta_k (outer step, with momentum), W_buffers <- lerp(W_buffers, B_k, value2)
OP_MOMENTUM = 9  # delayed outer momentum, once per round of pushes: v <- m*v + (the round's steps); W += m*v


@dataclass(frozen=True)
class Update:
    op: int
    value: float = 0.0
    value2: float = 0.0


class SyncPolicy:
    """ASP: every push merges at once and its worker gets the merged model back at once."""

    mode: ClassVar[str] = "asp"
    goes_on_without_stalled: ClassVar[bool] = True  # may end the run without a worker that stopped committing

    def on_push(self, rejected: bool, factor: float, merge: Update) -> Update:
        """A push with model-update factor `factor`; `merge` is what the merge rule does with it (rules/merge.py)."""
        return Update(OP_DROP) if rejected else merge

    def round_end(self, held: int, active: int) -> Update | None:
        """`held` workers wait for a reply out of `active` still training: an update that ends the round, or
        None."""
        return None

    def may_reply(self, commits: int, slowest: int, stop: bool) -> bool:
        """Whether a held worker with `commits` commits may go on while the slowest active one has `slowest`."""
        return True

    def between_rounds(self) -> bool:
        """Whether W holds every merged push now (a checkpoint may be taken)."""
        return True


class Asp(SyncPolicy):
    pass


class Ssp(SyncPolicy):
    """SSP(s): as ASP, but a worker more than s commits ahead of the slowest active worker waits for it."""

    mode = "ssp"
    goes_on_without_stalled = False  # the bound waits for every worker

    def __init__(self, staleness: int) -> None:
        self.staleness = staleness

    def may_reply(self, commits: int, slowest: int, stop: bool) -> bool:
        return stop or commits + 1 - slowest <= self.staleness


class Bsp(SyncPolicy):
    """BSP: one push from every active worker, then W = sum(f_k W_k) / sum(f_k) and every worker gets W.

    A rejected push counts as the worker's unchanged copy of W (its factor still weighs it), so a round never
    waits for a push that will not come."""

    mode = "bsp"
    goes_on_without_stalled = False

    def __init__(self) -> None:
        self.factor_sum = 0.0
        self.closed = False

    def on_push(self, rejected: bool, factor: float, merge: Update) -> Update:
        self.closed = False
        self.factor_sum += factor
        return Update(OP_ACCUMULATE_OWN if rejected else OP_ACCUMULATE, factor)

    def round_end(self, held: int, active: int) -> Update | None:
        if held < active:
            return None
        total, self.factor_sum, self.closed = self.factor_sum, 0.0, True
        return Update(OP_AVERAGE, total)

    def may_reply(self, commits: int, slowest: int, stop: bool) -> bool:
        return self.closed

    def between_rounds(self) -> bool:
        return self.factor_sum == 0.0


PS_MODES = ("asp", "bsp", "ssp")
# MXNet's kvstore names: dist_sync is a BSP parameter server, dist_async an ASP one, local one process.
KVSTORE_MODES = {"dist_sync": "bsp", "dist_async": "asp", "local": "allreduce"}
# ps.fault_tolerance: abort (a lost worker ends the job; --resume continues it) or ulfm (the server drops it
# and the survivors take over its commits: ps/failures.py). ULFM needs ASP: a BSP round or an SSP bound cannot
# go on without a worker.
FAULT_TOLERANCE = ("abort", "ulfm")


def make_policy(mode: str, staleness: int) -> SyncPolicy:
    if mode == "bsp":
        return Bsp()
    if mode == "ssp":
        return Ssp(staleness)
    if mode == "asp":
        return Asp()
    raise ValueError(f"unknown parameter-server mode {mode!r}; use one of {', '.join(PS_MODES)}")
