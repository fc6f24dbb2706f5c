"""A run started again by `hdbl launch --max-restarts` (hdbl_mpi/launch/restarts.py): the launcher tells the new job
which restart it is (RESTART_ENV), and the resumed run's `restarts` entry in summary.json says so, with the time
the failure cost."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

RESTART_ENV = "HDBL_LAUNCH_RESTART"  # "restart=K,of=N,exit=CODE,failed_at=UNIX_SECONDS", set in a restarted job


@dataclass(frozen=True)
class Restart:
    """One restart: which of how many, the exit code that caused it, when that job ended, the back-off."""

    restart: int
    of: int
    exit: int
    failed_at: float
    backoff_s: float

    def env_value(self) -> str:
        return f"restart={self.restart},of={self.of},exit={self.exit},failed_at={self.failed_at:.3f}"

    @staticmethod
    def from_env(value: str) -> Restart:
        """The restart a job was started as, from RESTART_ENV (the back-off is the launcher's business)."""
        fields = dict(item.split("=", 1) for item in value.split(","))
        return Restart(int(fields["restart"]), int(fields["of"]), int(fields["exit"]), float(fields["failed_at"]), 0.0)


def restart_record(value: str | None, checkpoint: Path) -> dict:
    """What a restarted run adds to its `restarts` entry (summary.json): which restart, after which exit code,
    the seconds of work redone (the failure's time minus the checkpoint's) and the seconds from the failure to
    this start's run-directory set-up; {} for a start that was not a restart."""
    if not value:
        return {}
    restart = Restart.from_env(value)
    redone = max(restart.failed_at - checkpoint.stat().st_mtime, 0.0) if checkpoint.is_file() else None
    down = time.time() - restart.failed_at
    return {"launch_restart": restart.restart, "max_restarts": restart.of, "after_exit_code": restart.exit,
            "since_checkpoint_s": None if redone is None else round(redone, 1), "down_s": round(down, 1),
            "lost_s": round(down + (redone or 0.0), 1)}
