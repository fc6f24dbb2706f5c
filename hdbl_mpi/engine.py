"""Training steps and evaluation of one model on one device: the torch part of every training mode.

No MPI here: the parameter-server worker (and later the allreduce baselines) call these functions between
their exchanges, so the arithmetic of a step lives in one place.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn



def pick_device(requested: str, local_rank: int) -> torch.device:
    """`auto` gives each rank on a host its own GPU (by local rank) when there are GPUs, else the CPU."""
    if requested == "cpu":
        return torch.device("cpu")
    if requested.startswith("cuda") or requested == "auto":
        if not torch.cuda.is_available():
            if requested == "auto":
                return torch.device("cpu")
            from hdbl_mpi.errors import ConfigError

            raise ConfigError(f"train.device is {requested!r} but torch sees no CUDA device; use auto or cpu.")
        if ":" in requested:
            return torch.device(requested)
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device(requested)


def make_optimizer(model: nn.Module, lr: float, momentum: float, weight_decay: float) -> torch.optim.SGD:
    """SGD with momentum; weight decay is applied here once (the loss carries no extra L2 term)."""
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


@dataclass
class StepStats:
    steps: int
    samples: int
    loss_sum: float
    correct: int
    seconds: float


def train_steps(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    source,
    steps: int,
    batch_size: int,
    resolution: int,
    device: torch.device,
) -> StepStats:
    """Run `steps` SGD steps of `batch_size` samples from `source` (see hdbl_mpi.data.sources); loss and
    accuracy are accumulated on the device and read once at the end (no per-step host sync on a GPU)."""
    start = time.perf_counter()
    model.train()
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    done = samples = 0
    for inputs, labels in source.batches(steps, batch_size, resolution):
        logits = model(inputs)
        loss = F.cross_entropy(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_sum += loss.detach() * labels.numel()
        correct += (logits.detach().argmax(1) == labels).sum()
        done += 1
        samples += labels.numel()
    loss_value, correct_value = float(loss_sum), int(correct)
    if not torch.isfinite(torch.tensor(loss_value)):
        raise FloatingPointError(
            f"training loss became {loss_value} at batch size {batch_size}, lr {optimizer.param_groups[0]['lr']}; "
            "lower train.lr."
        )
    return StepStats(done, samples, loss_value, correct_value, time.perf_counter() - start)


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
