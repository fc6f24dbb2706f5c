"""Ranks and roles (method §2).

Rank 0 is the server, ranks 1..n_S are the small-batch workers and ranks n_S+1..n the large-batch workers.
With sharded servers (ps.servers = k > 1) ranks n+1..n+k-1 are the shard servers, after the workers, so that
the workers' ranks do not depend on k. Spares (ps.spares, under ULFM) are the last ranks: they set up like
workers, then idle until the server hands one a lost worker's role (ps/spare.py).

The groups are roles, not communicators: every exchange is point-to-point between a worker and the server on
the world communicator, and no collective runs inside a group. In ASP each worker commits on its own clock; a
collective inside a group would make every worker wait for the slowest of its group, which is what the method
avoids. The one split that has work is the host's shared-memory communicator (``local_comm``): one download per
host, and GPU placement by local rank.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from mpi4py import MPI

from hdbl_mpi.errors import WorldSizeError

SERVER, SMALL, LARGE, PEER, SHARD, SPARE = "server", "small", "large", "peer", "shard", "spare"


@dataclass
class World:
    comm: MPI.Intracomm
    local_comm: MPI.Comm  # the ranks on this host (shared memory), e.g. for one download per host
    rank: int
    size: int
    role: str
    local_rank: int
    local_size: int

    @property
    def is_server(self) -> bool:
        return self.role == SERVER

    @property
    def is_worker(self) -> bool:
        return self.role in (SMALL, LARGE, PEER)

    @property
    def trains(self) -> bool:
        """A worker, or a spare that may become one: both need the training data and the model as trained."""
        return self.is_worker or self.role == SPARE

    def describe(self) -> str:
        kind = "-batch worker" if self.is_worker else "" if self.role == SPARE else " server"
        return f"rank {self.rank}/{self.size} ({self.role}{kind})"


def role_of(rank: int, small: int) -> str:
    if rank == 0:
        return SERVER
    return SMALL if rank <= small else LARGE


def check_world_size(size: int, workers: int, small: int, servers: int = 1, spares: int = 0) -> None:
    """The world must hold exactly the servers, the configured workers and the spares; say how to launch it
    otherwise."""
    if size != workers + servers + spares:
        what = "1 server" if servers == 1 else f"ps.servers={servers} servers"
        extra = f" + ps.spares={spares} spares" if spares else ""
        fixed = servers + spares
        raise WorldSizeError(
            f"this job has {size} MPI rank(s) but the config asks for {what} + dual.workers={workers} workers "
            f"({small} small-batch, {workers - small} large-batch){extra} = {workers + fixed} ranks. Launch with "
            f"`mpirun -np {workers + fixed} ...`, or set --set dual.workers={size - fixed} "
            f"(and dual.small <= {max(size - fixed, 0)})."
        )


def make_world(workers: int, small: int, comm: MPI.Intracomm | None = None, servers: int = 1,
               spares: int = 0) -> World:
    """Split the job into roles; raises WorldSizeError identically on every rank (no collective is entered)."""
    comm = comm or MPI.COMM_WORLD
    check_world_size(comm.size, workers, small, servers, spares)
    role = SPARE if comm.rank >= workers + servers else SHARD if comm.rank > workers else role_of(comm.rank, small)
    local = comm.Split_type(MPI.COMM_TYPE_SHARED, key=comm.rank)
    return World(comm, local, comm.rank, comm.size, role, local.rank, local.size)


def make_peer_world(workers: int, comm: MPI.Intracomm | None = None) -> World:
    """Every rank a worker, no server (allreduce, LocalSGD)."""
    comm = comm or MPI.COMM_WORLD
    if comm.size != workers:
        raise WorldSizeError(
            f"this job has {comm.size} MPI rank(s) but the config asks for dual.workers={workers} data-parallel "
            f"workers and no server. Launch with `mpirun -np {workers} ...` (or `hdbl launch`), or set "
            f"--set dual.workers={comm.size}."
        )
    local = comm.Split_type(MPI.COMM_TYPE_SHARED, key=comm.rank)
    return World(comm, local, comm.rank, comm.size, PEER, local.rank, local.size)


def threads_per_rank(local_size: int, requested: int = 0) -> int:
    """Give each rank its share of this host's cores: torch would otherwise start one thread per core in every
    rank and the ranks would thrash."""
    if requested > 0:
        return requested
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // max(1, local_size))
