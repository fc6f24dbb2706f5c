"""The data-parallel baselines without a server: synchronous allreduce SGD and LocalSGD (with SlowMo; method §7).

Every rank is a worker with the large batch B_L. An epoch is the same amount of data as in the
parameter-server modes (each worker trains its share d_L of the training set, round(d_L / B_L) steps), on the
same model, data, schedule, optimizer and LR rules, and the run directory has the same files, so
`hdbl report` compares a baseline with the hybrid method one to one.

- allreduce: gradients are averaged every step, over mpi4py (bucketed, overlapped with backward), through
  Horovod's DistributedOptimizer, or in PyTorch's DistributedDataParallel (`ps.backend`).
- localsgd: each worker takes H local steps, then the models (parameters and BatchNorm statistics) are averaged;
  H follows `local.strategy`, and SlowMo (`local.slowmo_beta`, `local.slowmo_alpha`) can act on the average. A
  round also ends at the end of an epoch, so every epoch ends with one model to evaluate.

Rank 0 owns the run directory and evaluates; the other ranks wait for its verdict (the evaluation time is
counted apart from training time, as in the parameter-server modes).
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from mpi4py import MPI

from hdbl_mpi.baselines.allreduce import (
    HorovodAllreduce,
    Mpi4pyAllreduce,
    TorchDDP,
    average_vector,
    horovod_build,
)
from hdbl_mpi.baselines.localsgd import LocalRounds, round_hook
from hdbl_mpi.baselines.speeds import SpeedWeights
from hdbl_mpi.comm.agree import agree
from hdbl_mpi.comm.cuda_aware import cuda_aware_mpi
from hdbl_mpi.engine import GradientExchange, StepStats, evaluate, train_steps
from hdbl_mpi.errors import HdblError, SetupError
from hdbl_mpi.models import set_dropout
from hdbl_mpi.optim.optimizers import optimizer_for
from hdbl_mpi.optim.schedules import scheduled_lr
from hdbl_mpi.precision import Precision
from hdbl_mpi.rules.backends import BackendChoice, BackendFacts, choose_backend
from hdbl_mpi.rules.epoch_lengths import EpochLengths
from hdbl_mpi.rules.plan import round_half_up
from hdbl_mpi.run import rundir
from hdbl_mpi.run.book import BookPolicy, BookState, EpochBook, RunResult, Stopped
from hdbl_mpi.run.faults import maybe_crash
from hdbl_mpi.run.progress import Progress
from hdbl_mpi.run.rankstate import GRAD_SCALER, RankState, capture, restore
from hdbl_mpi.run.records import CommitRecord, EpochRow, from_mapping
from hdbl_mpi.run.scalars import Scalars
from hdbl_mpi.run.signals import STOP
from hdbl_mpi.run.slow import make_slowdown
from hdbl_mpi.startup import RunSetup

RESUME_POLICY = ("weights, epoch history and the H strategy come from the checkpoint, and each rank's optimizer "
                 "state, random-number generators, data stream (and SlowMo buffer) from its rank file "
                 "(checkpoint-ranks/)")


@dataclass
class PeerState(BookState):
    """A data-parallel run's checkpointed counters besides the epoch book's."""

    epoch: int = 0
    syncs: int = 0  # gradient allreduces (allreduce) or model averagings (localsgd)
    local_steps: dict = field(default_factory=dict)  # the H strategy's state
    h_history: list = field(default_factory=list)  # (epoch, H) each time H changed
    optimizer: dict = field(default_factory=dict)  # rank 0's optimizer state (equal on all ranks in allreduce)
    speed_batches: list = field(default_factory=list)  # ps.speed_weighted: every rank's batch now


def backend_facts(setup: RunSetup) -> BackendFacts:
    """This rank's part of the backend choice (rules/backends.py): its device and GPU sharing, what Horovod
    was built with (asked only where ps.backend may choose it: importing horovod.torch takes seconds), and
    whether torch.distributed has NCCL."""
    import torch.distributed as dist

    cuda = setup.device.type == "cuda"
    mine = setup.ranks[setup.world.rank]
    ps = setup.config.ps
    build = horovod_build() if ps.mode == "allreduce" and ps.backend in ("auto", "horovod") else None
    return BackendFacts(cuda, mine.gpu_sharing, build, cuda and dist.is_available() and dist.is_nccl_available())


def _added(a: StepStats, b: StepStats) -> StepStats:
    return StepStats(a.steps + b.steps, a.samples + b.samples, a.loss_sum + b.loss_sum, a.correct + b.correct,
                     a.seconds + b.seconds, a.slowed_s + b.slowed_s, a.waited_s + b.waited_s)


class PeerTrainer:
    """One rank of a data-parallel run; every rank runs the same loop and meets the others in collectives."""

    def __init__(self, setup: RunSetup, state: PeerState, choice: BackendChoice) -> None:
        backend = choice.name
        self.setup, self.config, self.state, self.backend, self.choice = setup, setup.config, state, backend, choice
        self.comm, self.model, self.flat = setup.world.comm, setup.model, setup.flat
        self.is_root = setup.world.rank == 0
        self.optimizer = optimizer_for(self.model, self.config.train)
        self.precision = Precision(self.config.train.precision, setup.device)
        self.slowdown = make_slowdown(self.config.debug.slow, setup.world.rank, setup.world.rank, setup.t_start,
                                      setup.plans)  # debug.slow: this rank's emulated slowness (run/slow.py)
        self.exchange: Mpi4pyAllreduce | None = None
        self.horovod: HorovodAllreduce | None = None
        self.ddp: TorchDDP | None = None
        self.train_model = self.model  # what the steps run: the model, or DDP's wrapper of it
        self.step_exchange: GradientExchange | None = None  # what completes each step's reduction, and times it
        if backend == "mpi4py":
            self.exchange = Mpi4pyAllreduce(self.model, self.comm, self.config.ps.bucket_mb,
                                            cuda_aware=cuda_aware_mpi())
            self.step_exchange = self.exchange
        elif backend == "horovod":
            self.horovod = HorovodAllreduce(self.comm)
            self.optimizer = self.horovod.wrap(self.model, self.optimizer)
            self.step_exchange = self.horovod.exchange(self.optimizer)
        elif backend == "ddp":
            self.ddp = TorchDDP(self.comm, setup.device, self.config.ps.bucket_mb, self.config.ps.timeout_s or 600.0,
                                choice.process_group)
            self.train_model = self.ddp.wrap(self.model)
            self.step_exchange = self.ddp.exchange(self.optimizer)
        self.speeds = self._speed_weights() if self.config.ps.speed_weighted else None
        epochs = setup.schedule.epochs
        self.rounds = LocalRounds(self.config, epochs, state, self.flat.to_host(), self.comm) \
            if self.config.ps.mode == "localsgd" else None
        self._resume(setup.rank_state)
        self.stopped = False  # on a signal, after a checkpoint at the end of the epoch in progress
        run_dir, n = setup.run_dir, setup.world.size
        progress = Progress(epochs * n, state.epoch * n, EpochLengths.uniform(n, epochs), run_dir / rundir.LOG,
                            interactive=False) \
            if self.is_root else None
        scalars = Scalars(run_dir / rundir.TENSORBOARD) if self.is_root else None
        self.book = EpochBook(state, BookPolicy.from_config(self.config), run_dir, progress, scalars,
                              self.flat.layout())
        # a resume drops the records of epochs after its checkpoint, which it trains again; a new run, any left
        self.commit_log = rundir.CommitLog(run_dir / rundir.COMMITS, keep_up_to=state.epoch * n) \
            if self.is_root else None
        self.host = socket.gethostname()
        self.t_start = time.perf_counter()
        self.t_checkpoint = time.monotonic()

    def _speed_weights(self) -> SpeedWeights:
        """ps.speed_weighted: the first split from the start-up profile's per-rank lines (else even; a resumed
        run's from its checkpoint), then by measured speed."""
        lines = (self.setup.worker_lines or {}).get(self.setup.top)
        n, plan = self.comm.size, self.setup.plans[self.setup.top]
        ordered = [lines[r] for r in range(n)] if lines and set(lines) == set(range(n)) else None
        return SpeedWeights(self.comm, plan.batch_large, self.config.ps.speed_batch_max, ordered,
                            self.state.speed_batches or None)

    def _resume(self, mine: RankState | None) -> None:
        """After the optimizer is built (and wrapped: Horovod's wrapper starts with an empty state): this rank's
        own state, or for a checkpoint without rank files rank 0's optimizer state (equal on all in allreduce)."""
        if mine is not None:
            restore(mine, self.optimizer, self.setup.train_source)
            self.precision.load_state_dict(mine.extra.get(GRAD_SCALER, {}))
            if self.rounds is not None and "slow_buffer" in mine.extra:
                self.rounds.slow_buffer = mine.extra["slow_buffer"].clone()
        elif self.state.optimizer:
            self.optimizer.load_state_dict(self.state.optimizer)

    # -- one epoch -----------------------------------------------------------------------------------------------
    def _epoch(self, epoch: int) -> tuple[EpochRow, float, float]:
        """Train one epoch; its row (before evaluation), the samples of all ranks and this rank's seconds."""
        schedule, stage = self.setup.schedule, self.setup.schedule.at(epoch)
        plan = self.setup.plans[stage.resolution]
        batch = plan.batch_large
        steps = max(1, round_half_up(plan.share("large")[0] / batch))
        set_dropout(self.model, stage.dropout)

        def lr_of_step(i: int) -> float:
            return scheduled_lr(self.config.train, schedule, epoch + i / steps)

        syncs_before = self.state.syncs
        after_step, averaging_s = round_hook(self.rounds, self.flat, self.setup.device, epoch, steps, lr_of_step)
        stats, batch = self._steps(epoch, steps, batch, stage.resolution, lr_of_step, after_step)
        delayed = self.slowdown.delay()  # a stalled rank: a fixed delay before the epoch's synchronisation
        stats.seconds += delayed
        stats.slowed_s += delayed
        inside, outside = averaging_s[0], 0.0  # LocalSGD's averaging happens between steps, inside stats.seconds
        if self.config.ps.mode == "allreduce":
            self.state.syncs += steps
            inside = stats.waited_s  # the steps' waits for the other ranks' gradients
            start = time.perf_counter()
            average_vector(self.comm, self.flat.to_host())  # the BatchNorm statistics (weights are equal already)
            self.flat.from_host()
            outside = time.perf_counter() - start
        totals = np.array([stats.loss_sum, stats.correct, stats.samples], dtype=np.float64)
        self.comm.Allreduce(MPI.IN_PLACE, totals, op=MPI.SUM)
        self._log_commit(CommitRecord(
            worker=self.setup.world.rank, group="peer", host=self.host, global_commit=(epoch + 1) * self.comm.size,
            local_commit=epoch + 1, epoch=epoch + 1, stage=schedule.index_at(epoch), resolution=stage.resolution,
            batch=batch, steps=stats.steps, samples=stats.samples, lr=lr_of_step(0),
            train_loss=stats.loss_sum / stats.samples, train_acc=stats.correct / stats.samples,
            compute_s=stats.seconds - inside, exchange_s=inside + outside, wait_s=0.0,
            commit_s=stats.seconds + outside, time=time.time(), dropout=stage.dropout, slowed_s=stats.slowed_s))
        row = EpochRow(epoch=epoch + 1, stage=schedule.index_at(epoch), resolution=stage.resolution,
                       lr=lr_of_step(0), train_loss=float(totals[0] / totals[2]),
                       train_acc=float(totals[1] / totals[2]), commits=self.state.syncs - syncs_before)
        return row, float(totals[2]), stats.seconds

    def _steps(self, epoch: int, steps: int, batch: int, resolution: int, lr_of_step: Any,
               after_step: Any) -> tuple[StepStats, int]:
        """The epoch's steps and this rank's batch; with ps.speed_weighted in parts of ps.rebalance_steps (the
        whole epoch when 0), each at this rank's share of the step and followed by a new split by speed."""
        slow = self.slowdown
        common = dict(exchange=self.step_exchange, after_step=after_step, precision=self.precision,
                      warm_up=self.setup.warm_up, pacer=slow if slow.active else None)
        if self.speeds is None:
            return train_steps(self.train_model, self.optimizer, self.setup.train_source, steps, batch, resolution,
                               self.setup.device, lr_of_step=lr_of_step, **common), batch
        every = self.config.ps.rebalance_steps or steps
        total, done = None, 0
        while done < steps:
            part, mine = min(every, steps - done), self.speeds.mine

            def lr_here(i: int, offset: int = done) -> float:
                return lr_of_step(offset + i)

            stats = train_steps(self.train_model, self.optimizer, self.setup.train_source, part, mine, resolution,
                                self.setup.device, lr_of_step=lr_here, loss_scale=self.speeds.loss_scale, **common)
            done += part
            self.speeds.rebalance(stats.own_s, stats.samples, epoch + done / steps)
            total = stats if total is None else _added(total, stats)
        assert total is not None
        self.state.speed_batches = list(self.speeds.batches)
        return total, mine

    def _log_commit(self, record: CommitRecord) -> None:
        gathered = self.comm.gather(record, root=0)
        if self.commit_log is not None and gathered is not None:
            for r in gathered:
                self.commit_log.write(r)

    def _evaluate(self, resolution: int) -> tuple[float, float, float]:
        """Rank 0 evaluates the (identical) model; everyone gets (loss, acc, seconds)."""
        result = None
        if self.is_root:
            start = time.perf_counter()
            loss, acc = evaluate(self.model, self.setup.test_source, resolution, self.config.eval.batch_size,
                                 self.setup.device)
            result = (loss, acc, time.perf_counter() - start)
        return self.comm.bcast(result, root=0)

    # -- the run -------------------------------------------------------------------------------------------------
    def run(self) -> None:
        st, epochs, policy = self.state, self.setup.schedule.epochs, self.book.policy
        for epoch in range(st.epoch, epochs):
            maybe_crash(self.setup.config.debug, self.setup.world.rank, epoch + 1, "epoch", self.setup.resumed)
            t0 = time.perf_counter()
            row, samples, seconds = self._epoch(epoch)
            st.train_time_s += time.perf_counter() - t0
            st.epoch = epoch + 1
            row.wall_s, row.train_time_s = self._wall(), st.train_time_s
            self.book.add(row, samples / max(seconds, 1e-9))
            stop = False
            if policy.eval_due(epoch + 1, epochs):
                stop = self.book.evaluated(epoch + 1, *self._evaluate(row.resolution)) and epoch + 1 < epochs
            else:
                self.book.announce(row)
            self.book.write_epochs()
            if stop:
                st.early_stopped_at = epoch + 1
                self.book.line(f"early stop after epoch {epoch + 1}: {self.book.stop_reason()}")
            signalled, minutes_due = self._agree_flags()
            checkpoint = stop or policy.checkpoint_due(epoch + 1, epoch + 1 == epochs) or minutes_due
            if checkpoint or (signalled and epoch + 1 < epochs):
                self._checkpoint()
            if signalled and not stop and epoch + 1 < epochs:
                self.book.line(f"{STOP.name() or 'a signal'} on a rank: stopped after epoch {epoch + 1}")
                self.stopped = True
                return
            if stop:
                break
        loss, acc, seconds = self._evaluate(self.setup.top)
        self.book.final(loss, acc, self.setup.top, seconds)

    def _agree_flags(self) -> tuple[bool, bool]:
        """At each epoch's end, agreed by all: whether any rank got SIGTERM/SIGUSR1 (run/signals.py), and whether
        run.checkpoint_minutes have passed since the last checkpoint (rank 0's clock). Data-parallel ranks can
        only stop and checkpoint between epochs."""
        minutes = self.config.run.checkpoint_minutes
        due = self.is_root and minutes > 0 and time.monotonic() - self.t_checkpoint >= 60.0 * minutes
        flags = np.array([1.0 if STOP.requested else 0.0, 1.0 if due else 0.0])
        self.comm.Allreduce(MPI.IN_PLACE, flags, op=MPI.MAX)
        return bool(flags[0]), bool(flags[1])

    def _wall(self) -> float:
        return self.state.wall_time_s + time.perf_counter() - self.t_start

    def _checkpoint(self) -> None:
        """The weights and counters, and every rank's own state (gathered to rank 0, which writes them all)."""
        st = self.state
        self.t_checkpoint = time.monotonic()
        extra: dict[str, Any] = {GRAD_SCALER: self.precision.state_dict()}
        if self.rounds is not None:
            st.local_steps = self.rounds.strategy.state_dict()
            extra["slow_buffer"] = self.rounds.slow_buffer
        mine = capture(self.setup.world.rank, st.epoch, self.optimizer, self.setup.train_source, extra)
        states = self.comm.gather(mine.to_bytes(), root=0)
        if states is not None:  # rank 0
            st.optimizer = {}  # in the rank files now
            self.book.save(self.flat.snapshot(), replace(st, wall_time_s=self._wall()).to_dict(),
                           {r: RankState.from_bytes(b) for r, b in enumerate(states)}, st.epoch)

    def figures(self) -> dict[str, Any]:
        """What summary.json says of a data-parallel run besides the shared outcome and facts."""
        st, c = self.state, self.config
        path = self.exchange.path if self.exchange is not None else None
        return {
            "backend": self.backend,
            "backend_reason": self.choice.reason,
            "gradient_path": None if path is None else path.to_dict(),
            "horovod": None if self.horovod is None else {"version": self.horovod.version,
                                                          **self.horovod.controllers()},
            "syncs": st.syncs,
            "ddp": None if self.ddp is None else {"process_group": self.ddp.backend, "rendezvous": self.ddp.address,
                                                  "bucket_mb": self.ddp.bucket_mb, "broadcast_buffers": False},
            "bytes_per_sync": self.exchange.nbytes if self.exchange is not None else
            self.flat.params_numel * 4 if self.config.ps.mode == "allreduce" else self.flat.nbytes,
            "local_steps": None if c.ps.mode != "localsgd" else {
                "strategy": c.local.strategy, "h_changes": st.h_history, "slowmo": c.local.slowmo,
                "slowmo_beta": c.local.slowmo_beta, "slowmo_alpha": c.local.slowmo_alpha},
            "optimizer": c.train.optimizer,
            "speed_weighted": None if self.speeds is None else self.speeds.summary(),
        }

    def close(self) -> None:
        self.book.close()
        if self.ddp is not None:
            self.ddp.close()
        if self.commit_log is not None:
            self.commit_log.close()


