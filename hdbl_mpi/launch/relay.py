"""Run mpirun as a child of `hdbl launch` rather than exec'ing it: a SIGTERM that stops the run cleanly, and for
ULFM jobs the exit code rank 0 reported, not mpirun's.

Open MPI 5's mpirun forwards a SIGTERM to the ranks and SIGKILLs them about 0.5 s later, too soon for the
commits in flight and a checkpoint (docs/reliability.md); SIGUSR1 it forwards and leaves alone. So `hdbl launch`
passes a SIGTERM it gets (a batch system's preemption or cancel, `kill`) on to mpirun as SIGUSR1: the run
finishes the work in flight, checkpoints and exits 75, as with SIGUSR1. A second SIGTERM goes on as a second
SIGUSR1: stop at once (76).

Under `--with-ft ulfm` mpirun ends with 0 when ranks die of a signal, the server included: a job whose every
rank was killed "succeeded" (measured: ../shared/notes/ulfm_and_netns.md, and a CI run that exited 0 without a
run directory). And Open MPI 5.0's detector thread sometimes crashes every rank inside MPI_Init. So for ULFM
jobs `hdbl launch` does not exec mpirun: it relays mpirun's standard output as it comes (bytes, so progress bars
redraw) while watching for rank 0's two report lines (hdbl_mpi.comm.ulfm), passes on the signals a batch system
sends (SIGTERM, SIGUSR1, SIGUSR2, SIGHUP) so that a checkpoint-and-stop still works, kills an mpirun left
without any rank for ORPHAN_GRACE_S (prterun can deadlock after a failure under ULFM), and then:

- starts the job again (START_ATTEMPTS in all, each one said on stderr) when it ended with mpirun's 0 before
  rank 0 said every rank was through MPI_Init: nothing has been written by then, so the new start is the same
  job, not a fallback;
- otherwise ends with the code rank 0 reported (the server knows how the run ended; a worker lost on the way
  with a non-zero exit makes mpirun's code non-zero too, and that is said), else with mpirun's code when it is
  not 0 (an abort, a launch failure), else with 1 and a message: rank 0 never said how it ended, so it was
  killed or lost.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from hdbl_mpi.comm.ulfm import reported_exit, reported_up

# Each start dies inside MPI_Init with probability about 1/8 (docs/reliability.md; 1 of 9 starts here on
# 2026-12-04): three starts left a job about 1 chance in 500 of failing this way (seen once in a CI run), five
# leave about 1 in 30,000, for a few seconds per extra start.
START_ATTEMPTS = 5
ORPHAN_GRACE_S = 30.0  # mpirun alive this long without a rank (or a remote daemon's launcher): it hangs
WATCH_PERIOD_S = 2.0
FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2, signal.SIGHUP)
UNREPORTED = ("hdbl launch: error: mpirun ended with 0 but rank 0 (the server) never reported its exit code: it "
              "was killed (by a signal, the OOM killer, or aborting itself after the failure detector wrongly "
              "declared it dead) or lost before the end. Under ULFM mpirun reports 0 for ranks that die, so this "
              "launch exits 1; the output above says what rank 0 did last.")


@dataclass
class Attempt:
    """One run of the launcher: its own exit code and what rank 0 reported on the way."""

    returncode: int
    up: bool = False  # rank 0 said every rank got through MPI_Init
    reported: int | None = None  # rank 0's exit code, if it said it

    def died_starting(self) -> bool:
        return self.returncode == 0 and not self.up and self.reported is None

    def launcher_code(self) -> int:
        return self.returncode if self.returncode >= 0 else 128 - self.returncode  # a signal: as the shell

    def exit_code(self) -> int:
        """The job's code from rank 0's report (ULFM)."""
        launcher = self.launcher_code()
        if self.reported is None:
            if launcher == 0:
                print(UNREPORTED, file=sys.stderr, flush=True)
            return launcher or 1
        if launcher not in (0, self.reported):
            print(f"hdbl launch: rank 0 ended the run with exit code {self.reported}; mpirun's {launcher} comes "
                  "from a rank lost on the way (summary.json names the lost workers)", file=sys.stderr, flush=True)
        return self.reported


def _write_all(sink: int | None, data: bytes) -> int | None:
    """Write `data` to `sink`; the sink becomes None once its reader has gone (`| head`): the job goes on."""
    try:
        while data and sink is not None:
            data = data[os.write(sink, data):]
    except BrokenPipeError:
        return None
    return sink


def _live_children(pid: int) -> int:
    """How many processes (zombies not counted) have `pid` as their parent, from /proc."""
    count = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, parent = stat.read_text().rsplit(")", 1)[1].split()[:2]
        except (OSError, ValueError):
            continue  # gone meanwhile
        count += int(parent) == pid and state != "Z"
    return count


def _watch(proc: subprocess.Popen, grace_s: float) -> None:
    """Kill mpirun once it has had no child for `grace_s`: every rank (and every remote daemon's ssh or srun)
    has ended, and Open MPI 5's prterun can deadlock after a rank failure under ULFM instead of exiting (seen
    here: every rank gone, prterun asleep on a mutex, deaf to SIGTERM, for 10 minutes until killed)."""
    if not Path(f"/proc/{proc.pid}").is_dir():
        return  # not Linux: no watch
    last_child = time.monotonic()
    while proc.poll() is None:
        time.sleep(WATCH_PERIOD_S)
        if _live_children(proc.pid):
            last_child = time.monotonic()
        elif time.monotonic() - last_child > grace_s and proc.poll() is None:
            print(f"hdbl launch: every rank ended {grace_s:.0f} s ago but mpirun has not (an Open MPI hang after "
                  "a failure): killing it", file=sys.stderr, flush=True)
            proc.kill()
            return


def _relay(proc: subprocess.Popen, sink: int) -> Attempt:
    """Copy `proc`'s standard output to `sink` until it ends, noting rank 0's report lines."""
    assert proc.stdout is not None
    source, partial = proc.stdout.fileno(), b""
    out: int | None = sink
    up, reported = False, None
    while chunk := os.read(source, 65536):
        out = _write_all(out, chunk)
        *lines, partial = (partial + chunk).split(b"\n")
        for line in lines:
            up = up or reported_up(line)
            reported = reported_exit(line) if reported is None else reported
    if reported is None and partial:
        reported = reported_exit(partial)
    return Attempt(proc.wait(), up, reported)


def supervise(argv: list[str], env: dict[str, str], *, reports: bool, term_as: int | None = None,
              orphan_grace_s: float = ORPHAN_GRACE_S, signalled: list[int] | None = None) -> int:
    """Run the launcher `argv` and return the job's exit code. `reports`: a ULFM job whose ranks have REPORT_ENV
    in `env` (rank 0's report decides; restarts and the hung-mpirun watch apply); `term_as`: the signal a SIGTERM
    is passed on as (SIGUSR1 for Open MPI's mpirun); `signalled`: gets every signal passed on (the restart
    budget restarts nothing after one)."""
    current: list[subprocess.Popen] = []
    signalled = [] if signalled is None else signalled

    def forward(signum: int, frame: object) -> None:
        signalled.append(signum)
        sent = term_as if signum == signal.SIGTERM and term_as is not None else signum
        if sent != signum:
            print(f"hdbl launch: SIGTERM passed on to mpirun as {signal.Signals(sent).name}, which stops the run "
                  "cleanly (Open MPI's mpirun kills the ranks 0.5 s after forwarding a SIGTERM)", file=sys.stderr,
                  flush=True)
        if current:
            current[-1].send_signal(sent)

    for sig in FORWARDED_SIGNALS:
        signal.signal(sig, forward)
    # Ctrl-C reaches mpirun from the terminal (same process group): wait for it to end the job, do not die first.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.stdout.flush()
    for attempt in range(1, START_ATTEMPTS + 1):
        current.append(subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL))
        if reports:
            threading.Thread(target=_watch, args=(current[-1], orphan_grace_s), daemon=True).start()
        result = _relay(current[-1], sys.stdout.fileno())
        if not reports:
            return result.launcher_code()
        if not result.died_starting() or signalled or attempt == START_ATTEMPTS:
            break
        print(f"hdbl launch: the job died before every rank was through MPI_Init (most likely Open MPI's ULFM "
              f"detector thread, docs/reliability.md) and before anything was written: starting it again, "
              f"attempt {attempt + 1} of {START_ATTEMPTS}", file=sys.stderr, flush=True)
    return result.exit_code()
