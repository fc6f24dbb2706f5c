"""One commit's exchange measured at start-up, for `dual.commit_interval: auto` (rules/commit_interval.py): the
whole model vector pushed by worker 1 and sent back by the server, as a commit does, plus the server's merge of
it (one fused interpolation over the vector, as ASP's merge)."""

from __future__ import annotations

import statistics
import time

import numpy as np
import torch
from mpi4py import MPI

from hdbl_mpi.comm.wire import TAG_PROBE


def exchange_seconds(comm: MPI.Intracomm, vector: np.ndarray, repeats: int = 3) -> float:
    """The median of `repeats` round trips as worker 1 sees them, plus the server's merge time; every rank of
    `comm` calls this (ranks other than 0 and 1 only receive the figure)."""
    figure = 0.0
    if comm.rank == 1:
        buffer = vector.copy()
        trips = []
        for _ in range(repeats):
            start = time.perf_counter()
            comm.Send(buffer, dest=0, tag=TAG_PROBE)
            comm.Recv(buffer, source=0, tag=TAG_PROBE)
            trips.append(time.perf_counter() - start)
        comm.send(statistics.median(trips), dest=0, tag=TAG_PROBE)
    elif comm.rank == 0:
        buffer = np.empty_like(vector)
        for _ in range(repeats):
            comm.Recv(buffer, source=1, tag=TAG_PROBE)
            comm.Send(buffer, dest=1, tag=TAG_PROBE)
        trip = comm.recv(source=1, tag=TAG_PROBE)
        weights, pushed = torch.from_numpy(vector.copy()), torch.from_numpy(buffer)
        start = time.perf_counter()
        weights.lerp_(pushed, 0.5)
        figure = trip + time.perf_counter() - start
    return float(comm.bcast(figure, root=0))
