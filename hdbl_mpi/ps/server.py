"""The server rank's message loop: serve commits in arrival order, merge them, reply (method §2, §3).

The loop probes for any message (a push header or a worker's commit record), handles it, and otherwise sleeps
briefly: it never blocks on one worker, so in ASP a slow worker slows nobody else. Weights arrive in a
pre-allocated receive vector and are merged into the global vector W with one fused pass; the reply goes out
straight from W. The rest are parts with one concern each:

- ``rules/policy.py``: when a push merges and when a reply is released (ASP, BSP, SSP);
- ``ps/assign.py``: what each worker trains next (the one source of its plan);
- ``ps/epochs.py`` with ``run/book.py``: epochs, evaluations, checkpoints, early stopping;
- ``ps/failures.py``: non-finite pushes, stalled and lost workers;
- ``ps/shards.py``: the merge arithmetic, here and on the shard servers.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from mpi4py import MPI

from hdbl_mpi.comm.layout import Layout
from hdbl_mpi.comm.wire import (
    PUSH,
    TAG_PUSH_HEADER,
    TAG_PUSH_WEIGHTS,
    TAG_RECORD,
    TAG_REPLY_HEADER,
    TAG_REPLY_WEIGHTS,
    TAG_STATE,
    Backoff,
    TimeoutWaiting,
)
from hdbl_mpi.comm.world import World
from hdbl_mpi.optim.schedules import scheduled_lr
from hdbl_mpi.ps.assign import Assignments
from hdbl_mpi.ps.balance import balance_report, describe_replan, group_times
from hdbl_mpi.ps.chaos import Chaos
from hdbl_mpi.ps.epochs import ServerEpochs
from hdbl_mpi.ps.evaluator import FINAL, Evaluator
from hdbl_mpi.ps.failures import Failures, is_process_failure
from hdbl_mpi.ps.shards import OP_REPLY, ShardFanout, ShardMath
from hdbl_mpi.ps.staleness import PushClock
from hdbl_mpi.ps.state import Roster, ServerState
from hdbl_mpi.rules.plan import Plan
from hdbl_mpi.rules.policy import make_policy
from hdbl_mpi.rules.schedule import Schedule
from hdbl_mpi.run import rundir
from hdbl_mpi.run.book import BookPolicy, EpochBook
from hdbl_mpi.run.faults import maybe_crash
from hdbl_mpi.run.progress import Progress
from hdbl_mpi.run.rankstate import RankState
from hdbl_mpi.run.records import CommitRecord
from hdbl_mpi.run.scalars import Scalars
from hdbl_mpi.run.signals import STOP
from hdbl_mpi.run.trace import write_trace
from hdbl_mpi.schema import Config


class Server:
    def __init__(self, world: World, config: Config, schedule: Schedule, plans: dict[int, Plan],
                 weights: torch.Tensor, run_dir: Path, evaluator: Evaluator, state: ServerState, timeout_s: float,
                 layout: Layout | None = None, assign: Assignments | None = None,
                 vector_layout: dict[str, list] | None = None) -> None:
        self.world, self.comm, self.config, self.schedule = world, world.comm, config, schedule
        self.run_dir, self.state, self.timeout_s = run_dir, state, timeout_s
        self.n = config.dual.workers
        self.W = weights  # the global model, float32 on the CPU; with sharded servers only shard 0 stays current
        self.layout = layout or Layout(((0, 0, weights.numel()),))
        start, end = self.layout.own
        self.own = ShardMath(weights[start:end], self.layout.split(start), config.ps.outer_momentum,
                             config.ps.outer_delayed)
        self.own_np = weights.numpy()[start:end]
        self.fanout = ShardFanout(self.comm, self.layout, weights.numpy())
        self.roster = Roster(list(range(1, self.n + 1)))
        for w in self.roster.workers:
            state.commits_by_worker.setdefault(str(w), 0)
        self.policy = make_policy(config.ps.mode, config.ps.staleness)
        self.assign = assign or Assignments(config, schedule, plans, state, self.roster.workers)
        self.lengths = self.assign.lengths  # the commits of each epoch (n*k; k perhaps one per resolution)
        self.clock = PushClock(config, self.roster.workers)
        spares = range(world.size - config.ps.spares, world.size)  # the last ranks (comm/world.py)
        self.failures = Failures(self, config.ps.max_nonfinite, config.ps.fault_tolerance == "ulfm", list(spares))
        self.chaos = Chaos(config.debug.chaos, self.lengths.total, state.merged, state.chaos) \
            if config.debug.chaos.kills else None
        if self.failures.ulfm:  # failures come back as exceptions (mpi4py raises on error codes) instead of aborting
            self.comm.Set_errhandler(MPI.ERRORS_RETURN)
        self.release_due = False
        self.records: list[CommitRecord] = []  # this run segment's commit records
        self.records_seen = {w: 0 for w in self.roster.workers}
        self.records_before = {w: state.commits(w) for w in self.roster.workers}  # commits of earlier segments
        self.awaiting: dict[int, int] = {}  # global commit -> rank: replied to, its record not yet in
        self.commit_log = rundir.CommitLog(run_dir / rundir.COMMITS, keep_up_to=state.merged)
        self.progress = Progress(self.lengths.total, state.merged, self.lengths, run_dir / rundir.LOG)
        scalars = Scalars(run_dir / rundir.TENSORBOARD)
        self.line(f"TensorBoard: {scalars.status}")
        book = EpochBook(state, BookPolicy.from_config(config), run_dir, self.progress, scalars, vector_layout)
        self.epochs = ServerEpochs(self, book, evaluator, lambda e: scheduled_lr(config.train, schedule, e),
                                   config.run.checkpoint_minutes)
        self.shard_servers: dict[str, dict] = {}
        self.t_start = time.perf_counter()
        self.t_last_merge = self.t_start

    def line(self, text: str) -> None:
        self.progress.line(text)

    def elapsed_train(self) -> float:
        return self.state.train_time_s + (self.t_last_merge - self.t_start)

    # -- the loop ------------------------------------------------------------------------------------------------
    def serve(self) -> None:
        """Serve until every worker has been told to stop and has sent its last commit record."""
        status = MPI.Status()
        # Idle between commits: sleep in short steps (<= 0.25 ms) so a push is noticed quickly while the
        # server, which often shares a host with workers, uses next to no CPU.
        last_heard, backoff = time.monotonic(), Backoff(spin_s=2e-3, cap_s=2.5e-4)
        while not self._finished():
            try:
                if STOP.requested:
                    self.interrupt(f"{STOP.name()} on the server")
                if self.release_due:  # after a loss: the replies a failed send interrupted
                    self.release_due = False
                    self.release()
                message = self.comm.Iprobe(source=MPI.ANY_SOURCE, tag=MPI.ANY_TAG, status=status)
                if message:
                    self._handle(status.Get_source(), status.Get_tag())
            except MPI.Exception as err:
                if not self.failures.ulfm or not is_process_failure(err):
                    raise
                self.failures.lose(err)
                last_heard = time.monotonic()
                continue
            if message:
                last_heard = time.monotonic()
                backoff.reset()
                continue
            self._idle(last_heard)
            backoff.pause()
        self.epochs.save_when_recorded(force=True)
        self._wind_up()

    def _wind_up(self) -> None:
        """The end of serving: the shard servers told, the commit log closed, the trace written, evaluations in."""
        self.shard_servers = self.fanout.finish()
        self.failures.dismiss_spares()
        self.commit_log.close()
        write_trace(self.run_dir / rundir.TRACE, rundir.read_commits(self.run_dir / rundir.COMMITS))
        self.epochs.collect(self.epochs.evaluator.finish(self.timeout_s))

    def end_without_workers(self) -> None:
        """Every worker lost (ULFM), the checkpoint written: evaluate the weights merged so far as the final
        model, so that the summary says what they are worth, and wind up as at a normal end."""
        self.epochs.evaluator.submit(FINAL, self.snapshot(), self.schedule.resolutions[-1])
        self._wind_up()

    def _handle(self, src: int, tag: int) -> None:
        if tag == TAG_PUSH_HEADER:
            self._on_push(src)
        elif tag == TAG_RECORD:
            self._on_record(src)
        elif tag == TAG_STATE:
            requested, state = self.comm.recv(source=src, tag=TAG_STATE)
            self.epochs.states.received(src, requested, RankState.from_bytes(state))
            self.epochs.save_when_recorded()
        else:
            raise RuntimeError(f"server got an unexpected message (tag {tag}) from rank {src}")

    def _idle(self, last_heard: float) -> None:
        """Between messages: finished evaluations, stalled workers (ASP), and the overall timeout."""
        self.epochs.collect(self.epochs.evaluator.results())
        if self.policy.goes_on_without_stalled:
            self.failures.check_stalled()
        if time.monotonic() - last_heard > self.timeout_s:
            raise TimeoutWaiting(
                f"no message from any worker for {self.timeout_s:.0f} s; still training: ranks "
                f"{sorted(self.roster.training)}, held: ranks {sorted(self.roster.pending)}. A worker is stalled or "
                "gone; if commits are this slow legitimately, raise ps.timeout_s."
            )

    def _finished(self) -> bool:
        return self.roster.done() and all(self._records_in(w) for w in self.roster.alive())

    def _records_in(self, rank: int) -> bool:
        """Whether every commit `rank` made in this serve() has its record here."""
        return self.records_seen[rank] == self.state.commits(rank) - self.records_before[rank]

    def served(self, rank: int) -> bool:
        """Whether `rank` was told to stop and its last record (sent after its final state) is in: it is done."""
        return rank in self.roster.stopped and self._records_in(rank)

    # -- messages ------------------------------------------------------------------------------------------------
    def _on_push(self, src: int) -> None:
        header = PUSH.empty()
        self.comm.Recv(header, source=src, tag=TAG_PUSH_HEADER)
        info = PUSH.unpack(header)
        bad = self.failures.check_push(src, info)
        update = self.policy.on_push(bad, self.assign.factor(src), self.assign.updates[src])
        training = set(self.roster.active()) - self.roster.lost - self.roster.stalled
        update, momentum, staleness = self.clock.push(src, update, len(training))
        self.fanout.tell(update.op, src, update.value, update.value2)  # shard servers take their slices meanwhile
        self.comm.Recv(self.own.recv_np, source=src, tag=TAG_PUSH_WEIGHTS)
        arrived = time.perf_counter()
        self.own.apply(update)
        self.failures.came_back(src)
        self._count(src, info, bad)
        self.clock.by_commit[self.state.merged] = staleness
        self.roster.hold(src, self.state.merged, arrived)
        end = self.policy.round_end(len(self.roster.pending), len(self.roster.active())) or momentum
        if end is not None:
            self.fanout.tell(end.op, value=end.value)
            self.own.apply(end)
            self.clock.round_end(end)
        self.epochs.close()
        if info["signal"]:
            self.interrupt(f"rank {src} was signalled")
        self._checkpoint_between_epochs()
        self.release()

    def _checkpoint_between_epochs(self) -> None:
        """The checkpoint of a run stopped on a signal, once its last commit is merged; and those of
        run.checkpoint_minutes (never inside a BSP round: its partial sum is not in W)."""
        e, merged = self.epochs, self.state.merged
        if e.pending is not None or e.saved_at == merged or not self.policy.between_rounds():
            return
        if e.interrupted and merged == e.total:
            e.checkpoint_now()
        elif e.minutes_due():
            self.line(f"checkpoint at commit {merged} (run.checkpoint_minutes={self.config.run.checkpoint_minutes:g})")
            e.checkpoint_now()

    def interrupt(self, why: str) -> None:
        """Stop the run cleanly: the commits in flight are merged, then a checkpoint, then every worker stops."""
        e = self.epochs
        end = self.state.merged + len(self.roster.training)
        if e.interrupted or end >= e.total:  # already stopping, or the run ends with those commits anyway
            return
        e.stop_at(end)
        self.line(f"{why}: stopping after the {len(self.roster.training)} commit(s) in flight (at commit {end}), "
                  "then a checkpoint")
        self._checkpoint_between_epochs()
        self.release()

    def _count(self, src: int, info: dict[str, float], bad: bool) -> None:
        """The counters of one merged (or rejected) commit; a rejected one still counts: its data was used up."""
        st = self.state
        st.merged += 1
        maybe_crash(self.config.debug, 0, st.merged, "merged commit", resumed=bool(st.restarts))
        self.t_last_merge = time.perf_counter()
        st.commits_by_worker[str(src)] += 1
        group = self.assign.group(src)
        if not bad:
            st.samples_by_group[group] += int(info["samples"])
            st.epoch_loss_sum += info["loss_sum"]
            st.epoch_correct += info["correct"]
            st.epoch_samples += info["samples"]
        self.progress.commit(st.merged, int(info["samples"]))
        change = self.assign.observe(src, info, st.merged)
        if change is not None:
            self.line(describe_replan(change, self.config.dual.replan_threshold))
        self.failures.first_commit(src)
        if self.chaos is not None:
            order = self.chaos.observe(st.merged, [w for w in self.roster.active() if w not in self.roster.lost])
            if order:
                self.line(order)

    def _on_record(self, src: int) -> None:
        record: CommitRecord = self.comm.recv(source=src, tag=TAG_RECORD)
        record.staleness = self.clock.by_commit.pop(record.global_commit, None)
        self.records_seen[src] += 1
        self.records.append(record)
        self.commit_log.write(record)
        self.awaiting.pop(record.global_commit, None)
        self.epochs.save_when_recorded()

    def recorded_through(self, commit: int) -> bool:
        """Whether every commit up to `commit` has its record in commits.jsonl: none is held for its reply or
        replied to without its record yet (a lost worker's record never comes)."""
        return all(c > commit for c, _ in self.roster.pending.values()) and all(
            c > commit or rank in self.roster.lost for c, rank in self.awaiting.items())

    # -- replies -------------------------------------------------------------------------------------------------
    def release(self) -> None:
        """Reply to every held worker the policy lets go on (fewest commits first)."""
        for w in sorted(self.roster.pending, key=self.state.commits):
            stop = self.state.merged + len(self.roster.training) >= self.epochs.total
            if self.failures.holds(stop):
                continue
            slowest = min(self.state.commits(v) for v in self.roster.active())
            if self.policy.may_reply(self.state.commits(w), slowest, stop):
                self._reply(w, stop)

    def _reply(self, w: int, stop: bool) -> None:
        global_id, arrived = self.roster.pending.pop(w)
        st = self.state
        header = self.assign.next(w).header(
            global_commit=global_id, epoch=self.lengths.done(st.merged), stop=float(stop), merged=st.merged,
            held_s=time.perf_counter() - arrived, rejected=float(self.failures.was_rejected(w)),
            state_at=self.epochs.states.ask(w), chaos=self.chaos.order(w) if self.chaos is not None else 0.0)
        self.comm.Send(header, dest=w, tag=TAG_REPLY_HEADER)
        self.awaiting[global_id] = w
        self.clock.reply(w)
        self.fanout.tell(OP_REPLY, w)
        self.comm.Send(self.own_np, dest=w, tag=TAG_REPLY_WEIGHTS)
        if stop:
            self.roster.stopped.add(w)
        else:
            self.roster.start(w)

    # -- spares (ps.spares) ---------------------------------------------------------------------------------------
    def join(self, rank: int) -> None:
        """A spare that took a lost worker's role is a worker from now on: training its first commit."""
        self.roster.workers.append(rank)
        self.roster.start(rank)
        self.state.commits_by_worker.setdefault(str(rank), 0)
        self.records_seen[rank], self.records_before[rank] = 0, self.state.commits(rank)
        self.clock.join(rank)
        self.failures.streak[rank] = 0

    # -- checkpoints and the summary -----------------------------------------------------------------------------
    def training_workers(self) -> list[int]:
        """The workers whose state a checkpoint keeps: not lost (ULFM), not given up on (stalled)."""
        return [w for w in self.roster.alive() if w not in self.roster.stalled]

    def save_now(self) -> None:
        """A checkpoint of the weights and counters at this commit, at once (no worker is left to wait for)."""
        self.epochs.book.save(self.snapshot(), self.checkpoint_state())

    def checkpointed(self, at: int, without: list[int]) -> None:
        if without:
            self.line(f"checkpoint at commit {at} without the state of rank(s) {without} (lost or stalled): on "
                      "resume they start with fresh momentum and reseeded random numbers")

    def snapshot(self) -> torch.Tensor:
        """A copy of the whole global vector (gathered from the shard servers first)."""
        self.fanout.gather()
        return self.W.clone()

    def checkpoint_state(self) -> dict[str, Any]:
        now = time.perf_counter()
        state = replace(self.state, train_time_s=self.elapsed_train(),
                        wall_time_s=self.state.wall_time_s + now - self.t_start).to_dict()
        if self.own.velocity is not None and len(self.layout.parts) == 1:  # the delta rule's outer momentum
            state["outer_velocity"] = self.own.velocity.clone()
        return state

    def mode_figures(self) -> dict[str, Any]:
        """What summary.json says of a parameter-server run besides the shared outcome and facts."""
        st, plans = self.state, self.assign.plans
        return {
            "commits_total": st.merged,
            "commits_by_worker": dict(st.commits_by_worker),
            "samples_by_group": dict(st.samples_by_group),
            "group_commit_times": group_times(self.records),
            "balance": [balance_report(plans[r], self.records, r, self.assign.ks[r]) for r in sorted(plans)],
            "commits_per_epoch": self.config.dual.commits_per_epoch,
            "exchange_share": _share(self.records),
            "replans": list(st.replans),
            "worker_plan": {str(r): p.to_dict() for r, p in self.assign.shares.items()}
            if self.assign.shares is not None else None,
            "nonfinite_rejected": dict(st.nonfinite_rejected),
            "stalled_workers": sorted(self.roster.stalled),
            "missing_commits": st.missing_commits,
            "lost_workers": list(st.lost_workers),
            "replacements": list(st.replacements),
            "workers_at_end": len(self.roster.alive()),
            "spares": {"started": self.config.ps.spares, "idle_at_end": len(self.failures.dismissed)},
            "chaos": list(st.chaos) if self.chaos is not None else None,
            "batch_small_final": st.batch_small,
            "merge": self.config.ps.merge,
            "outer": {"lr": self.assign.outer_lr, "momentum": self.config.ps.outer_momentum,
                      "delayed": self.config.ps.outer_delayed} if self.config.ps.merge == "delta" else None,
            "staleness": self.clock.summary(),
            "servers": len(self.layout.parts),
            "shards": [{"rank": r, "start": s, "end": e} for r, s, e in self.layout.parts],
            "shard_servers": self.shard_servers,  # each shard server's pushes, replies, gathers and busy seconds
        }

    def close(self) -> None:
        self.epochs.book.close()


def _share(records: list[CommitRecord]) -> float | None:
    """The commits' exchange (push and merged reply, the wait for the server left out) over their whole time."""
    total = sum(r.commit_s for r in records)
    return sum(r.exchange_s for r in records) / total if total > 0 else None
