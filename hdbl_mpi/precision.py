"""Mixed precision in one place, for the profiler and every trainer (parameter-server workers, allreduce with
either backend, LocalSGD): `fp32`, `amp` (float16 autocast with a gradient scaler; CUDA only) or `bf16`
(bfloat16 autocast, no scaler; CUDA or CPU).

Only the forward pass and its activations run in the lower precision: the master weights, the gradients, the
optimizer state, a worker's pushes and the server's merges stay float32, so the parameter server and the
checkpoints do not change with the precision. With `amp` the scaler skips a step whose gradients overflowed
and lowers its scale; that is not a divergence (a push is still checked for non-finite weights as in fp32).

Horovod's `DistributedOptimizer` reduces the gradients inside `step()`, so the scaler must not unscale them
before that: as Horovod documents for AMP, `synchronize()` first, then `unscale_`, then the step with
`skip_synchronize()`. The mpi4py exchange has averaged them before `step()` and DDP during backward.

torch is imported by the methods that use it, so that the config check can ask `PRECISIONS` without loading it.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

from hdbl_mpi.errors import ConfigError

if TYPE_CHECKING:
    import torch

PRECISIONS = ("fp32", "amp", "bf16")  # train.precision
_DTYPES = {"amp": "float16", "bf16": "bfloat16"}  # torch dtypes of the autocast regions


def check_precision(precision: str, device: torch.device, key: str = "train.precision") -> None:
    """Refuse a precision this device cannot train in, saying what to use instead (`key`: the setting's name)."""
    if precision not in PRECISIONS:
        raise ConfigError(f"{key} is {precision!r}; use one of {', '.join(PRECISIONS)}.")
    if precision == "amp" and device.type != "cuda":
        raise ConfigError(f"{key}=amp (float16 with a gradient scaler) needs a CUDA device, and this rank runs on "
                          f"{device}: use {key}=bf16 (bfloat16, which also runs on the CPU) or fp32.")


class Precision:
    """Autocast, backward and optimizer step at one precision; holds the gradient scaler (amp) across steps,
    commits and, through :meth:`state_dict`, a resume."""

    def __init__(self, precision: str, device: torch.device, key: str = "train.precision") -> None:
        import torch

        check_precision(precision, device, key)
        self.name, self.device = precision, device
        self.dtype = getattr(torch, _DTYPES[precision]) if precision in _DTYPES else None
        self.scaler = torch.amp.GradScaler("cuda") if precision == "amp" else None

    def autocast(self) -> contextlib.AbstractContextManager:
        import torch

        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def backward(self, loss: torch.Tensor) -> None:
        (loss if self.scaler is None else self.scaler.scale(loss)).backward()

    def step(self, optimizer: torch.optim.Optimizer, synchronized: bool = False) -> None:
        """The optimizer step (through the scaler with amp). `synchronized`: the exchange has already completed
        the reduction (with Horovod, called optimizer.synchronize()), so Horovod must not reduce again."""
        horovod: Any = optimizer if hasattr(optimizer, "skip_synchronize") else None
        if self.scaler is None:
            with horovod.skip_synchronize() if horovod is not None and synchronized else contextlib.nullcontext():
                optimizer.step()
            return
        if horovod is not None:  # Horovod: reduce the scaled gradients, then unscale
            if not synchronized:
                horovod.synchronize()
            self.scaler.unscale_(optimizer)
            with horovod.skip_synchronize():
                self.scaler.step(optimizer)
        else:
            self.scaler.step(optimizer)
        self.scaler.update()

    def state_dict(self) -> dict[str, Any]:
        return {} if self.scaler is None else self.scaler.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)
