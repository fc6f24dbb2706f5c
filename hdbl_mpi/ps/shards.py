"""Sharded servers (`ps.servers: k`): k server ranks, each owning one contiguous slice of the flat vector.

One server moves 2 x model bytes per commit and merges the whole vector, so with many workers (or a slow NIC)
it becomes the bottleneck. As with MXNet's ``-s`` servers, the vector is cut into k contiguous shards; a worker
sends each shard to its owner and receives each merged shard from it, so the bytes and the merge work of
every commit are split k ways and run in parallel.

Rank 0 stays the one place where decisions are made (merge weights, NaN rejection, BSP rounds, SSP holds,
stages, stop, evaluation, checkpoints) and owns shard 0. For each decision it sends a small control message
(``SHARD_OP``) to the other shard servers, ranks n+1 .. n+k-1 (after the workers, so workers keep ranks 1..n).
MPI keeps messages between two ranks in order, so every shard applies the same operations in the same order as
rank 0 applies them to its own shard: the shards together hold exactly the vector one server would hold.
The element-wise arithmetic lives in ``ShardMath``, used by rank 0 and the shard servers alike.

Who owns which slice is the wire's `Layout` (comm/layout.py: boundaries aligned so that the vectorised kernels
round each element of a shard as in the whole vector); the BSP average is written with
separately rounded multiply and add, which makes a sharded BSP run bit-identical to a single server.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from mpi4py import MPI

from hdbl_mpi.comm.layout import Layout
from hdbl_mpi.comm.wire import TAG_PUSH_WEIGHTS, TAG_REPLY_WEIGHTS, HeaderLayout, wait_bounded
from hdbl_mpi.rules.policy import (
    OP_ACCUMULATE,
    OP_ACCUMULATE_OWN,
    OP_AVERAGE,
    OP_DELTA,
    OP_DROP,
    OP_MERGE,
    OP_MOMENTUM,
    Update,
)

TAG_SHARD_OP = 41
TAG_SHARD_GATHER = 42
TAG_SHARD_DONE = 43  # a shard server's counters, sent to rank 0 when it finishes

# Control message, rank 0 -> each shard server: what to do next, in rank 0's order. Operations 0..5 change the
# vector (rules/policy.py decides them); these three move it.
SHARD_OP = HeaderLayout(("op", "rank", "value", "value2"))
OP_REPLY, OP_GATHER, OP_FINISH = 6, 7, 8
PUSH_OPS = (OP_MERGE, OP_DROP, OP_ACCUMULATE, OP_ACCUMULATE_OWN, OP_DELTA)  # each receives a worker's slice first


class ShardMath:
    """The merge arithmetic on one contiguous slice of the global vector (the whole vector with one server).

    ``W`` is a view into the owner's global vector; ``recv`` receives a worker's slice. ASP merges are one
    fused ``lerp_`` (read W and W_k, write W). A BSP round sums f_k * W_k with separately rounded multiply and
    add, then divides: each element is rounded the same way whatever the slice, so k shards reproduce one
    server bit for bit.

    The delta rule steps the parameters (the first `split` values of this slice: parameters come before the
    floating-point buffers in the flat vector) by the pushed change, with Nesterov momentum `momentum`, and
    interpolates the buffers (BatchNorm statistics). With `delayed`, each step goes in without momentum and
    is added to the round's sum; the momentum step on that sum comes with OP_MOMENTUM, once per round."""

    def __init__(self, W: torch.Tensor, split: int | None = None, momentum: float = 0.0,
                 delayed: bool = False) -> None:
        self.W = W
        self.recv = torch.empty_like(W)
        self.recv_np = self.recv.numpy()
        self.split = W.numel() if split is None else max(0, min(split, W.numel()))
        self.momentum, self.delayed = momentum, delayed
        self._round: torch.Tensor | None = None  # delayed: the round's summed steps
        self._sum: torch.Tensor | None = None
        self._scaled: torch.Tensor | None = None
        self._velocity: torch.Tensor | None = None

    @property
    def velocity(self) -> torch.Tensor | None:
        """The delta rule's outer momentum (None before its first step or without momentum): checkpointed."""
        return self._velocity

    @velocity.setter
    def velocity(self, value: torch.Tensor | None) -> None:
        self._velocity = value

    def apply(self, update: Update) -> None:
        """Apply one of the policy's updates (a pushed slice, when the update takes one, is in ``recv``)."""
        if update.op == OP_MERGE:
            self.merge(update.value)
        elif update.op in (OP_ACCUMULATE, OP_ACCUMULATE_OWN):
            self.accumulate(update.value, own=update.op == OP_ACCUMULATE_OWN)
        elif update.op == OP_AVERAGE:
            self.average(update.value)
        elif update.op == OP_DELTA:
            self.step(update.value, update.value2)
        elif update.op == OP_MOMENTUM:
            self.momentum_step()
        elif update.op != OP_DROP:
            raise ValueError(f"operation {update.op} does not change the vector")

    def merge(self, weight: float) -> None:
        self.W.lerp_(self.recv, weight)

    def step(self, lr: float, buffer_weight: float) -> None:
        """Delta rule: parameters W += lr * Delta (Nesterov: v = m*v + lr*Delta; W += lr*Delta + m*v), the
        buffers move towards the pushed ones by `buffer_weight`."""
        s = self.split
        params, delta = self.W[:s], self.recv[:s]
        if self.momentum and self.delayed:
            if self._round is None:
                self._round = torch.zeros_like(params)
            self._round.add_(delta, alpha=lr)
            params.add_(delta, alpha=lr)
        elif self.momentum:
            if self._velocity is None:
                self._velocity = torch.zeros_like(params)
            self._velocity.mul_(self.momentum).add_(delta, alpha=lr)
            params.add_(delta, alpha=lr).add_(self._velocity, alpha=self.momentum)
        else:
            params.add_(delta, alpha=lr)
        self.W[s:].lerp_(self.recv[s:], buffer_weight)

    def momentum_step(self) -> None:
        """Delayed outer momentum at a round's end: v = m*v + (the round's summed steps); W += m*v (the steps
        themselves went in with each push, so the round adds up to one Nesterov step on its sum)."""
        if self._round is None:
            return
        params = self.W[: self.split]
        if self._velocity is None:
            self._velocity = torch.zeros_like(params)
        self._velocity.mul_(self.momentum).add_(self._round)
        params.add_(self._velocity, alpha=self.momentum)
        self._round.zero_()

    def _round_buffers(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The BSP round's sum and a scratch vector, allocated at the first BSP push (ASP never needs them)."""
        if self._sum is None or self._scaled is None:
            self._sum, self._scaled = torch.zeros_like(self.W), torch.empty_like(self.W)
        return self._sum, self._scaled

    def accumulate(self, factor: float, own: bool) -> None:
        """Add factor * (the received slice, or W itself for a rejected push) to the BSP round's sum."""
        total, scaled = self._round_buffers()
        torch.mul(self.W if own else self.recv, factor, out=scaled)
        total.add_(scaled)

    def average(self, divisor: float) -> None:
        """End of a BSP round: W = sum / sum of factors."""
        total, _ = self._round_buffers()
        torch.div(total, divisor, out=self.W)
        total.zero_()


class ShardFanout:
    """Rank 0's side: tells the other shard servers what it decided, and gathers their shards when it needs the
    whole vector (evaluation, checkpoint). With one server it does nothing."""

    def __init__(self, comm: MPI.Intracomm, layout: Layout, W_np: np.ndarray) -> None:
        self.comm, self.layout, self.W_np = comm, layout, W_np

    def tell(self, op: int, rank: int = 0, value: float = 0.0, value2: float = 0.0) -> None:
        """Send one operation to every shard server (rank: the worker it concerns, for pushes and replies)."""
        if not self.layout.others:
            return
        message = SHARD_OP.pack(op=op, rank=rank, value=value, value2=value2)
        for shard_rank, _, _ in self.layout.others:
            self.comm.Send(message, dest=shard_rank, tag=TAG_SHARD_OP)

    def gather(self) -> None:
        """Bring every shard into rank 0's full vector (only the own shard is current between gathers)."""
        if not self.layout.others:
            return
        self.tell(OP_GATHER)
        MPI.Request.Waitall([self.comm.Irecv(self.W_np[s:e], source=r, tag=TAG_SHARD_GATHER)
                             for r, s, e in self.layout.others])

    def finish(self) -> dict[str, dict]:
        """End the shard servers' loops; returns each one's counters (pushes, replies, gathers, busy seconds)."""
        self.tell(OP_FINISH)
        return {str(r): self.comm.recv(source=r, tag=TAG_SHARD_DONE) for r, _, _ in self.layout.others}


def serve_shard(comm: MPI.Intracomm, vector: np.ndarray, start: int, end: int, timeout_s: float,
                split: int | None = None, momentum: float = 0.0, delayed: bool = False) -> dict:
    """A shard server's loop: apply rank 0's operations to this slice until told to finish.

    `vector` holds the initial global weights (everyone received them at start-up); the slice [start, end) is
    this server's from then on; its first `split` values are parameters (the delta rule steps them, with
    Nesterov `momentum`). Waits for rank 0 are bounded by `timeout_s`, so a lost rank 0 ends this rank with an error
    instead of a hang. Returns counters for the run summary."""
    math_ = ShardMath(torch.from_numpy(vector[start:end]), split, momentum, delayed)
    W_np = vector[start:end]
    op_in = SHARD_OP.empty()
    counts = {"pushes": 0, "replies": 0, "gathers": 0, "busy_s": 0.0}
    while True:
        wait_bounded(comm.Irecv(op_in, source=0, tag=TAG_SHARD_OP), timeout_s,
                     f"the next operation from server rank 0 (shard server rank {comm.rank})")
        t0 = time.perf_counter()
        message = SHARD_OP.unpack(op_in)
        op, rank, update = int(message["op"]), int(message["rank"]), Update(int(message["op"]), message["value"],
                                                                            message["value2"])
        if op in PUSH_OPS:
            comm.Recv(math_.recv_np, source=rank, tag=TAG_PUSH_WEIGHTS)
            counts["pushes"] += 1  # merged, accumulated or dropped (rejected)
            math_.apply(update)
        elif op in (OP_AVERAGE, OP_MOMENTUM):
            math_.apply(update)
        elif op == OP_REPLY:
            comm.Send(W_np, dest=rank, tag=TAG_REPLY_WEIGHTS)
            counts["replies"] += 1
        elif op == OP_GATHER:
            comm.Send(W_np, dest=0, tag=TAG_SHARD_GATHER)
            counts["gathers"] += 1
        elif op == OP_FINISH:
            comm.send(counts, dest=0, tag=TAG_SHARD_DONE)
            return counts
        else:
            raise RuntimeError(f"shard server rank {comm.rank} got unknown operation {op} from rank 0")
        counts["busy_s"] += time.perf_counter() - t0
