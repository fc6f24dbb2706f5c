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
"""

from __future__ import annotations

import os
import sys


def leave(code: int) -> None:
    """End this process now with `code`, after flushing its output; MPI is not finalized."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
