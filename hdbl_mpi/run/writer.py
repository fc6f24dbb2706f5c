"""Checkpoint files written in a background thread, so that the parameter server's loop (replies, merges) and
a data-parallel step do not wait for the disk (issue: "writing stays off the reply path").

One thread, one job at a time, in submission order: a checkpoint's rank files, then checkpoint.pt naming them,
then the pruning of older rank files, exactly as when they were written in line (run/book.py). What a job
writes must not change after it is submitted: the caller hands over copies (a snapshot of the weights, a deep
copy of the counters, rank states received over MPI). A failed write is raised in the caller's thread at the
next submit or at close(), which waits for the last write: the run's summary is written only after it.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable


class BackgroundWriter:
    """Runs write jobs in order in one daemon thread; remembers how long each took."""

    def __init__(self, seconds: list[float] | None = None, name: str = "hdbl-checkpoint") -> None:
        self._jobs: queue.Queue[Callable[[], None] | None] = queue.Queue()
        self._error: BaseException | None = None
        self.seconds = [] if seconds is None else seconds  # how long each job took (logs, benchmarks)
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            start = time.perf_counter()
            try:
                if self._error is None:  # after a failure, later checkpoints are not written over it
                    job()
            except BaseException as err:  # raised in the caller's thread by submit() or close()
                self._error = err
            finally:
                self.seconds.append(time.perf_counter() - start)
                self._jobs.task_done()

    def _raise(self) -> None:
        if self._error is not None:
            err, self._error = self._error, None
            raise err

    def submit(self, job: Callable[[], None]) -> None:
        """Queue `job`; raise the error of an earlier job that failed."""
        self._raise()
        self._jobs.put(job)

    def wait(self) -> None:
        """Block until every queued job is written; raise the error of one that failed."""
        self._jobs.join()
        self._raise()

    def close(self) -> None:
        """Wait for the queued jobs, stop the thread, raise a failure."""
        self._jobs.join()
        self._jobs.put(None)
        self._thread.join()
        self._raise()
