"""Throughput settings of the training ranks, in one place: cuDNN's autotuner (`train.cudnn_benchmark`), the
channels-last memory format (`train.channels_last`) and torch.compile (`train.compile`, the counterpart of the
original code's `--xla`). None of them changes the arithmetic a user asked for; each is recorded in
summary.json (`model.throughput`), with what it came to on this device.

- cuDNN autotuning picks the fastest convolution algorithm per input shape on its first use. The shapes change
  only at stage boundaries (a new resolution) and at a re-plan (a new B_S), so it is on by default on CUDA.
- channels-last stores 4-d tensors as NHWC, which Tensor Cores and oneDNN prefer. The model's 4-d parameters
  become channels-last views of the flat vector (comm/wire.py keeps the wire order plain), and a forward
  pre-hook gives the model channels-last inputs, so training, evaluation and the profiler all use it.
- torch.compile compiles one graph per input shape (batch, resolution, dropout) on its first call, which takes
  seconds to minutes. :class:`CompileWarmup` does that on a zero batch whose step is thrown away, before the
  clock of the first timed step starts, so compile time is in neither a commit's compute time (which the
  server's balancing reads) nor the profile.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from hdbl_mpi.errors import ConfigError
from hdbl_mpi.precision import Precision

if TYPE_CHECKING:
    from hdbl_mpi.schema import TrainConfig

# Graphs kept per compiled model: resolutions x batch sizes x dropout values x train/eval, with room for re-plans.
RECOMPILE_LIMIT = 64


@dataclass(frozen=True)
class Throughput:
    """What the throughput settings came to on one rank (summary.json `model.throughput`)."""

    cudnn_benchmark: bool  # in effect: asked for, and some rank trains on CUDA
    channels_last: bool  # the model's 4-d tensors are channels-last
    compile: bool

    def to_dict(self) -> dict[str, bool]:
        return asdict(self)


def throughput_of(train: TrainConfig, ranks: Sequence[Any], shapes: Sequence[tuple[int, ...]]) -> Throughput:
    """What the settings came to for a run: cuDNN's autotuner counts where some rank (`ranks`: their RankInfo,
    `device` "host:device") trains on CUDA, channels-last where the model (its `shapes`) has 4-d tensors."""
    on_cuda = any(":cuda" in info.device for info in ranks)
    return Throughput(cudnn_benchmark=train.cudnn_benchmark and on_cuda,
                      channels_last=train.channels_last and any(len(s) == 4 for s in shapes), compile=train.compile)


def _channels_last_inputs(module: nn.Module, args: tuple) -> tuple:
    first = args[0]
    if isinstance(first, torch.Tensor) and first.dim() == 4:
        return (first.contiguous(memory_format=torch.channels_last), *args[1:])
    return args


def use_channels_last(model: nn.Module) -> bool:
    """Store the model's 4-d tensors channels-last and give it channels-last inputs; False (and nothing done)
    for a model without 4-d tensors (an MLP), where the format means nothing."""
    if not any(t.dim() == 4 for t in [*model.parameters(), *model.buffers()]):
        return False
    model.to(memory_format=torch.channels_last)
    model.register_forward_pre_hook(_channels_last_inputs)
    return True


def cpp_compiler() -> str | None:
    """The C++ compiler torch.compile will use ($CXX, else g++, else c++), or None without one."""
    for name in (os.environ.get("CXX") or "g++", "c++"):
        found = shutil.which(name)
        if found:
            return found
    return None


def compile_model(model: nn.Module) -> None:
    """Compile the model's forward in place (its parameters, state dict and modules stay the same objects),
    one static graph per input shape. torch.compile's code generator builds its kernels (C++ on the CPU, Triton's
    launchers on a GPU) with the host's C++ compiler: without one the first step would fail deep inside
    inductor, so its absence is said here, up front."""
    import torch._dynamo.config

    if cpp_compiler() is None:
        raise ConfigError(f"train.compile needs a C++ compiler ({os.environ.get('CXX') or 'g++'} or c++ on PATH; "
                          "torch.compile builds its kernels with it) and this host has none: install one (Debian: "
                          "apt-get install g++) or set train.compile=false.")

    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
    model.compile(dynamic=False)


class CompileWarmup:
    """Compiles a compiled model's graph for a (batch, resolution) before it is timed: one forward and backward
    of a zero batch under the run's precision, whose effects are undone (BatchNorm statistics restored, no
    gradient kept, the random number generators as they were). Backward runs through `torch.autograd.grad`,
    which fills no `.grad`, so the gradient hooks of the allreduce exchanges do not fire."""

    def __init__(self, model: nn.Module, channels: int) -> None:
        self.model, self.channels = model, channels
        self.seen: set[tuple] = set()

    def __call__(self, batch: int, resolution: int, precision: Precision) -> None:
        dropouts = tuple(m.p for m in self.model.modules() if isinstance(m, nn.Dropout))
        key = (batch, resolution, dropouts, self.model.training, precision.name)
        if key in self.seen:
            return
        device = precision.device
        saved = [b.detach().clone() for b in self.model.buffers()]
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            inputs = torch.zeros(batch, self.channels, resolution, resolution, device=device)
            labels = torch.zeros(batch, dtype=torch.long, device=device)
            with precision.autocast():
                loss = F.cross_entropy(self.model(inputs), labels)
            params = [p for p in self.model.parameters() if p.requires_grad]
            torch.autograd.grad(loss, params)
        with torch.no_grad():
            for buffer, value in zip(self.model.buffers(), saved, strict=True):
                buffer.copy_(value)
        self.seen.add(key)
