"""The server's evaluations, in a background thread on snapshots of the global weights (method §5).

Evaluating in the server's own loop would hold every reply for the length of a test pass; a thread on a copy of
W keeps the workers' commits flowing, and its time is reported apart from training time. No MPI in the thread.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass

import torch
from torch import nn

from hdbl_mpi.comm.wire import FlatState, TimeoutWaiting
from hdbl_mpi.data.sources import BatchSource
from hdbl_mpi.engine import evaluate

FINAL = 0  # the epoch number of the final evaluation (the final model at the top resolution)


@dataclass(frozen=True)
class EvalResult:
    epoch: int  # FINAL for the final model
    loss: float
    acc: float
    seconds: float
    resolution: int


class Evaluator:
    """Evaluates snapshots of the global weights in a background thread, in submission order."""

    def __init__(self, model: nn.Module, source: BatchSource, batch_size: int, device: torch.device) -> None:
        self._model, self._device = model, device
        self._flat = FlatState(model)
        self._source, self._batch = source, batch_size
        self._todo: queue.Queue = queue.Queue()
        self._done: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="hdbl-eval", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._todo.get()
            if item is None:
                return
            epoch, snapshot, resolution = item
            try:
                start = time.perf_counter()
                self._flat.load(snapshot)
                loss, acc = evaluate(self._model, self._source, resolution, self._batch, self._device)
                self._done.put(EvalResult(epoch, loss, acc, time.perf_counter() - start, resolution))
            except BaseException as err:  # surfaced in the main thread by results()
                self._done.put(err)

    def submit(self, epoch: int, snapshot: torch.Tensor, resolution: int) -> None:
        """Evaluate `snapshot` at `resolution` as the model after `epoch` (FINAL: the final model)."""
        self._todo.put((epoch, snapshot, resolution))

    def results(self) -> list[EvalResult]:
        out: list[EvalResult] = []
        while True:
            try:
                item = self._done.get_nowait()
            except queue.Empty:
                return out
            if isinstance(item, BaseException):
                raise item
            out.append(item)

    def finish(self, timeout_s: float) -> list[EvalResult]:
        self._todo.put(None)
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            raise TimeoutWaiting(f"evaluation did not finish within {timeout_s:.0f} s")
        return self.results()
