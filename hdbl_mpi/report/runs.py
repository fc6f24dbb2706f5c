"""Finished runs as the reports read them: a run directory's summary, epoch rows and resolved config."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from hdbl_mpi.errors import HdblError
from hdbl_mpi.run import rundir
from hdbl_mpi.run.records import EpochRow, Summary


@dataclass
class Run:
    path: Path
    name: str
    summary: Summary
    epochs: list[EpochRow]
    config: dict = field(default_factory=dict)

    @property
    def mode(self) -> str:
        return self.summary.outcome.mode

    @property
    def small(self) -> int:
        return int(self.summary.facts.plan["small"])

    @property
    def extra_time(self) -> float:
        return float(self.summary.facts.plan["extra_time"])

    @property
    def commits_per_epoch(self) -> int | str | None:
        """k of a parameter-server run (older runs: 1; one per resolution: '8/16', low to high); None for the
        data-parallel modes, which have no commits."""
        if "commits_total" not in self.summary.extra:
            return None
        k = self.summary.extra.get("commits_per_epoch", 1)
        return "/".join(map(str, k)) if isinstance(k, list) else int(k)

    @property
    def resolutions(self) -> list[int]:
        return list(self.summary.facts.resolutions)


def load_run(path: str | Path) -> Run:
    """Read one run directory; a missing or unfinished run is an error that names the missing file."""
    p = Path(path)
    if not p.is_dir():
        raise HdblError(f"{p} is not a directory; pass run directories (the --run-dir of `hdbl train`).")
    missing = [name for name in (rundir.SUMMARY, rundir.EPOCHS) if not (p / name).is_file()]
    if missing:
        hint = ("the run has not finished (summary.json is written at the end)" if rundir.SUMMARY in missing
                else "the run directory is incomplete")
        raise HdblError(f"{p} has no {' and no '.join(missing)}: {hint}. Report finished runs only.")
    summary = rundir.read_summary(p / rundir.SUMMARY)
    if summary.extra.get(rundir.INCOMPLETE):
        raise HdblError(f"{p} did not finish: {summary.extra[rundir.INCOMPLETE]} Report finished runs only.")
    config = yaml.safe_load((p / rundir.CONFIG).read_text()) if (p / rundir.CONFIG).is_file() else {}
    return Run(p, p.name, summary, rundir.read_epochs(p / rundir.EPOCHS), config or {})


def epoch_rows(run: Run) -> list[dict]:
    """epoch, train accuracy, valid accuracy (empty where not evaluated), wall seconds."""
    return [{"epoch": r.epoch, "train_acc": r.train_acc, "valid_acc": r.test_acc, "time_s": r.wall_s}
            for r in run.epochs]
