"""A spare rank (ps.spares, under ULFM): set up like a worker, then idle until the server hands it a lost worker's
role, and from then on that worker (ps/worker.py), committing under its own rank.

Why spares and not a process spawned after the loss (MPI_Comm_spawn, ULFM's respawn pattern): with the Open MPI
we ship, 4 of 10 spawns after a failure crashed the job (bench/respawn_probe.py, docs/reliability.md), and a
spawn needs a free slot that mpirun, `hdbl launch` or srun must have left. A spare is started with the job by any
launcher; it costs its memory and its start-up, and while it waits it polls every IDLE_POLL_S (no core).

The server sends the take-over as a TAG_START header (the assignment, `replaces`: the lost rank) followed by the
global weights (TAG_TAKEOVER); at the end of the run every idle spare gets a TAG_START header with `stop`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from hdbl_mpi.comm.wire import REPLY, TAG_START, TAG_TAKEOVER
from hdbl_mpi.comm.world import role_of

if TYPE_CHECKING:
    import numpy as np
    from mpi4py import MPI

    from hdbl_mpi.comm.world import World
    from hdbl_mpi.startup import RunSetup

IDLE_POLL_S = 0.02  # a take-over waits this long at most for the spare to notice it


def wait_for_role(comm: MPI.Intracomm) -> np.ndarray:
    """Wait, for as long as the run lasts, for the server's take-over or stop header. No timeout: a spare may
    idle through a whole run, and under ULFM a lost server ends the wait with an error."""
    header = REPLY.empty()
    request = comm.Irecv(header, source=0, tag=TAG_START)
    while not request.Test():
        time.sleep(IDLE_POLL_S)
    return header


@dataclass(frozen=True)
class TakeOver:
    """A lost worker's role, as this spare took it."""

    world: World  # this rank's world, in the lost worker's group
    start_header: np.ndarray  # its first assignment
    replaces: int  # the lost rank


def take_role(setup: RunSetup) -> TakeOver | None:
    """Stand by; on a take-over, load the global weights and say what this rank now is; None when the run ended
    without needing this spare."""
    world = setup.world
    header = wait_for_role(world.comm)
    start = REPLY.unpack(header)
    if start["stop"]:
        return None
    world.comm.Recv(setup.flat.to_host(), source=0, tag=TAG_TAKEOVER)
    setup.flat.from_host()
    lost = int(start["replaces"])
    role = role_of(lost, setup.config.dual.small)
    print(f"hdbl train: spare rank {world.rank} takes over lost rank {lost}'s role ({role}-batch) at commit "
          f"{int(start['merged'])}", flush=True)
    return TakeOver(replace(world, role=role), header, lost)
