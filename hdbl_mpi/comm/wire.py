"""The one wire format: model <-> flat float32 vector, message tags, control headers, bounded waits.

A commit moves the whole model state (parameters and floating-point BatchNorm buffers) as ONE contiguous
float32 vector. On the CPU the model's tensors are re-pointed to views of that vector, so the numpy array MPI
sends from and receives into *is* the model: a push and a pull copy nothing. On a GPU (or in the channels-last
memory format) one host vector, pinned on a GPU, is the staging area (one copy per direction). Integer buffers
such as BatchNorm's ``num_batches_tracked`` are not exchanged: they only count steps and do not affect training
with momentum BN.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

# Message tags. Headers are small float64 arrays sent before the weight vector they describe.
TAG_PUSH_HEADER = 11
TAG_PUSH_WEIGHTS = 12
TAG_REPLY_HEADER = 21
TAG_REPLY_WEIGHTS = 22
TAG_START = 23  # the server's first assignment to a worker, a REPLY header, at start-up
TAG_TAKEOVER = 24  # the global weights a spare starts from, after its TAG_START header (ps/spare.py)
TAG_RECORD = 31  # one pickled commit record (a small dict), worker -> server, off the hot path
TAG_STATE = 32  # (requested, RankState) pickled, worker -> server, before the record: for a checkpoint
TAG_PROBE = 41  # start-up: the model vector to and fro between the server and worker 1 (comm/probe.py)
STATE_FINAL = -1  # `requested` of the state a worker sends with its stop reply (its last)


class TimeoutWaiting(RuntimeError):
    """A bounded wait ran out: the peer is gone, stalled, or the timeout is too short for this job."""


def _state_tensors(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    named: list[tuple[str, torch.Tensor]] = [(f"param:{n}", p) for n, p in model.named_parameters()]
    named += [(f"buffer:{n}", b) for n, b in model.named_buffers() if b.is_floating_point()]
    return named


class FlatState:
    """All floating-point state of a model in one contiguous float32 vector.

    After construction the model's parameters and float buffers are views into ``self.vector`` (on the model's
    device). ``host`` is what MPI sends and receives, always in the *wire order*: each tensor's elements in
    row-major (NCHW) order, one after the other, so every rank, the server's merge and every checkpoint agree on
    what element i is, whatever memory format a rank trains in. On the CPU in the plain layout ``host`` is the
    vector itself (a push and a pull copy nothing). With `channels_last` the 4-d tensors are channels-last views
    of the vector, and on a GPU the vector lives in device memory; then ``host`` is a separate (pinned, on a
    GPU) array and :meth:`to_host` / :meth:`from_host` reorder and copy once per exchange.
    """

    def __init__(self, model: nn.Module, channels_last: bool = False) -> None:
        named = _state_tensors(model)
        for name, tensor in named:
            if tensor.dtype != torch.float32:
                raise TypeError(f"{name} is {tensor.dtype}; the wire format carries float32 only")
        self.names = [n for n, _ in named]
        self.shapes = [tuple(t.shape) for _, t in named]
        self.numel = sum(t.numel() for _, t in named)
        self.params_numel = sum(t.numel() for n, t in named if n.startswith("param:"))  # they come first
        self.channels_last = channels_last and any(len(s) == 4 for s in self.shapes)
        device = named[0][1].device
        self.vector = torch.empty(self.numel, dtype=torch.float32, device=device)
        self._views: list[torch.Tensor] = []  # each tensor's view of the vector, in the model's memory format
        offset = 0
        modules = dict(model.named_modules())
        for name, tensor in named:
            view = self._view(offset, tensor.shape)
            view.copy_(tensor.detach())
            kind, dotted = name.split(":", 1)
            owner_name, _, attr = dotted.rpartition(".")
            owner = modules[owner_name]
            if kind == "param":
                owner._parameters[attr].data = view
            else:
                owner._buffers[attr] = view
            self._views.append(view)
            offset += tensor.numel()
        self._direct = device.type == "cpu" and not self.channels_last
        if self._direct:
            self._host = self.vector
        else:
            self._host = torch.empty(self.numel, dtype=torch.float32, pin_memory=device.type == "cuda")
        self.host = self._host.numpy()
        # Where the wire order is assembled on the vector's device before one copy to the host (a reordering GPU).
        self._staging = self.vector.new_empty(self.numel) if self.channels_last and device.type == "cuda" else None

    def _view(self, offset: int, shape: torch.Size) -> torch.Tensor:
        n = shape.numel()
        if self.channels_last and len(shape) == 4:
            c, h, w = shape[1], shape[2], shape[3]
            return self.vector.as_strided(shape, (h * w * c, 1, w * c, c), offset)
        return self.vector[offset : offset + n].view(shape)

    @property
    def nbytes(self) -> int:
        return self.numel * 4

    def layout(self) -> dict[str, list]:
        """The names and shapes of the vector's pieces, in order (kept in checkpoints: train.init_from)."""
        return {"names": list(self.names), "shapes": [list(s) for s in self.shapes]}

    def _pairs(self, flat: torch.Tensor) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(the model's view, its piece of `flat` in the wire order), tensor by tensor."""
        offset = 0
        for view in self._views:
            n = view.numel()
            yield view, flat[offset : offset + n].view(view.shape)
            offset += n

    def _gather(self, into: torch.Tensor) -> None:
        for view, piece in self._pairs(into):
            piece.copy_(view)

    def _scatter(self, source: torch.Tensor) -> None:
        for view, piece in self._pairs(source):
            view.copy_(piece)

    def to_host(self) -> np.ndarray:
        """Make ``host`` hold the current model state in the wire order (a no-op on the CPU in the plain layout).
        A GPU's copy goes into pinned memory without blocking the host, then waits for that copy only."""
        if self._direct:
            return self.host
        if self.vector.device.type == "cpu":
            self._gather(self._host)
            return self.host
        source = self.vector
        if self._staging is not None:
            self._gather(self._staging)
            source = self._staging
        self._host.copy_(source, non_blocking=True)
        torch.cuda.current_stream(self.vector.device).synchronize()
        return self.host

    def from_host(self) -> None:
        """Load ``host`` (wire order) into the model (a no-op on the CPU in the plain layout)."""
        if self._direct:
            return
        if self.vector.device.type == "cpu":
            self._scatter(self._host)
            return
        target = self._staging if self._staging is not None else self.vector
        target.copy_(self._host, non_blocking=True)  # ordered before any later kernel on this stream
        if self._staging is not None:
            self._scatter(self._staging)

    def snapshot(self) -> torch.Tensor:
        """A CPU copy of the state in the wire order: what a checkpoint keeps."""
        return torch.from_numpy(self.to_host()).clone()

    def load(self, vector: torch.Tensor) -> None:
        """Set the model's state from a vector in the wire order (a checkpoint's, a snapshot's)."""
        self._host.copy_(vector.reshape(-1))
        self.from_host()


@dataclass(frozen=True)
class HeaderLayout:
    """Named fields of a small float64 control message, defined once for sender and receiver."""

    fields: tuple[str, ...]

    def empty(self) -> np.ndarray:
        return np.zeros(len(self.fields), dtype=np.float64)

    def pack(self, **values: float) -> np.ndarray:
        unknown = set(values) - set(self.fields)
        if unknown:
            raise KeyError(f"unknown header fields {sorted(unknown)}")
        return np.array([float(values.get(f, 0.0)) for f in self.fields], dtype=np.float64)

    def unpack(self, array: np.ndarray) -> dict[str, float]:
        return {f: float(v) for f, v in zip(self.fields, array, strict=True)}


# Worker -> server, before the pushed weights.
# `signal`: the worker was sent SIGTERM/SIGUSR1 and asks the server to stop the run cleanly (run/signals.py).
PUSH = HeaderLayout(("local_commit", "samples", "steps", "batch", "resolution", "loss_sum", "correct", "compute_s",
                     "finite", "signal"))
# Server -> worker, before the merged weights (and alone, as TAG_START, at start-up). The worker's next assignment
# (stage .. share, see hdbl_mpi.ps.assign) and the reply's control fields; `state_at` > 0 asks for the worker's own
# state as of that commit, for the checkpoint covering it (run/rankstate.py). `replaces`: in a spare's TAG_START,
# the lost worker whose role it takes (ps/spare.py); `chaos` > 0: the drill's order to die after that fraction of
# the next commit's compute (debug.chaos, ps/chaos.py).
REPLY = HeaderLayout(("global_commit", "epoch", "lr", "stop", "merged", "held_s", "batch", "stage", "resolution",
                      "dropout", "rejected", "share", "state_at", "replaces", "chaos"))


class Backoff:
    """Polling pace for waits on MPI: spin for a moment, then sleep a little longer each time, up to 1 ms.

    Open MPI's blocking waits busy-poll, which would steal a core from the training ranks that share the host
    for as long as a wait lasts (seconds in BSP/SSP). Spinning only for the first `spin_s` keeps the common
    short waits (a reply a few ms after a push) at full speed; a longer wait costs at most ~1 ms of latency.
    """

    def __init__(self, spin_s: float = 2e-3, cap_s: float = 1e-3) -> None:
        self.spin_s, self.cap_s = spin_s, cap_s
        self.reset()

    def reset(self) -> None:
        self._since = time.perf_counter()
        self._sleep = 0.0

    def pause(self) -> None:
        if time.perf_counter() - self._since < self.spin_s:
            return
        self._sleep = min(self.cap_s, self._sleep * 2 if self._sleep else 5e-5)
        time.sleep(self._sleep)


def wait_bounded(request, timeout_s: float, what: str, spin_s: float = 0.02) -> None:
    """Wait for an MPI request without blocking forever and without spinning a core for long; give up after
    `timeout_s` with an error that says what was awaited.

    The default spin covers a reply that comes within a receive + merge + send of a large model (~20 ms), so
    the reply is picked up at once; longer waits (BSP/SSP barriers) fall back to short sleeps."""
    deadline = time.monotonic() + timeout_s
    backoff = Backoff(spin_s=spin_s)
    while not request.Test():
        if time.monotonic() > deadline:
            request.Cancel()
            raise TimeoutWaiting(
                f"waited {timeout_s:.0f} s for {what}; the peer is gone or stalled. If commits are legitimately "
                "slower, raise ps.timeout_s."
            )
        backoff.pause()
