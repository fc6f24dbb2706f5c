"""A worker rank's commit loop (method §4).

Each commit: train the assignment's steps on batches drawn from a fresh random permutation of the whole
training set, push the full weights, receive the merged weights and the next assignment (ps/assign.py: stage,
resolution, batch, samples, LR, dropout, as the server decided them). The worker holds no plan of its own. The
optimizer (momentum buffers) lives across commits: only the weights are replaced by the merged ones.

After each pull the worker keeps a copy of its own state (optimizer, RNGs, data stream: run/rankstate.py), so
when a reply asks for its state as of the commit a checkpoint covers, it sends the newest copy taken at or before
that commit: the state that goes with the checkpoint's weights, even if it has committed again since (ASP).
"""

from __future__ import annotations

import math
import socket
import time

import numpy as np
import torch
from mpi4py import MPI
from torch import nn

from hdbl_mpi.comm.layout import Layout
from hdbl_mpi.comm.wire import (
    PUSH,
    REPLY,
    STATE_FINAL,
    TAG_PUSH_HEADER,
    TAG_PUSH_WEIGHTS,
    TAG_RECORD,
    TAG_REPLY_HEADER,
    TAG_REPLY_WEIGHTS,
    TAG_START,
    TAG_STATE,
    FlatState,
    wait_bounded,
)
from hdbl_mpi.comm.world import World
from hdbl_mpi.data.sources import BatchSource
from hdbl_mpi.engine import StepStats, set_lr, train_steps
from hdbl_mpi.models import set_dropout
from hdbl_mpi.optim.optimizers import optimizer_for
from hdbl_mpi.precision import Precision
from hdbl_mpi.ps.assign import Assignment
from hdbl_mpi.rules.merge import pushes_change
from hdbl_mpi.run.faults import kill_after, maybe_crash
from hdbl_mpi.run.rankstate import GRAD_SCALER, RankState, capture, restore
from hdbl_mpi.run.records import CommitRecord
from hdbl_mpi.run.signals import STOP
from hdbl_mpi.run.slow import Slowdown
from hdbl_mpi.schema import Config
from hdbl_mpi.throughput import CompileWarmup


def push_and_pull(comm, host: np.ndarray, header_out, header_in, timeout_s: float, what: str,
                  layout: Layout | None = None) -> float:
    """One commit exchange: push the header to rank 0 and each shard of `host` (the model's flat vector on the
    host) to its server (all shards at once), wait (bounded) for rank 0's reply header, then receive every
    merged shard straight into `host`. Returns the round-trip seconds."""
    start = time.perf_counter()
    parts = layout.parts if layout is not None else ((0, 0, host.size),)
    comm.Send(header_out, dest=0, tag=TAG_PUSH_HEADER)
    if len(parts) == 1:
        comm.Send(host, dest=0, tag=TAG_PUSH_WEIGHTS)
        wait_bounded(comm.Irecv(header_in, source=0, tag=TAG_REPLY_HEADER), timeout_s, what)
        comm.Recv(host, source=0, tag=TAG_REPLY_WEIGHTS)
    else:
        MPI.Request.Waitall([comm.Isend(host[s:e], dest=r, tag=TAG_PUSH_WEIGHTS) for r, s, e in parts])
        wait_bounded(comm.Irecv(header_in, source=0, tag=TAG_REPLY_HEADER), timeout_s, what)
        MPI.Request.Waitall([comm.Irecv(host[s:e], source=r, tag=TAG_REPLY_WEIGHTS) for r, s, e in parts])
    return time.perf_counter() - start


