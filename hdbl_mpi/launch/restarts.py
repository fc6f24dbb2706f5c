"""`hdbl launch --max-restarts N`: a failed training job starts again from its last checkpoint, at most N times.

torchrun's `--max-restarts`, for every mode: when the job ends with a failure, the launcher waits a short
back-off and starts it again with `--resume auto` in the same run directory, which continues from the last
complete checkpoint (or starts the run afresh there when none was written yet). Not restarted: success (0), a
refusal (2: a config or set-up error, which a restart cannot fix), a stop on a signal (75, 76: the run was asked
to stop and has a checkpoint; the batch system decides what follows), and any end after `hdbl launch` itself got
a stop signal. Each restart is said on stderr, appended to the run directory's launch.jsonl, and told to the
restarted job (RESTART_ENV), whose summary.json `restarts` then says which restart it was, after which exit code,
and the time it lost (the work since the checkpoint plus the time from the failure to the new start).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

from hdbl_mpi.errors import HdblError
from hdbl_mpi.run.restarts import RESTART_ENV, Restart
from hdbl_mpi.run.signals import EXIT_STOPPED, EXIT_STOPPED_AT_ONCE

LAUNCH_LOG = "launch.jsonl"
NOT_RESTARTED = {0: "finished", HdblError.exit_code: "refused (a config or set-up error: a restart cannot fix it)",
                 EXIT_STOPPED: "stopped by a signal with a checkpoint", EXIT_STOPPED_AT_ONCE: "stopped at once by a "
                 "second signal"}


def resume_command(command: list[str], run_dir: str) -> list[str]:
    """The train command a restart runs: the same, continuing `run_dir` (`--resume auto`, unless it resumes a
    directory already, which then holds the newer checkpoint)."""
    out = list(command)
    if "--resume" not in out:
        out += ["--resume", "auto"]
    if "--run-dir" not in out and out[out.index("--resume") + 1] == "auto":
        out += ["--run-dir", run_dir]
    return out


def run_with_restarts(start: Callable[[list[str], dict[str, str]], int], command: list[str], run_dir: str,
                      max_restarts: int, backoff_s: float, stopped: Callable[[], bool]) -> int:
    """Run `start(command, env)` and restart it as the module says, at most `max_restarts` times; the last
    exit code. `stopped()`: whether `hdbl launch` itself was told to stop (then nothing is restarted)."""
    code = start(command, {})
    for k in range(1, max_restarts + 1):
        if code in NOT_RESTARTED or stopped():
            if code:
                _say(f"exit code {code}, not restarted: " + NOT_RESTARTED.get(code, "hdbl launch was told to stop"))
            return code
        restart = Restart(k, max_restarts, code, time.time(), backoff_s * k)
        _say(f"the job failed with exit code {code}: restart {k} of {max_restarts} in {restart.backoff_s:g} s, "
             f"from the last checkpoint in {run_dir} (--resume auto)")
        _log(run_dir, restart)
        time.sleep(restart.backoff_s)
        if stopped():
            return code
        code = start(resume_command(command, run_dir), {RESTART_ENV: restart.env_value()})
    if code not in NOT_RESTARTED and not stopped():
        _say(f"the job failed with exit code {code} and its {max_restarts} restart(s) are spent: giving up "
             f"(the run directory {run_dir} keeps the last checkpoint; `--resume {run_dir}` continues it)")
    return code


def _say(text: str) -> None:
    print(f"hdbl launch: {text}", file=sys.stderr, flush=True)


def _log(run_dir: str, restart: Restart) -> None:
    """Append the restart to the run directory's launch.jsonl (made if the failed job got no further)."""
    path = Path(run_dir)
    path.mkdir(parents=True, exist_ok=True)
    record = {**asdict(restart), "time": datetime.fromtimestamp(restart.failed_at, timezone.utc).isoformat(
        timespec="seconds")}
    with open(path / LAUNCH_LOG, "a") as f:
        f.write(json.dumps(record) + "\n")
