"""How a rank of a ULFM job (`ps.fault_tolerance: ulfm`) ends: without MPI_Finalize.

With a dead rank in the world, MPI_Finalize can wait forever: a run that survived a lost worker printed its
summary and then the server and a worker spun in MPI_Finalize for 27 minutes, and a watchdog thread in Python
cannot help because mpi4py holds the GIL inside it (measured here, docs/reliability.md). Under
`--with-ft ulfm` Open MPI's runtime treats a rank that exits without finalizing as one more failure, not as a
reason to abort the job, and mpirun ends with code 0 once every rank has gone. So each rank flushes its output
and leaves with its exit code as soon as its part is done; every file of the run directory has been written and
closed by then.

Healthy ranks are kept from being declared dead by Open MPI's detector thread (`mpi_ft_detector_thread`, added by
`hdbl launch`), which sends heartbeats whatever Python is doing; the keep-alive thread in Python that did this
before missed them under load (it needs the GIL) and was removed.

mpirun's exit code cannot be trusted under ULFM: it is 0 when ranks die of a signal, rank 0 included (a rank the
detector wrongly declared dead aborts itself; the OOM killer). And Open MPI 5.0's detector thread can crash the
job inside MPI_Init (a heartbeat reaching a rank that is not ready: about 1 start in 8 here with the ranks'
start-up skewed by a second). So when `hdbl launch` starts a ULFM job it sets REPORT_ENV, and rank 0 prints two
lines for it: UP_LINE once every rank is through MPI_Init, EXIT_LINE with its exit code as the job's last line.
The launcher starts a job that died before UP_LINE again, and turns an mpirun exit of 0 without EXIT_LINE into a
failure (hdbl_mpi.launch.relay).
"""

from __future__ import annotations

import os
import re
import sys
import time
from typing import Any

REPORT_ENV = "HDBL_REPORT_EXIT"
LEAVE_DRAIN_S = 0.5  # see leave()
UP_LINE = "hdbl train: every rank is through MPI_Init"
EXIT_LINE = "hdbl train: rank 0 leaves with exit code"
_EXIT_PATTERN = re.compile(rb"^" + re.escape(EXIT_LINE.encode()) + rb" (\d+)\r?$")


def report_up(comm: Any) -> None:
    """Under `hdbl launch` with ULFM: a barrier, then rank 0 says that every rank got through MPI_Init (nothing
    has touched the run directory yet, so a job that died before this line can simply start again)."""
    if os.environ.get(REPORT_ENV) == "1":
        try:
            comm.Barrier()
        except Exception as err:  # mpi4py's MPI.Exception: a rank died inside MPI_Init
            print(f"hdbl train: rank {comm.rank}: a rank died while MPI started ({err}); leaving so that "
                  "`hdbl launch` starts the job again", file=sys.stderr, flush=True)
            leave(0)
        if comm.rank == 0:
            print(f"{UP_LINE} ({comm.size} ranks)", flush=True)


def report_exit(rank: int, code: int) -> None:
    """On rank 0 of a job `hdbl launch` started under ULFM, print the exit code for the launcher to check."""
    if rank == 0 and os.environ.get(REPORT_ENV) == "1":
        print(f"{EXIT_LINE} {code}", flush=True)


def reported_up(line: bytes) -> bool:
    """Whether `line` (one line of the job's output) is rank 0's UP_LINE."""
    return line.startswith(UP_LINE.encode())


def reported_exit(line: bytes) -> int | None:
    """The exit code rank 0 reported in `line` (one line of the job's output), or None."""
    match = _EXIT_PATTERN.match(line)
    return int(match.group(1)) if match else None


def leave(code: int) -> None:
    """End this process now with `code`, after flushing its output; MPI is not finalized.

    The output is closed, then the process waits LEAVE_DRAIN_S before it exits: once a rank has failed, Open MPI's
    runtime could tear the job down on this rank's exit before forwarding its last lines, and rank 0's EXIT_LINE
    went missing that way (3 of 4 runs of tests/mpi/test_faults_mpi.py's exit(3) case here, 2026-12-05), which
    turned a finished run into the failed worker's exit code."""
    sys.stdout.flush()
    sys.stderr.flush()
    for fd in (1, 2):  # end of file on the runtime's pipes before the exit, not after it
        try:
            os.close(fd)
        except OSError:
            pass
    time.sleep(LEAVE_DRAIN_S)
    os._exit(code)
