"""A heartbeat for ULFM's failure detector while a rank computes.

Open MPI's detector hears from a rank only while that rank is inside the MPI library. Importing torch, loading
data, building a model or a long commit are all seconds without an MPI call, and the detector then declares a
healthy rank dead and aborts it (measured here: ../shared/notes/ulfm_and_netns.md). Open MPI's own detector
thread is unstable in 5.0.x, so this thread enters MPI every `period_s` with a probe on a private
communicator that never carries a message. It needs MPI_THREAD_MULTIPLE, mpi4py's default.
"""

from __future__ import annotations

import threading

from mpi4py import MPI


class KeepAlive:
    def __init__(self, comm: MPI.Intracomm, period_s: float) -> None:
        self._comm = comm.Dup()  # collective: every rank creates its keep-alive at the same point
        self._comm.Set_errhandler(MPI.ERRORS_RETURN)
        self._period = period_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="hdbl-keepalive", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._period):
            try:
                self._comm.Iprobe(source=MPI.ANY_SOURCE, tag=0)
            except MPI.Exception:  # a dead peer: the main thread finds out and handles it
                pass

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
