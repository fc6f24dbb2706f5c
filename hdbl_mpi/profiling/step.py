"""The timed step of the profiler: one real training step of the configured model, optimizer, precision and
memory format on a batch of a given size, and the timing of a sweep of batch sizes (method §4).

The step is the trained step, so a profile measures what a commit will cost; its batches come from a generated
pool, or from the config's own data (`hdbl profile --config`), whose draw time is recorded apart.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from hdbl_mpi.data.batches import make_batch
from hdbl_mpi.precision import Precision, check_precision

if TYPE_CHECKING:
    from hdbl_mpi.data.sources import BatchSource
    from hdbl_mpi.throughput import CompileWarmup


SOURCE_STREAM_STEPS = 64  # batches per stream drawn from a real source before a fresh one (a new epoch) starts


OptimizerFactory = Callable[[nn.Module], torch.optim.Optimizer]


class TrainingStep:
    """One real training step of a model on a random batch of a given size: what is timed and what is measured.

    A class rather than a closure so that the memory fallback (:func:`peak_memory` without a resettable RSS)
    can reach the model and optimizer to count their bytes. Every call reuses the same optimizer (and grad
    scaler), so repeated calls leave no growing state behind.

    With a `source` (`hdbl profile --config`: the config's own data, decoded as training decodes it) the step
    draws its batches from it, one stream per batch size, and `input_s` keeps the seconds each draw took, so
    the profile says how much of tau(B) is the input pipeline.
    """

    def __init__(
        self,
        model: nn.Module,
        num_classes: int,
        in_channels: int,
        resolution: int,
        device: torch.device,
        precision: str,
        pool_size: int,
        seed: int,
        optimizer: OptimizerFactory | None = None,
        source: BatchSource | None = None,
    ) -> None:
        self.model = model
        self.device = device
        self.precision = precision
        self.num_classes = num_classes
        self.resolution = resolution
        self.optimizer = (optimizer(model) if optimizer is not None else  # the run's own (dual.profile: auto)
                          torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4))
        self.mixed = Precision(precision, device, "precision")  # the trainers' own autocast and scaler
        self.generator = torch.Generator().manual_seed(seed)
        # Images stay uint8 on the CPU, as the training data sets do, so the per-sample cost of indexing,
        # augmenting, converting and copying a batch is part of the measured slope a, as it is in training.
        self.pool = torch.randint(
            0, 256, (pool_size, in_channels, resolution, resolution), dtype=torch.uint8, generator=self.generator
        )
        self.mean = (0.5,) * in_channels
        self.std = (0.25,) * in_channels
        self.source = source
        self.streams: dict[int, Iterator[tuple[torch.Tensor, torch.Tensor]]] = {}
        self.input_s: dict[int, list[float]] = {}
        self.warm_up: CompileWarmup | None = None  # a compiled model (train.compile): see prepare()

    def prepare(self, batch: int) -> None:
        """Compile a compiled model's graph for `batch` now, so that neither a timed step nor a memory peak
        includes the compiler (its time, or on a CPU its own memory)."""
        if self.warm_up is not None:
            self.warm_up(batch, self.resolution, self.mixed)

    def _draw(self, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.source is None:
            index = torch.randint(0, self.pool.shape[0], (batch,), generator=self.generator)
            inputs = make_batch(self.pool, index, self.resolution, self.mean, self.std, augment=True,
                                generator=self.generator, device=self.device)
            labels = torch.randint(0, self.num_classes, (batch,), generator=self.generator)
            return inputs, labels.to(self.device, non_blocking=True)
        start = time.perf_counter()
        drawn = next(self.streams.get(batch) or iter(()), None)
        if drawn is None:  # a stream per batch size, as long as a training commit's (sizes are taken in turn)
            self.streams[batch] = iter(self.source.batches(SOURCE_STREAM_STEPS, batch, self.resolution))
            drawn = next(self.streams[batch])
        _sync(self.device)
        self.input_s.setdefault(batch, []).append(time.perf_counter() - start)
        return drawn

    def __call__(self, batch: int) -> None:
        if batch < 1:
            raise ValueError(f"batch must be >= 1, got {batch}")
        self.model.train()
        inputs, labels = self._draw(batch)
        self.optimizer.zero_grad(set_to_none=True)
        with self.mixed.autocast():
            loss = F.cross_entropy(self.model(inputs), labels)
        self.mixed.backward(loss)
        self.mixed.step(self.optimizer)


def _check_precision(precision: str, device: torch.device) -> None:
    check_precision(precision, device, "precision")


def make_training_step(
    model: nn.Module,
    num_classes: int,
    in_channels: int,
    resolution: int,
    device: torch.device,
    precision: str = "fp32",
    pool_size: int = 4096,
    seed: int = 0,
    optimizer: OptimizerFactory | None = None,
    source: BatchSource | None = None,
) -> TrainingStep:
    """`step(batch)` doing one real training step of `model` (already on `device`), as training does it.

    Timing a forward pass alone, or a step without the batch pipeline, would underestimate a and b and give a
    plan whose commits do not take the time it promises; so the step is the real thing: augmentation,
    cross-entropy, backward and an update by `optimizer(model)` (default SGD, momentum 0.9, weight decay 1e-4;
    `dual.profile: auto` passes the run's own), at `precision` (hdbl_mpi.precision), on batches of `source`
    (the config's data) or of a generated in-memory pool.
    """
    device = torch.device(device)
    _check_precision(precision, device)
    if pool_size < 1:
        raise ValueError(f"pool_size must be >= 1, got {pool_size}")
    return TrainingStep(model, num_classes, in_channels, resolution, device, precision, pool_size, seed, optimizer,
                        source)


def _sync(device: torch.device | None) -> None:
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(
    step: Callable[[int], None],
    batch: int,
    steps: int = 20,
    warmup: int = 2,
    device: torch.device | None = None,
) -> list[float]:
    """Seconds of each of `steps` timed steps at `batch`, after `warmup` untimed ones.

    Warm-up steps absorb one-time costs (kernel selection, allocator growth, lazy initialisation) that a
    training run pays once, not per step. On CUDA the device is synchronised around each timed step, because
    kernel launches are asynchronous and the host clock would otherwise measure only the launch.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    device = torch.device(device) if device is not None else None
    for _ in range(max(0, warmup)):
        step(batch)
    seconds = []
    for _ in range(steps):
        _sync(device)
        start = time.perf_counter()
        step(batch)
        _sync(device)
        seconds.append(time.perf_counter() - start)
    return seconds


def time_sweep(step: Callable[[int], None], batches: Sequence[int], steps: int = 20, warmup: int = 2,
               device: torch.device | None = None) -> list[list[float]]:
    """Seconds of `steps` timed steps at each batch size, the sizes taken in turn (one step of each, then the
    next round), after `warmup` untimed steps of each.

    Interleaving matters where the device is shared: on a CPU shared by several workers that all profile at
    start-up, the load changes while they do (one finishes its memory probes, another starts timing); timing
    each size in one block would give each size a different load, and the fitted line, its intercept b above
    all, would follow the load instead of the batch. Taken in turn, every size sees the same mix."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    device = torch.device(device) if device is not None else None
    for batch in batches:
        if isinstance(step, TrainingStep):
            step.prepare(batch)
        for _ in range(max(0, warmup)):
            step(batch)
    seconds: list[list[float]] = [[] for _ in batches]
    for _ in range(steps):
        for i, batch in enumerate(batches):
            _sync(device)
            start = time.perf_counter()
            step(batch)
            _sync(device)
            seconds[i].append(time.perf_counter() - start)
    return seconds
