"""Fault injection for tests and drills (the `debug:` config section): a rank that raises, exits or is killed
at a chosen commit, so every failure path is exercised on purpose rather than assumed."""

from __future__ import annotations

import os
import signal
import threading
import time

CRASH_MODES = ("raise", "exit", "kill")


def maybe_crash(debug, rank: int, commit: int, where: str = "local commit", resumed: bool = False) -> None:
    """Crash this rank as `debug.crash` says when it is `debug.raise_on_rank` and has reached
    `debug.raise_at_commit`: raise (the job aborts with this rank's message), exit with code 3 without
    finalising MPI, or SIGKILL itself (as the kernel's OOM killer would). With `debug.crash_on_resume: false`
    not in a start that `resumed` from a checkpoint: a transient fault, which a restart (`hdbl launch
    --max-restarts`) gets past, where a failure that comes back every start exhausts the restart budget."""
    if rank != debug.raise_on_rank or commit < debug.raise_at_commit or resumed and not debug.crash_on_resume:
        return
    what = f"injected failure (debug.raise_on_rank={rank}) at {where} {commit}"
    if debug.crash == "exit":
        print(f"{what}: exiting with code 3", flush=True)
        os._exit(3)
    if debug.crash == "kill":
        print(f"{what}: killing itself (SIGKILL)", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    raise RuntimeError(what)


def kill_after(seconds: float, what: str) -> None:
    """SIGKILL this process `seconds` from now, wherever it is then (training, exchanging, waiting): the chaos
    drill's kill, which nothing in the process can clean up after, as with the OOM killer or a lost node. The
    line before it carries the wall time, for the drill's time lost per failure (bench/chaos.py)."""
    def die() -> None:
        print(f"hdbl train: {what} at unix time {time.time():.3f}", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)

    timer = threading.Timer(max(seconds, 0.0), die)
    timer.daemon = True
    timer.start()
