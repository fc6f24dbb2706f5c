"""A worker rank's commit loop (SPEC §4).

Each commit: train round(d/B) steps on batches drawn from a fresh random permutation of the whole training
set, push the full weights, receive the merged weights and the control state (epoch, LR, stop). The optimizer
(momentum buffers) lives across commits: only the weights are replaced by the merged ones.
"""

from __future__ import annotations

import math
import socket
import time

import torch
from mpi4py import MPI
from torch import nn

from hdbl_mpi.comm.wire import (
    PUSH, REPLY, TAG_PUSH_HEADER, TAG_PUSH_WEIGHTS, TAG_RECORD, TAG_REPLY_HEADER, TAG_REPLY_WEIGHTS,
    FlatState, wait_bounded,
)
from hdbl_mpi.comm.world import World
from hdbl_mpi.config import Config
from hdbl_mpi.engine import set_lr, train_steps
from hdbl_mpi.models import set_dropout
from hdbl_mpi.optim import optimizer_for, scheduled_lr
from hdbl_mpi.plan import Plan, lr_scale, round_half_up
from hdbl_mpi.ps.shards import Layout
from hdbl_mpi.run.faults import maybe_crash
from hdbl_mpi.schedule import Schedule


def push_and_pull(comm, flat: FlatState, header_out, header_in, timeout_s: float, what: str,
                  layout: Layout | None = None) -> float:
    """One commit exchange: push the header to rank 0 and each shard of the weights to its server (all shards
    at once), wait (bounded) for rank 0's reply header, then receive every merged shard straight into the
    model's vector. Returns the round-trip seconds."""
    start = time.perf_counter()
    host = flat.to_host()
    parts = layout.parts if layout is not None else ((0, 0, flat.numel),)
    comm.Send(header_out, dest=0, tag=TAG_PUSH_HEADER)
    if len(parts) == 1:
        comm.Send(host, dest=0, tag=TAG_PUSH_WEIGHTS)
        wait_bounded(comm.Irecv(header_in, source=0, tag=TAG_REPLY_HEADER), timeout_s, what)
        comm.Recv(host, source=0, tag=TAG_REPLY_WEIGHTS)
    else:
        MPI.Request.Waitall([comm.Isend(host[s:e], dest=r, tag=TAG_PUSH_WEIGHTS) for r, s, e in parts])
        wait_bounded(comm.Irecv(header_in, source=0, tag=TAG_REPLY_HEADER), timeout_s, what)
        MPI.Request.Waitall([comm.Irecv(host[s:e], source=r, tag=TAG_REPLY_WEIGHTS) for r, s, e in parts])
    flat.from_host()
    return time.perf_counter() - start


def run_worker(
    world: World,
    config: Config,
    schedule: Schedule,
    plans: dict[int, Plan],
    model: nn.Module,
    flat: FlatState,
    source,
    device: torch.device,
    control: dict,
    timeout_s: float,
    verbose: bool,
    layout: Layout | None = None,
) -> None:
    """Commit until the server says stop; every commit's record goes to the server (which owns the run dir).

    Each reply carries the stage of the next commit (derived by the server from the global commit count), so
    every worker switches resolution, batch size, dropout and LR together at the same global epoch."""
    comm = world.comm
    group = world.role
    stage_index = schedule.index_at(control["epoch"])
    stage = schedule.stages[stage_index]
    resolution, dropout = stage.resolution, stage.dropout
    lr = scheduled_lr(config.train, schedule, control["epoch"])
    batch = control["batch_small"][str(resolution)] if group == "small" else plans[resolution].batch_large
    optimizer = optimizer_for(model, config.train)
    header_in = REPLY.empty()
    local = 0
    share_override = 0  # samples per commit when the server re-planned (survivors after a lost worker)
    host = socket.gethostname()
    while True:
        local += 1
        maybe_crash(config.debug, world.rank, local)
        share = share_override or plans[resolution].share(group)[0]
        steps = max(1, round_half_up(share / batch))
        scaled_lr = lr * lr_scale(config.train.lr_scaling, batch, plans[resolution].batch_large)
        set_lr(optimizer, scaled_lr)
        set_dropout(model, dropout)
        stats = train_steps(model, optimizer, source, steps, batch, resolution, device, check_finite=False)
        d = config.debug
        if world.rank == d.nan_rank and d.nan_at_commit <= local < d.nan_at_commit + d.nan_commits:
            flat.vector[0] = flat.vector[-1] = float("nan")  # injected divergence (first and last shard)
            stats.loss_sum = float("nan")
        # One sum tells whether anything is NaN/Inf: the server rejects a push flagged non-finite.
        finite = math.isfinite(stats.loss_sum) and bool(torch.isfinite(flat.vector.sum()))
        if world.rank == config.debug.slow_rank and config.debug.slow_seconds > 0:
            time.sleep(config.debug.slow_seconds)
        header_out = PUSH.pack(local_commit=local, samples=stats.samples, steps=stats.steps, batch=batch,
                               resolution=resolution, loss_sum=stats.loss_sum, correct=stats.correct,
                               compute_s=stats.seconds, finite=float(finite))
        roundtrip = push_and_pull(comm, flat, header_out, header_in, timeout_s,
                                  f"the server's reply to commit {local} of rank {world.rank}", layout)
        reply = REPLY.unpack(header_in)
        held = reply["held_s"]
        if reply["rejected"]:  # the server dropped this push: restart from the global weights, with fresh momentum
            optimizer.state.clear()
        record = {
            "worker": world.rank,
            "group": group,
            "host": host,
            "global_commit": int(reply["global_commit"]),
            "local_commit": local,
            "epoch": int(reply["epoch"]),
            "stage": stage_index,
            "resolution": resolution,
            "batch": batch,
            "steps": stats.steps,
            "samples": stats.samples,
            "lr": scaled_lr,
            "dropout": dropout,
            "train_loss": stats.loss_sum / stats.samples,
            "train_acc": stats.correct / stats.samples,
            "compute_s": stats.seconds,
            "exchange_s": max(roundtrip - held, 0.0),
            "wait_s": held,
            "commit_s": stats.seconds + roundtrip,
            "rejected": bool(reply["rejected"]),
            "bytes": 2 * flat.nbytes + header_out.nbytes + header_in.nbytes,
            "time": time.time(),
        }
        comm.send(record, dest=0, tag=TAG_RECORD)
        if verbose:
            print(
                f"[rank {world.rank} {group}] commit {local} (global {record['global_commit']}) stage {stage_index} "
                f"{resolution}px B={batch} loss {record['train_loss']:.4f} acc {record['train_acc']:.4f} "
                f"compute {stats.seconds:.2f}s exchange {record['exchange_s']:.3f}s wait {held:.3f}s",
                flush=True,
            )
        if reply["stop"]:
            return
        # The next commit's setting, as the server decided it (stage switch and/or re-planned B_S).
        stage_index, resolution = int(reply["stage"]), int(reply["resolution"])
        batch, lr, dropout = int(reply["batch"]), reply["lr"], reply["dropout"]
        share_override = int(reply["share"])