def run_data_parallel(setup: RunSetup) -> RunResult | Stopped | None:
    """Run the data-parallel loop on every rank; rank 0 returns the run's result."""
    comm, config = setup.world.comm, setup.config
    failure, facts = None, None
    try:
        facts = backend_facts(setup)
    except Exception as err:
        failure = err
    gathered = agree(comm, failure, facts)  # every rank applies the rule to the same facts, so all choose alike
    try:
        choice = choose_backend(config.ps.mode, config.ps.backend, gathered)
    except HdblError as err:  # the same error on every rank: each exits 2, as with any set-up error
        raise SetupError(str(err)) from None
    restored = comm.bcast(setup.restored, root=0)  # every rank continues from rank 0's checkpoint state
    state = from_mapping(PeerState, restored) if restored else PeerState()
    trainer = PeerTrainer(setup, state, choice)
    trainer.book.line(_start_line(setup, choice))
    try:
        trainer.run()
    finally:
        trainer.close()
    if trainer.stopped:
        return Stopped(f"the end of epoch {state.epoch}", setup.run_dir)
    if comm.rank != 0:
        return None
    wall = state.wall_time_s + time.perf_counter() - setup.t_start
    outcome = trainer.book.outcome(config.ps.mode, state.train_time_s, wall, state.epoch, RESUME_POLICY)
    return RunResult(outcome, trainer.figures(), f"{state.syncs} synchronisations")


def _start_line(setup: RunSetup, choice: BackendChoice) -> str:
    config, schedule, plan = setup.config, setup.schedule, setup.plans[setup.top]
    how = {"allreduce": f"gradients averaged every step over {choice.name}: {choice.reason}",
           "localsgd": f"models averaged every H local steps (local.strategy={config.local.strategy})"}
    return (f"hdbl train: {setup.world.size} ranks, mode {config.ps.mode} ({how[config.ps.mode]}), no server, "
            f"D={setup.dataset_size}, d={plan.d_large} B={plan.batch_large} per worker, {schedule.epochs} epochs at "
            f"{'/'.join(map(str, schedule.resolutions))} px, optimizer {config.train.optimizer}, run dir "
            f"{setup.run_dir}")
