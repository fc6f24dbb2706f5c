"""The server's epochs: close one every n merged commits, evaluate in the background, checkpoint, stop early.

An epoch is n commits counted at the server (method §5). Its row goes into the epoch book (run/book.py, shared
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
from hdbl_mpi.run.records import EpochRow

if TYPE_CHECKING:
    import torch

    from hdbl_mpi.ps.state import Roster, ServerState
    from hdbl_mpi.run.progress import Progress
    from hdbl_mpi.schedule import Schedule


class ServerView(Protocol):
    """What the epochs use of the server (ps/server.py)."""

    n: int
    state: ServerState
    schedule: Schedule
    roster: Roster
    progress: Progress
    t_start: float

    def line(self, text: str) -> None: ...

    def snapshot(self) -> torch.Tensor: ...

    def checkpoint_state(self) -> dict[str, Any]: ...

    def elapsed_train(self) -> float: ...


class ServerEpochs:
    """Owns the run's length (`total` commits: lowered by early stopping and by a stalled worker at the end).
    `lr_at(epoch)` is the schedule's LR at a (fractional) epoch, for the epoch rows."""

    def __init__(self, server: ServerView, book: EpochBook, evaluator: Evaluator,
                 lr_at: Callable[[float], float]) -> None:
        self.server, self.book, self.evaluator, self.lr_at = server, book, evaluator, lr_at
        self.total = server.schedule.epochs * server.n
        self.t_epoch = time.perf_counter()

    @property
    def epochs(self) -> int:
        return self.total // self.server.n

    def close(self, force: bool = False) -> None:
        """Close the epoch when its n-th commit is merged; `force` closes a short last epoch (a stalled worker's
        commit will not come)."""
        s, st = self.server, self.server.state
        if st.merged % s.n and not force:
            return
        epoch = -(-st.merged // s.n)
        row = self._row(epoch)
        now = time.perf_counter()
        self.book.add(row, st.epoch_samples / max(now - self.t_epoch, 1e-9))
        self.t_epoch = now
        st.epoch_loss_sum = st.epoch_correct = st.epoch_samples = 0.0
        due_eval = self.book.policy.eval_due(epoch, self.epochs)
        last = force or epoch == self.epochs
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
                self.book.save(snapshot, s.checkpoint_state())
        self.book.write_epochs()

    def _row(self, epoch: int) -> EpochRow:
        s, st = self.server, self.server.state
        stage = s.schedule.at(epoch - 1)
        return EpochRow(epoch=epoch, stage=s.schedule.index_at(epoch - 1), resolution=stage.resolution,
                        lr=self.lr_at(epoch - 1),
                        train_loss=st.epoch_loss_sum / max(st.epoch_samples, 1),
                        train_acc=st.epoch_correct / max(st.epoch_samples, 1),
                        wall_s=st.wall_time_s + time.perf_counter() - s.t_start, train_time_s=s.elapsed_train())

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
        end = -(-(st.merged + len(s.roster.training)) // s.n) * s.n
        if end == st.merged:  # nothing under way and that epoch already closed: finish the next one
            end += s.n
        if end >= self.total:
            return
        self.total = end
        s.progress.total = end
        st.early_stopped_at = end // s.n
        s.line(f"early stop: {self.book.stop_reason()} (last after epoch {evaluated_epoch}); the run ends after "
               f"epoch {st.early_stopped_at}")
