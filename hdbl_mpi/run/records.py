"""The typed records of a run directory: one commit, one epoch, and the summary's shared facts.

Every trainer writes these and every reader (reports, plots, the trace, resume, benchmarks) reads them through
the dataclasses here, so a field is named and typed once. The files keep their documented form (JSON lines,
CSV, JSON); readers accept files written before a field existed, which then takes its default.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")


def from_mapping(cls: type[T], values: dict[str, Any]) -> T:
    """An instance of the dataclass `cls` from a mapping, ignoring keys it does not declare (a file written by
    a newer hdbl) and leaving missing ones at their defaults (a file written by an older one)."""
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    return cls(**{k: v for k, v in values.items() if k in names})


@dataclass
class CommitRecord:
    """One line of commits.jsonl: a worker's commit (parameter server) or one worker's epoch (data-parallel
    modes, where a worker "commits" once per epoch)."""

    worker: int
    group: str  # small | large | peer
    host: str
    global_commit: int
    local_commit: int
    epoch: int
    stage: int
    resolution: int
    batch: int
    steps: int
    samples: int
    lr: float
    train_loss: float
    train_acc: float
    compute_s: float
    exchange_s: float
    wait_s: float
    commit_s: float
    time: float  # wall clock (time.time()) when the commit ended
    dropout: float | None = None
    rejected: bool = False  # the server dropped this push (non-finite)
    bytes: int | None = None  # moved by this commit (push, reply and headers); None in data-parallel modes
    slowed_s: float = 0.0  # of compute_s, slept to emulate a slow rank (debug.slow; hdbl_mpi/run/slow.py)
    staleness: int | None = None  # merges into W between this worker's pull and this push (parameter server)
    replaces: int | None = None  # a spare's commit: the lost worker whose role it took (ps.spares)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def start(self) -> float:
        """Wall-clock start of the commit."""
        return self.time - self.commit_s


EPOCH_COLUMNS = ("epoch", "stage", "resolution", "lr", "train_loss", "train_acc", "test_loss", "test_acc", "wall_s",
                 "train_time_s", "commits")


@dataclass
class EpochRow:
    """One row of epochs.csv (and of the history a checkpoint keeps)."""

    epoch: int
    stage: int
    resolution: int
    lr: float
    train_loss: float
    train_acc: float
    test_loss: float | None = None
    test_acc: float | None = None
    wall_s: float = 0.0
    train_time_s: float = 0.0
    commits: int | None = None  # merged in this epoch (n*k), or a data-parallel run's synchronisations

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class RunFacts:
    """What ran, on what and where: the part of summary.json every mode writes (see startup.run_facts)."""

    world_size: int
    resolutions: list[int]
    schedule: list[dict]
    dataset: dict
    decoding: dict[str, str]  # rank -> in-memory, dali-*, torchvision
    skipped_files: list[str]
    model: dict
    plan: dict  # at the top resolution; `plans` has every resolution
    plans: dict
    devices: dict[str, dict]
    host: str
    versions: dict[str, str]
    finished: str
    cuda_aware_mpi: dict = field(default_factory=dict)  # does MPI take device buffers, asked how (comm/cuda_aware.py)
    slow: dict | None = None  # debug.slow: the emulated slowness and each worker's seconds slept (run/slow.py)
    startup: dict | None = None  # seconds to the first step, and the start-up profile's origin (startup.Startup)


@dataclass
class Outcome:
    """The figures of summary.json every mode reports, from the epoch book (run/book.py)."""

    final_top1: float  # the final model at the top resolution
    final_test_loss: float
    final_top1_stage_resolution: float | None  # the last epoch's evaluation, at its stage's resolution
    best_top1: float
    train_time_s: float
    eval_time_s: float
    wall_time_s: float
    epochs_completed: int
    early_stopped_at: int | None
    restarts: list[dict]
    mode: str
    resume_policy: str
    tensorboard: str


@dataclass
class Summary:
    """summary.json: the shared outcome and facts, plus what one mode adds (`extra`, e.g. commits_total,
    balance, backend), which is written beside them at the top level."""

    outcome: Outcome
    facts: RunFacts
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self.outcome), **self.extra, **asdict(self.facts)}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Summary:
        outcome_keys = {f.name for f in dataclasses.fields(Outcome)}
        fact_keys = {f.name for f in dataclasses.fields(RunFacts)}
        optional = {f.name for f in dataclasses.fields(RunFacts)  # added later: older summaries lack them
                    if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING}
        missing = sorted((outcome_keys | fact_keys) - optional - set(values))
        if missing:
            raise KeyError(f"summary.json lacks {', '.join(missing)}")
        extra = {k: v for k, v in values.items() if k not in outcome_keys | fact_keys}
        return cls(from_mapping(Outcome, values), from_mapping(RunFacts, values), extra)
