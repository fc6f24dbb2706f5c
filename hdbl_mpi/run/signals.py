"""Stop a run cleanly on SIGTERM or SIGUSR1: finish what is in flight, write a complete checkpoint, exit with
EXIT_STOPPED so a batch script knows to requeue; a second signal stops at once (EXIT_STOPPED_AT_ONCE), leaving
the previous checkpoint as it was (every checkpoint file is replaced atomically).

Every rank installs the same handler: a signal may reach all ranks (mpirun forwards SIGUSR1 to each; SLURM's
``srun`` forwards what it gets) or only one (``kill`` to a single rank). A worker that got one tells the server in
its next push, so one signalled rank is enough. What the trainers do with the request: hdbl_mpi.ps.server and
hdbl_mpi.baselines.peer.

Open MPI 5's ``mpirun`` forwards SIGTERM to the ranks but kills them about half a second later (measured,
docs/reliability.md), too soon for a checkpoint: send SIGUSR1 to mpirun (SLURM: ``--signal=B:USR1@SECONDS``).
"""

from __future__ import annotations

import os
import signal
import sys

EXIT_STOPPED = 75  # stopped on a signal with a complete checkpoint: resume it (EX_TEMPFAIL: try again later)
EXIT_STOPPED_AT_ONCE = 76  # a second signal: stopped at once, the previous checkpoint is intact
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class StopRequest:
    """Whether (and by which signal) this process was asked to stop."""

    def __init__(self) -> None:
        self.signal: int | None = None

    @property
    def requested(self) -> bool:
        return self.signal is not None

    def install(self) -> None:
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: object) -> None:
        name = signal.Signals(signum).name
        if self.signal is None:
            self.signal = signum
            print(f"hdbl train: {name}: finishing the work in flight, then a checkpoint (send it again to stop at "
                  "once)", file=sys.stderr, flush=True)
            return
        print(f"hdbl train: second signal ({name}): stopping at once; the last checkpoint written is intact",
              file=sys.stderr, flush=True)
        os._exit(EXIT_STOPPED_AT_ONCE)  # no MPI finalize, no cleanup that could hang: the job ends here

    def name(self) -> str:
        return signal.Signals(self.signal).name if self.signal is not None else ""


STOP = StopRequest()