class Worker:
    """One worker rank: trains what the server assigns, commits, and reports each commit's record."""

    def __init__(self, world: World, config: Config, model: nn.Module, flat: FlatState, source: BatchSource,
                 device: torch.device, timeout_s: float, verbose: bool, layout: Layout | None = None,
                 resumed: RankState | None = None, warm_up: CompileWarmup | None = None,
                 slowdown: Slowdown | None = None, resumed_run: bool = False, replaces: int | None = None) -> None:
        self.world, self.comm, self.config = world, world.comm, config
        self.slowdown = slowdown  # debug.slow: this worker's emulated slowness (run/slow.py)
        self.model, self.flat, self.source, self.device = model, flat, source, device
        self.timeout_s, self.verbose, self.layout, self.warm_up = timeout_s, verbose, layout, warm_up
        self.optimizer = optimizer_for(model, config.train)
        self.precision = Precision(config.train.precision, device)  # its scaler (amp) lives across commits
        self.resumed = resumed_run  # the run resumed from a checkpoint, with or without this worker's own state
        self.replaces = replaces  # a spare: the lost worker whose role it took (ps/spare.py)
        if resumed is not None:  # a resume: momentum, scaler, RNGs and data stream as the checkpoint left them
            restore(resumed, self.optimizer, source)
            self.precision.load_state_dict(resumed.extra.get(GRAD_SCALER, {}))
            held = f" (saved by spare rank {resumed.rank}, which held its role)" if resumed.rank != world.rank else ""
            print(f"hdbl train: rank {world.rank}: own state from commit {resumed.at}{held}, optimizer state L1 "
                  f"{resumed.optimizer_l1():.6g}", flush=True)
        self.kept: list[RankState] = []  # own state after the last two pulls (oldest first)
        self.host = socket.gethostname()
        # The delta rule (rules/merge.py): the parameters as last pulled, to push their change since then.
        self.pulled = flat.to_host()[:flat.params_numel].copy() if pushes_change(config.ps.merge) else None

    def run(self, start_header: np.ndarray | None = None) -> None:
        """Commit until the server says stop; every commit's record goes to the server (it owns the run dir).
        `start_header`: the first assignment, when it came already (a spare's take-over, ps/spare.py)."""
        header_in = REPLY.empty()
        if start_header is None:
            wait_bounded(self.comm.Irecv(header_in, source=0, tag=TAG_START), self.timeout_s,
                         f"the server's start-up assignment for rank {self.world.rank}")
            start_header = header_in
        start = REPLY.unpack(start_header)
        task, local = Assignment.from_header(start), 0
        self._keep(int(start["merged"]))
        while True:
            local += 1
            maybe_crash(self.config.debug, self.world.rank, local, resumed=self.resumed)
            stats = self._train(task, local)
            header_out = self._push_header(task, stats, local)
            roundtrip = self._exchange(header_out, header_in, local)
            reply = REPLY.unpack(header_in)
            if reply["rejected"]:  # the server dropped this push: restart from the global weights, fresh momentum
                self.optimizer.state.clear()
            self._keep(int(reply["global_commit"]))
            self._send_states(reply)
            self._report(task, stats, local, roundtrip, reply, header_out.nbytes + header_in.nbytes)
            if reply["stop"]:
                return
            if reply["chaos"] > 0:  # the drill's order: die part-way through the next commit's compute
                kill_after(reply["chaos"] * stats.seconds, f"debug.chaos: rank {self.world.rank} SIGKILLs itself")
            task = Assignment.from_header(reply)  # the next stage, batch, share, LR and dropout

    def _keep(self, at: int) -> None:
        """Copy this worker's state after the pull of commit `at` (the start of the next commit's training)."""
        self.kept = [*self.kept[-1:], capture(self.world.rank, at, self.optimizer, self.source,
                                              {GRAD_SCALER: self.precision.state_dict()})]

    def _send_states(self, reply: dict[str, float]) -> None:
        """The states a reply asks for (before the commit's record, so the server has them when it has the
        record): as of `state_at` for a checkpoint, and the last one with the stop reply."""
        wanted = int(reply["state_at"])
        if wanted > 0:
            state = next((k for k in reversed(self.kept) if k.at <= wanted), self.kept[0])
            self.comm.send((wanted, state.to_bytes()), dest=0, tag=TAG_STATE)
        if reply["stop"]:
            self.comm.send((STATE_FINAL, self.kept[-1].to_bytes()), dest=0, tag=TAG_STATE)

    def _exchange(self, header_out: np.ndarray, header_in: np.ndarray, local: int) -> float:
        """Push this commit (with the delta rule, the parameters' change since the last pull) and pull the merged
        model; the round-trip seconds."""
        host = self.flat.to_host()
        params = self.flat.params_numel
        if self.pulled is not None:
            np.subtract(host[:params], self.pulled, out=host[:params])
        roundtrip = push_and_pull(self.comm, host, header_out, header_in, self.timeout_s,
                                  f"the server's reply to commit {local} of rank {self.world.rank}", self.layout)
        self.flat.from_host()
        if self.pulled is not None:
            self.pulled[:] = host[:params]
        return roundtrip

    def _train(self, task: Assignment, local: int) -> StepStats:
        set_lr(self.optimizer, task.lr)
        set_dropout(self.model, task.dropout)
        slow = self.slowdown
        stats = train_steps(self.model, self.optimizer, self.source, task.steps, task.batch, task.resolution,
                            self.device, check_finite=False, precision=self.precision, warm_up=self.warm_up,
                            pacer=slow if slow is not None and slow.active else None)
        d = self.config.debug
        if self.world.rank == d.nan_rank and d.nan_at_commit <= local < d.nan_at_commit + d.nan_commits:
            self.flat.vector[0] = self.flat.vector[-1] = float("nan")  # injected divergence (first and last shard)
            stats.loss_sum = float("nan")
        if slow is not None:  # a stalled worker: a fixed delay before the push
            delayed = slow.delay()
            stats.seconds += delayed
            stats.slowed_s += delayed
        return stats

    def _push_header(self, task: Assignment, stats: StepStats, local: int) -> np.ndarray:
        # One sum tells whether anything is NaN/Inf: the server rejects a push flagged non-finite.
        finite = math.isfinite(stats.loss_sum) and bool(torch.isfinite(self.flat.vector.sum()))
        return PUSH.pack(local_commit=local, samples=stats.samples, steps=stats.steps, batch=task.batch,
                         resolution=task.resolution, loss_sum=stats.loss_sum, correct=stats.correct,
                         compute_s=stats.seconds, finite=float(finite), signal=float(STOP.requested))

    def _report(self, task: Assignment, stats: StepStats, local: int, roundtrip: float, reply: dict[str, float],
                header_bytes: int) -> None:
        held = reply["held_s"]
        record = CommitRecord(
            worker=self.world.rank, group=self.world.role, host=self.host, global_commit=int(reply["global_commit"]),
            local_commit=local, epoch=int(reply["epoch"]), stage=task.stage, resolution=task.resolution,
            batch=task.batch, steps=stats.steps, samples=stats.samples, lr=task.lr,
            train_loss=stats.loss_sum / stats.samples, train_acc=stats.correct / stats.samples,
            compute_s=stats.seconds, exchange_s=max(roundtrip - held, 0.0), wait_s=held,
            commit_s=stats.seconds + roundtrip, time=time.time(), dropout=task.dropout,
            rejected=bool(reply["rejected"]), bytes=2 * self.flat.nbytes + header_bytes, slowed_s=stats.slowed_s,
            replaces=self.replaces)
        self.comm.send(record, dest=0, tag=TAG_RECORD)
        if self.verbose:
            print(f"[rank {record.worker} {record.group}] commit {local} (global {record.global_commit}) stage "
                  f"{task.stage} {task.resolution}px B={task.batch} loss {record.train_loss:.4f} acc "
                  f"{record.train_acc:.4f} compute {stats.seconds:.2f}s exchange {record.exchange_s:.3f}s wait "
                  f"{held:.3f}s", flush=True)
