"""Training steps and evaluation of one model on one device: the torch part of every training mode.

No MPI here: the parameter-server worker (and later the allreduce baselines) call these functions between
their exchanges, so the arithmetic of a step lives in one place.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from hdbl_mpi.errors import ResourceError
from hdbl_mpi.precision import Precision

if TYPE_CHECKING:
    from hdbl_mpi.throughput import CompileWarmup


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


@dataclass
class StepStats:
    steps: int
    samples: int
    loss_sum: float
    correct: int
    seconds: float  # the steps' wall time, emulated slowness included
    slowed_s: float = 0.0  # of which slept to emulate a slow rank (debug.slow, hdbl_mpi/run/slow.py)
    waited_s: float = 0.0  # of which waited for the other ranks' gradients (the exchange's own account)

    @property
    def own_s(self) -> float:
        """This rank's own time for the steps: its speed, whatever the other ranks did."""
        return self.seconds - self.waited_s


def is_out_of_memory(err: BaseException) -> bool:
    """Whether `err` means "this batch does not fit": CUDA's OutOfMemoryError, Python's MemoryError (the
    profiler's budget overrun is one), or the RuntimeError some back-ends (the CPU allocator, cuDNN, MPS) raise
    instead. The one test, used by training and by the profiler's back-off alike."""
    if isinstance(err, (torch.OutOfMemoryError, MemoryError)):
        return True
    text = str(err).lower()
    return isinstance(err, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def out_of_memory(err: BaseException, batch_size: int, resolution: int, device: torch.device) -> ResourceError:
    """The error a user sees instead of an allocator traceback: what ran out, where, and how to size it."""
    first = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
    return ResourceError(
        f"out of memory on {device} at batch size {batch_size}, {resolution} px ({first}). The batch does not fit "
        "this device: measure the largest one that does with `hdbl profile --model NAME --resolutions "
        f"{resolution}` (or set dual.profile: auto, which takes B_L from that measurement), or lower "
        "dual.batch_large, the resolution or the model size."
    )


class StepPacer(Protocol):
    """Emulated slowness after each step (hdbl_mpi.run.slow.Slowdown): sleeps, and says how long."""

    def pad(self, batch: int, resolution: int, compute_s: float) -> float: ...


class GradientExchange(Protocol):
    """Averages gradients across data-parallel ranks inside a step (see hdbl_mpi.baselines.allreduce)."""

    def zero_grad(self) -> None: ...

    def finish(self) -> float:
        """Complete the step's reduction; the seconds this step waited for the other ranks (here, or inside
        backward where the library waits there)."""
        ...


def train_steps(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    source,
    steps: int,
    batch_size: int,
    resolution: int,
    device: torch.device,
    *,
    exchange: GradientExchange | None = None,
    lr_of_step: Callable[[int], float] | None = None,
    after_step: Callable[[int, torch.Tensor, int], None] | None = None,
    check_finite: bool = True,
    precision: Precision | None = None,
    warm_up: CompileWarmup | None = None,
    pacer: StepPacer | None = None,
    loss_scale: float = 1.0,
) -> StepStats:
    """Run `steps` optimizer steps of `batch_size` samples from `source` (see hdbl_mpi.data.sources); loss and
    accuracy are accumulated on the device and read once at the end (no per-step host sync on a GPU).

    The data-parallel baselines hook in here rather than copying the loop: `exchange` averages the gradients
    between backward and step, `lr_of_step(i)` sets a per-step LR (warm-up, cosine), and `after_step(i, loss,
    samples)` runs after each step (LocalSGD's model averaging every H steps). `check_finite`: see _finite.
    `precision` (hdbl_mpi.precision; None: fp32) runs the forward pass under autocast and the step through its
    gradient scaler. `warm_up` (train.compile) compiles this batch size and resolution's graph before the clock
    starts. `pacer` (debug.slow) is told each step's own time (its draw included, the wait for the other ranks'
    gradients not, as the exchange accounts it) and sleeps to emulate a slow rank. `loss_scale` multiplies the
    loss that is differentiated (not the one reported): a speed-weighted allreduce weighs each rank's mean
    gradient by its share of the step's samples that way."""
    mixed = precision or Precision("fp32", device)
    model.train()
    if warm_up is not None:
        warm_up(batch_size, resolution, mixed)
    start = time.perf_counter()
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    done = samples = 0
    mark, slowed, waited_total = start, 0.0, 0.0
    for inputs, labels in source.batches(steps, batch_size, resolution):
        if lr_of_step is not None:
            set_lr(optimizer, lr_of_step(done))
        logits, loss = _forward_backward(model, optimizer, inputs, labels, mixed, exchange, batch_size, resolution,
                                         device, loss_scale)
        waited = exchange.finish() if exchange is not None else 0.0  # no part of this rank's own time
        waited_total += waited
        mixed.step(optimizer, synchronized=exchange is not None)
        loss_sum += loss.detach() * labels.numel()
        correct += (logits.detach().argmax(1) == labels).sum()
        done += 1
        samples += labels.numel()
        if pacer is not None:
            if device.type == "cuda":  # the step's own time, not its launch
                torch.cuda.synchronize(device)
            slowed += pacer.pad(batch_size, resolution, time.perf_counter() - mark - waited)
        if after_step is not None:
            after_step(done, loss.detach(), labels.numel())
        mark = time.perf_counter()  # the next step's time starts here (LocalSGD's averaging is not a step's)
    loss_value = _finite(float(loss_sum), check_finite, batch_size, optimizer)
    return StepStats(done, samples, loss_value, int(correct), time.perf_counter() - start, slowed, waited_total)


def _finite(loss: float, check: bool, batch_size: int, optimizer: torch.optim.Optimizer) -> float:
    """The steps' summed loss; a non-finite one raises, saying what to lower, unless the caller takes it
    (a parameter-server worker pushes it flagged and the server rejects the push)."""
    if check and not math.isfinite(loss):
        raise FloatingPointError(f"training loss became {loss} at batch size {batch_size}, lr "
                                 f"{optimizer.param_groups[0]['lr']}; lower train.lr.")
    return loss


def _forward_backward(model: nn.Module, optimizer: torch.optim.Optimizer, inputs: torch.Tensor, labels: torch.Tensor,
                      mixed: Precision, exchange: GradientExchange | None, batch_size: int, resolution: int,
                      device: torch.device, loss_scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, loss) of one batch, gradients computed; running out of memory becomes a ResourceError that says
    which batch size and resolution did not fit."""
    try:
        with mixed.autocast():
            logits = model(inputs)
            loss = F.cross_entropy(logits, labels)
        if exchange is None:
            optimizer.zero_grad()  # set_to_none by default; Horovod's wrapper takes no arguments
        else:
            exchange.zero_grad()
        mixed.backward(loss if loss_scale == 1.0 else loss * loss_scale)
    except (torch.OutOfMemoryError, MemoryError, RuntimeError) as err:
        if not is_out_of_memory(err):
            raise
        raise out_of_memory(err, batch_size, resolution, device) from None
    return logits, loss


@torch.no_grad()
def evaluate(model: nn.Module, source, resolution: int, batch_size: int, device: torch.device) -> tuple[float, float]:
    """Mean cross-entropy and top-1 accuracy on the test split of `source`."""
    model.eval()
    loss_sum, correct, total = 0.0, 0, 0
    for inputs, labels in source.batches(None, batch_size, resolution):
        logits = model(inputs)
        labels = labels.to(device)
        loss_sum += float(F.cross_entropy(logits, labels, reduction="sum"))
        correct += int((logits.argmax(1) == labels).sum())
        total += labels.numel()
    return loss_sum / max(total, 1), correct / max(total, 1)
