"""The server's epochs: close one every n*k merged commits (n workers, k = dual.commits_per_epoch, perhaps one per
resolution: rules/epoch_lengths.py), evaluate in the background, checkpoint (with every worker's own state, see
:class:`WorkerStates`), stop early or on a signal.

An epoch is n*k commits counted at the server (method §5). Its row goes into the epoch book (run/book.py, shared
with the data-parallel trainers); evaluations run on a snapshot in the :class:`~hdbl_mpi.ps.evaluator.Evaluator`
thread and their results come back while training goes on, so early stopping ends the run at the first epoch
boundary that covers every commit already under way.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from hdbl_mpi.ps.evaluator import FINAL, EvalResult, Evaluator
from hdbl_mpi.run.book import EpochBook
from hdbl_mpi.run.rankstate import RankState
from hdbl_mpi.run.records import EpochRow

if TYPE_CHECKING:
    import torch

    from hdbl_mpi.ps.state import Roster, ServerState
    from hdbl_mpi.rules.epoch_lengths import EpochLengths
    from hdbl_mpi.rules.schedule import Schedule
    from hdbl_mpi.run.progress import Progress


class ServerView(Protocol):
    """What the epochs use of the server (ps/server.py)."""

    lengths: EpochLengths  # the commits of each epoch: n workers x k commits each (k perhaps one per resolution)
    state: ServerState
    schedule: Schedule
    roster: Roster
    progress: Progress
    t_start: float

    def line(self, text: str) -> None: ...

    def snapshot(self) -> torch.Tensor: ...

    def checkpoint_state(self) -> dict[str, Any]: ...

    def recorded_through(self, commit: int) -> bool: ...

    def elapsed_train(self) -> float: ...

    def checkpointed(self, at: int, without: list[int]) -> None: ...

    def training_workers(self) -> list[int]: ...


class WorkerStates:
    """The worker states a pending checkpoint waits for.

    A checkpoint covering commit C needs each worker's state as of C. The server asks for it in each worker's
    next reply (`ask`); the worker answers with its newest state taken at or before C. The final checkpoint (C =
    the run's last commit) takes the state each worker sends with its stop reply instead, because a worker told
    to stop gets no further reply."""

    def __init__(self) -> None:
        self.at: int | None = None  # the commit the pending checkpoint covers (None: nothing to ask)
        self.need: set[int] = set()
        self.asked: set[int] = set()
        self.got: dict[int, RankState] = {}
        self.final: dict[int, RankState] = {}  # sent with each worker's stop reply

    def want(self, at: int, workers: list[int], final: bool) -> None:
        self.at, self.need, self.asked, self.got = (None if final else at), set(workers), set(), {}

    def ask(self, rank: int) -> int:
        """`state_at` for the reply to `rank`: the pending checkpoint's commit once per worker, else 0."""
        if self.at is None or rank not in self.need or rank in self.asked:
            return 0
        self.asked.add(rank)
        return self.at

    def received(self, rank: int, requested: int, state: RankState) -> None:
        if requested < 0:
            self.final[rank] = state
        elif requested == self.at:
            self.got[rank] = state

    def collect(self, final: bool, workers: list[int], partial: bool = False) -> dict[int, RankState] | None:
        """Every state the checkpoint needs from `workers` (those still alive), or None while any is missing;
        `partial`: the states that came, whatever is missing."""
        source = self.final if final else self.got
        if not partial and any(w not in source for w in workers if w in self.need):
            return None
        return {w: source[w] for w in workers if w in source}


class ServerEpochs:
    """Owns the run's length (`total` commits: lowered by early stopping and by a stalled worker at the end).
    `lr_at(epoch)` is the schedule's LR at a (fractional) epoch, for the epoch rows."""

    def __init__(self, server: ServerView, book: EpochBook, evaluator: Evaluator,
                 lr_at: Callable[[float], float], minutes: float = 0.0) -> None:
        self.server, self.book, self.evaluator, self.lr_at = server, book, evaluator, lr_at
        self.total = server.lengths.total
        self.t_epoch = time.perf_counter()
        self.pending: tuple[int, torch.Tensor, dict[str, Any]] | None = None  # a checkpoint awaiting records
        self.states = WorkerStates()
        self.interrupted = False  # stopped on a signal: the last epoch is not the schedule's
        self.saved_at: int | None = None  # the commit the last checkpoint written covers
        self.minutes = minutes  # run.checkpoint_minutes (0: none)
        self.t_checkpoint = time.monotonic()

    @property
    def epochs(self) -> int:
        return self.server.lengths.done(self.total)

    def close(self, force: bool = False) -> None:
        """Close the epoch when its n-th commit is merged; `force` closes a short last epoch (a stalled worker's
        commit will not come)."""
        s, st = self.server, self.server.state
        if not s.lengths.at_boundary(st.merged) and not force:
            return
        epoch = s.lengths.done(s.lengths.next_boundary(st.merged))
        row = self._row(epoch)
        now = time.perf_counter()
        self.book.add(row, st.epoch_samples / max(now - self.t_epoch, 1e-9))
        self.t_epoch = now
        st.epoch_loss_sum = st.epoch_correct = st.epoch_samples = 0.0
        due_eval = self.book.policy.eval_due(epoch, self.epochs)
        last = (force or epoch == self.epochs) and not self.interrupted
        due_ckpt = self.book.policy.checkpoint_due(epoch, last)
        if not due_eval:
            self.book.announce(row)
        if due_eval or due_ckpt:
            snapshot = s.snapshot()
            if due_eval:
                self.evaluator.submit(epoch, snapshot, row.resolution)  # at the stage's resolution
            if last:
                self.evaluator.submit(FINAL, snapshot, s.schedule.resolutions[-1])  # the final model, top resolution
            if due_ckpt:
                self._pend(snapshot)
        self.book.write_epochs()
        self.save_when_recorded()

    def checkpoint_now(self) -> None:
        """A checkpoint at the current commit, between epochs (a signal, run.checkpoint_minutes)."""
        self._pend(self.server.snapshot())
        self.save_when_recorded()

    def minutes_due(self) -> bool:
        return self.minutes > 0 and time.monotonic() - self.t_checkpoint >= 60.0 * self.minutes

    def _pend(self, snapshot: torch.Tensor) -> None:
        s = self.server
        self.t_checkpoint = time.monotonic()
        self.pending = (s.state.merged, snapshot, s.checkpoint_state())
        self.states.want(s.state.merged, s.training_workers(), s.state.merged >= self.total)

    def save_when_recorded(self, force: bool = False) -> None:
        """Write the pending checkpoint once every commit it covers has its record (a worker sends the record
        after the reply, so a crash right after an epoch's last merge could otherwise leave a checkpoint whose
        last commit has no line in commits.jsonl, and a resumed run with a gap there), and again with the
        workers' states once they are in. In BSP they come with the records (a worker sends its state before its
        record); in ASP a worker still training sends its state with its next reply, so the weights are safe on
        disk one commit earlier. `force`: at the end, with the states that came (a lost or stalled worker's never
        will)."""
        if self.pending is None:
            return
        at, snapshot, state = self.pending
        if not (force or self.server.recorded_through(at)):
            return
        workers = self.server.training_workers()
        ranks = self.states.collect(at >= self.total, workers, partial=force)
        if ranks is not None:
            self.pending = None
            self.book.save(snapshot, state, ranks, at)
            self.server.checkpointed(at, sorted(set(workers) - set(ranks)))
        elif self.saved_at != at:  # the weights and counters now; the workers' states follow
            self.book.save(snapshot, state, None, at)
        self.saved_at = at

    def stop_at(self, commits: int) -> None:
        """End the run after `commits` merged commits (on a signal): the commits in flight are still merged."""
        self.interrupted = True
        self.total = commits
        self.server.progress.total = commits

    def _row(self, epoch: int) -> EpochRow:
        s, st = self.server, self.server.state
        stage = s.schedule.at(epoch - 1)
        return EpochRow(epoch=epoch, stage=s.schedule.index_at(epoch - 1), resolution=stage.resolution,
                        lr=self.lr_at(epoch - 1),
                        train_loss=st.epoch_loss_sum / max(st.epoch_samples, 1),
                        train_acc=st.epoch_correct / max(st.epoch_samples, 1),
                        wall_s=st.wall_time_s + time.perf_counter() - s.t_start, train_time_s=s.elapsed_train(),
                        commits=st.merged - s.lengths.start(epoch - 1))

    def collect(self, results: list[EvalResult]) -> None:
        """Record finished evaluations; an evaluation that triggers early stopping shortens the run."""
        if not results:
            return
        for r in results:
            if r.epoch == FINAL:
                self.book.final(r.loss, r.acc, r.resolution, r.seconds)
            elif self.book.evaluated(r.epoch, r.loss, r.acc, r.seconds):
                self._stop_early(r.epoch)
        self.book.write_epochs()

    def _stop_early(self, evaluated_epoch: int) -> None:
        """End the run at the first epoch boundary that covers every commit already under way; those commits
        are still merged."""
        s, st = self.server, self.server.state
        end = s.lengths.next_boundary(st.merged + len(s.roster.training))
        if end == st.merged:  # nothing under way and that epoch already closed: finish the next one
            end = s.lengths.start(s.lengths.done(end) + 1)
        if end >= self.total:
            return
        self.total = end
        s.progress.total = end
        st.early_stopped_at = s.lengths.done(end)
        s.line(f"early stop: {self.book.stop_reason()} (last after epoch {evaluated_epoch}); the run ends after "
               f"epoch {st.early_stopped_at}")
