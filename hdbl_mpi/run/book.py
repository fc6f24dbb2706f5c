"""The epoch book every trainer keeps: history, evaluations, best top-1, early stopping, checkpoints, outcome.

The parameter server (which evaluates in a background thread and learns results late) and the data-parallel
trainers (which evaluate in step) keep the same books through this class, so a figure in summary.json, a row of
epochs.csv or an early stop means the same thing in every mode. Only the process that owns the run directory
writes (rank 0); the others keep the same state so a checkpoint holds what every rank agrees on.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hdbl_mpi.optim.schedules import EarlyStopping
from hdbl_mpi.rules.epoch_lengths import EpochLengths
from hdbl_mpi.run import rundir
from hdbl_mpi.run.progress import Progress
from hdbl_mpi.run.rankstate import RankState, prune_rank_states, save_rank_states
from hdbl_mpi.run.records import EpochRow, Outcome, from_mapping
from hdbl_mpi.run.scalars import Scalars
from hdbl_mpi.run.writer import BackgroundWriter


@dataclass
class RunResult:
    """What a trainer hands back to `hdbl train` on the rank that writes the summary."""

    outcome: Outcome
    figures: dict[str, Any]  # the mode's own summary.json entries (commits, balance, backend, ...)
    done: str  # what the run did, for the final line: "32 commits", "16 synchronisations"
    abort_code: int | None = None  # end the job with this code after the summary (ranks that cannot finalize)
    abort_reason: str = ""
    incomplete: str = ""  # why the run ended before its end (every worker lost): exit code 1, resumable


@dataclass(frozen=True)
class Stopped:
    """A run stopped on a signal with a complete checkpoint (run/signals.py): no summary, a line saying how to go
    on, and exit code EXIT_STOPPED."""

    at: str  # where it stopped: "commit 96 (epoch 1.50)"
    run_dir: Path

    def line(self, signal_name: str) -> str:
        return (f"hdbl train: stopped on {signal_name or 'a signal'} at {self.at}; checkpoint "
                f"{self.run_dir / rundir.CHECKPOINT}. Continue with: hdbl train --resume {self.run_dir} (or "
                f"hdbl train CONFIG --run-dir {self.run_dir} --resume auto)")


@dataclass
class BookState:
    """What every checkpoint keeps besides the weights and the mode's own counters. Plain types only (epoch rows
    become dicts in :meth:`to_dict`), so a checkpoint loads with torch.load(weights_only=True)."""

    history: list[EpochRow] = field(default_factory=list)
    best_top1: float | None = None
    final_top1: float | None = None  # the final model at the top resolution
    final_loss: float | None = None
    train_time_s: float = 0.0
    eval_time_s: float = 0.0
    wall_time_s: float = 0.0
    restarts: list[dict] = field(default_factory=list)
    early_stopping: dict = field(default_factory=dict)  # EarlyStopping's state, kept across a resume
    early_stopped_at: int | None = None  # the epoch after which the run stops early

    def __post_init__(self) -> None:
        self.history = [r if isinstance(r, EpochRow) else from_mapping(EpochRow, r) for r in self.history]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def completed_epochs(state: dict[str, Any], lengths: EpochLengths) -> int:
    """Epochs a checkpoint's state has completed: a data-parallel run counts them, a parameter-server run
    counts merged commits (n workers x k commits per epoch, k perhaps one per resolution)."""
    return int(state["epoch"]) if "epoch" in state else lengths.done(int(state.get("merged", 0)))


@dataclass(frozen=True)
class BookPolicy:
    """When a trainer evaluates and checkpoints (eval.every, run.checkpoint_every) and how it stops early."""

    eval_every: int
    checkpoint_every: int
    patience: int
    min_delta: float

    @classmethod
    def from_config(cls, config: Any) -> BookPolicy:
        t = config.train
        return cls(config.eval.every, config.run.checkpoint_every, t.early_stop_patience, t.early_stop_min_delta)

    def eval_due(self, epoch: int, epochs: int) -> bool:
        """Evaluate after `epoch` (1-based) every eval.every epochs, and always after the last of `epochs`."""
        return epoch == epochs or (self.eval_every > 0 and epoch % self.eval_every == 0)

    def checkpoint_due(self, epoch: int, last: bool) -> bool:
        return last or (self.checkpoint_every > 0 and epoch % self.checkpoint_every == 0)


class EpochBook:
    """Records epochs and evaluations into a :class:`BookState` and, on the writing rank, into the run
    directory (epochs.csv, TensorBoard scalars, the terminal and train.log, checkpoints)."""

    def __init__(self, state: BookState, policy: BookPolicy, run_dir: Path, progress: Progress | None,
                 scalars: Scalars | None, vector_layout: dict[str, list] | None = None) -> None:
        self.state, self.policy, self.run_dir = state, policy, run_dir
        self.vector_layout = vector_layout  # names and shapes of the checkpointed vector (train.init_from reads it)
        self.progress, self.scalars = progress, scalars
        self.stopper = EarlyStopping(policy.patience, policy.min_delta)
        self._writer: BackgroundWriter | None = None  # started by the first checkpoint
        self.write_seconds: list[float] = []  # how long each checkpoint took to write, in the writer thread
        if state.early_stopping:
            self.stopper.load_state_dict(state.early_stopping)

    @property
    def writer(self) -> bool:
        return self.progress is not None

    def add(self, row: EpochRow, samples_per_s: float) -> None:
        """A finished epoch, before its evaluation (if any) is known."""
        self.state.history.append(row)
        if self.scalars is not None:
            self.scalars.add({"train/loss": row.train_loss, "train/accuracy": row.train_acc, "lr": row.lr,
                              "throughput/samples_per_s": samples_per_s, "time/train_s": row.train_time_s},
                             row.epoch)

    def announce(self, row: EpochRow) -> None:
        """The epoch's terminal line, for an epoch without evaluation."""
        if self.progress is not None:
            self.progress.epoch(row.epoch, row.train_acc, row.test_acc, row.wall_s, row.train_loss)

    def evaluated(self, epoch: int, loss: float, acc: float, seconds: float) -> bool:
        """An evaluation of the model after `epoch`; True when early stopping says the run should stop."""
        st = self.state
        st.eval_time_s += seconds
        row = next(r for r in st.history if r.epoch == epoch)
        row.test_loss, row.test_acc = loss, acc
        st.best_top1 = acc if st.best_top1 is None else max(st.best_top1, acc)
        stop = self.stopper.update(acc)
        st.early_stopping = self.stopper.state_dict()
        if self.scalars is not None:
            self.scalars.add({"test/loss": loss, "test/accuracy": acc}, epoch)
        self.announce(row)
        return stop

    def final(self, loss: float, acc: float, resolution: int, seconds: float) -> None:
        """The final model's evaluation at the top resolution."""
        st = self.state
        st.eval_time_s += seconds
        st.final_top1, st.final_loss = acc, loss
        st.best_top1 = acc if st.best_top1 is None else max(st.best_top1, acc)
        self.line(f"Final Valid-accuracy={acc:.4f} at {resolution} px")

    def stop_reason(self) -> str:
        return f"no better test top-1 than {self.stopper.best:.4f} for {self.stopper.bad_updates} evaluation(s)"

    def line(self, text: str) -> None:
        if self.progress is not None:
            self.progress.line(text)

    def write_epochs(self) -> None:
        if self.writer:
            rundir.write_epochs(self.run_dir / rundir.EPOCHS, self.state.history)

    def save(self, vector: Any, state: dict[str, Any], ranks: dict[int, RankState] | None = None,
             at: int = 0) -> None:
        """Checkpoint `vector` (the global weights) with `state` (this book's and the mode's counters) and, when
        given, every training rank's own state at `at` (rank files first, then checkpoint.pt naming them, then the
        older rank files go: a crash at any point leaves a checkpoint.pt whose rank files match). The files are
        written in the background (run/writer.py): `vector` must be a copy nothing changes later; close() waits."""
        if not self.writer:
            return
        state = copy.deepcopy(state)  # the live counters move on while the writer works

        def write() -> None:
            extra: dict[str, Any] = {"flat_layout": self.vector_layout} if self.vector_layout else {}
            if ranks:
                extra["rank_states"] = save_rank_states(self.run_dir, at, ranks)
            rundir.save_checkpoint(self.run_dir / rundir.CHECKPOINT, vector, {**state, **extra})
            prune_rank_states(self.run_dir, at if ranks else None)

        if self._writer is None:
            self._writer = BackgroundWriter(self.write_seconds)
        self._writer.submit(write)

    def outcome(self, mode: str, train_time_s: float, wall_time_s: float, epochs_completed: int,
                resume_policy: str) -> Outcome:
        st = self.state
        last = st.history[-1] if st.history else None
        if st.final_top1 is None or st.final_loss is None or st.best_top1 is None:
            raise RuntimeError("the run ended without its final evaluation")
        return Outcome(
            final_top1=st.final_top1, final_test_loss=st.final_loss,
            final_top1_stage_resolution=last.test_acc if last else None, best_top1=st.best_top1,
            train_time_s=train_time_s, eval_time_s=st.eval_time_s, wall_time_s=wall_time_s,
            epochs_completed=epochs_completed, early_stopped_at=st.early_stopped_at, restarts=list(st.restarts),
            mode=mode, resume_policy=resume_policy,
            tensorboard=self.scalars.status if self.scalars is not None else "not written on this rank",
        )

    def close(self) -> None:
        """Wait for the checkpoint being written (its failure is raised here), close the terminal and scalars."""
        try:
            if self._writer is not None:
                self._writer.close()
                self._writer = None
        finally:
            self._close_outputs()

    def _close_outputs(self) -> None:
        if self.progress is not None:
            self.progress.close()
        if self.scalars is not None:
            self.scalars.close()
