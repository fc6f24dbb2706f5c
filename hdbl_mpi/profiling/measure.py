"""Profiling a device (method §4): for each resolution, B_max and the step-time line tau(B) = a*B + b of the
step the run trains, as one profile entry.

The dual-batch plan needs, per resolution, how long one training step of batch B takes and how large B may
get before the device runs out of memory. Both depend on the model, the resolution, the precision and the
device (and the torch version, whose kernels change), so they are measured, not guessed, and stored in a
profile file keyed by all of these that later runs reuse. This module orchestrates the jobs that live beside it:
the fits (fit.py), the timed step (step.py), memory (memory.py) and B_max (bmax.py).

No MPI here: a caller profiles on every rank and combines the results with
:func:`hdbl_mpi.profiling.store.average_entries`; profile files are read and written by
:mod:`hdbl_mpi.profiling.store`.
"""

from __future__ import annotations

import functools
import platform
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import torch
from torch import nn

from hdbl_mpi.errors import HdblError
from hdbl_mpi.precision import check_precision
from hdbl_mpi.profiling.bmax import confirm_bmax, predict_bmax
from hdbl_mpi.profiling.entry import InputShare, MemoryFit, ProfileEntry, StepSamples
from hdbl_mpi.profiling.fit import Fit, fit_line
from hdbl_mpi.profiling.memory import (
    OutOfMemory,
    measure_memory,
    memory_capacity,
    memory_method,
    peak_memory,
    release_memory,
)
from hdbl_mpi.profiling.step import OptimizerFactory, TrainingStep, make_training_step, time_sweep

if TYPE_CHECKING:
    from hdbl_mpi.data.sources import BatchSource


DEFAULT_MEMORY_BATCHES = (8, 16, 32, 64)


DEFAULT_TIME_POINTS = 8


@dataclass(frozen=True)
class ProfileSettings:
    """How to profile: the same for `hdbl profile` and for `dual.profile: auto` at the start of a run."""

    precision: str = "fp32"
    steps: int = 20
    warmup: int = 2
    memory_budget: int | None = None  # bytes; the CPU's capacity for B_max (GPUs use their memory)
    device_share: int = 1  # ranks training on this GPU: B_max is predicted for 1/device_share of its memory
    margin: float = 0.9
    max_batch: int = 4096
    batches: Sequence[int] | None = None  # None: spread up to B_max
    optimizer: OptimizerFactory | None = None  # None: SGD with momentum; dual.profile: auto gives the run's own
    memory_batches: Sequence[int] | None = None  # None: DEFAULT_MEMORY_BATCHES
    channels_last: bool = False  # train.channels_last
    compile: bool = False  # train.compile
    source: BatchSource | None = None  # the config's data (hdbl profile --config); None: a generated pool


def device_name(device: torch.device) -> str:
    """A readable name of the device, part of the profile key: timings from one device say nothing of another."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type != "cpu":
        return str(device)
    name = ""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.lower().startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    name = name or platform.processor() or platform.machine() or "unknown"
    return f"cpu:{name} x{torch.get_num_threads()}"


def _geometric_batches(low: int, high: int, count: int) -> list[int]:
    """About `count` integers from `low` to `high`, evenly spaced in log scale, deduplicated, increasing."""
    if high <= low:
        return [high]
    ratio = high / low
    points = {int(round(low * ratio ** (i / (count - 1)))) for i in range(count)}
    return sorted(p for p in points if low <= p <= high)


def _default_time_batches(b_max: int) -> list[int]:
    """~8 batch sizes from 2 up to B_max, evenly spaced in log scale: the range a plan picks B_S and B_L from.
    The small sizes carry the fixed cost per step b, which the plan's B_S is proportional to; starting at 8 left
    the intercept to extrapolation, and B_S to noise."""
    return _geometric_batches(min(2, b_max), b_max, DEFAULT_TIME_POINTS)


def profile_device(model_factory: Callable[[int], nn.Module], model: str, num_classes: int, in_channels: int,
                   resolutions: Sequence[int], device: torch.device, settings: ProfileSettings) -> list[ProfileEntry]:
    """This rank's profile entries, one per resolution (`model_factory(resolution)` builds the model). The one
    measuring function behind `hdbl profile` and `dual.profile: auto`; under MPI every rank calls it on its own
    device and :func:`hdbl_mpi.profiling.store.average_ranks` combines the ranks' entries."""
    entries = []
    for r in resolutions:
        entry = profile_resolution(functools.partial(model_factory, r), num_classes, in_channels, r, device, settings)
        entries.append(entry.named(model))
    return entries


def profile_resolution(
    model_factory: Callable[[], nn.Module],
    num_classes: int,
    in_channels: int,
    resolution: int,
    device: torch.device,
    settings: ProfileSettings | None = None,
) -> ProfileEntry:
    """Measure B_max and tau(B) = a*B + b for one resolution and precision; its profile entry (unnamed: the
    caller names the model).

    Memory comes first because the timing sweep must stay below B_max. The model is built fresh (a previous
    resolution's optimizer state or allocator cache must not distort this one), put in the memory format and
    compiled form training uses, and freed at the end.
    """
    from hdbl_mpi.throughput import CompileWarmup, compile_model, use_channels_last

    s = settings or ProfileSettings()
    device = torch.device(device)
    if s.max_batch < 1:
        raise ValueError(f"max_batch must be >= 1, got {s.max_batch}")
    capacity = memory_capacity(device, s.memory_budget, s.device_share)
    check_precision(s.precision, device, "precision")  # before building anything
    model = model_factory().to(device)
    channels_last = s.channels_last and use_channels_last(model)
    if s.compile:  # each batch size's graph is compiled in its warm-up steps, which are not timed
        compile_model(model)
    step = make_training_step(model, num_classes, in_channels, resolution, device, s.precision,
                              optimizer=s.optimizer, source=s.source)
    step.warm_up = CompileWarmup(model, in_channels) if s.compile else None
    del model  # the step holds the only reference, so dropping the step frees the model
    try:
        entry = replace(_profile_step(step, resolution, device, s, capacity, memory_method(device)),
                        optimizer=type(step.optimizer).__name__, channels_last=channels_last, compile=s.compile)
        return replace(entry, input=_input_share(step, entry)) if s.source is not None else entry
    finally:
        del step
        release_memory(device)


def _profile_step(step: TrainingStep, resolution: int, device: torch.device, s: ProfileSettings, capacity: int,
                  method: str) -> ProfileEntry:
    """The measurements of :func:`profile_resolution` on a built step (kept apart so that every reference to
    the model is gone once it returns): memory first, because the timing sweep must stay below B_max."""
    memory, mem_batches, mem_bytes = _fit_memory(step, resolution, device, s.precision, method, s.memory_batches,
                                                 s.max_batch)
    predicted = _predict(memory, capacity, s.margin, s.max_batch, resolution, s.precision, device)
    b_max, backoffs = confirm_bmax(_confirming_step(step, device, method, capacity), predicted,
                                   on_oom=lambda: release_memory(device))
    wanted = [int(b) for b in s.batches] if s.batches is not None else _default_time_batches(b_max)
    time_batches = sorted({b for b in wanted if 1 <= b <= b_max})
    skipped = sorted({b for b in wanted if not 1 <= b <= b_max})
    if len(time_batches) < 2:
        raise HdblError(
            f"Only {time_batches} of the timing batch sizes {sorted(set(wanted))} are between 1 and B_max = "
            f"{b_max}; a line needs two. Pass batch sizes <= {b_max}."
        )
    step.input_s.clear()  # the memory probes' draws are not part of the timing, nor their streams
    step.streams.clear()
    step_s = time_sweep(step, time_batches, s.steps, s.warmup, device)  # tau(B) on the median step time
    medians = [statistics.median(x) for x in step_s]
    tau = fit_line(time_batches, medians, relative=True)
    return ProfileEntry(
        device=device_name(device), torch=torch.__version__, model="", resolution=int(resolution),
        precision=s.precision, a=tau.a, b=tau.b, r2=tau.r2, b_max=int(b_max), b_max_predicted=int(predicted),
        oom_backoffs=tuple(backoffs), steps=s.steps, warmup=s.warmup, skipped_batches=tuple(skipped),
        memory=MemoryFit(memory.a, memory.b, memory.r2, int(capacity), s.margin, method, s.device_share,
                         tuple(mem_batches), tuple(mem_bytes)),
        samples=StepSamples(tuple(time_batches), tuple(medians), tuple(tuple(x) for x in step_s)))


def _input_share(step: TrainingStep, entry: ProfileEntry) -> InputShare:
    """How much of each timed step was spent waiting for the input pipeline: the median draw time per batch
    size (the timed steps' draws, warm-up excluded), its line in B, and its share of the median step."""
    assert entry.samples is not None and entry.steps is not None
    batches, medians = entry.samples.batch, entry.samples.median_s
    timed = [step.input_s[b][-entry.steps:] for b in batches]
    input_medians = [statistics.median(x) for x in timed]
    line = fit_line(batches, input_medians)
    return InputShare(tuple(input_medians), line.a, line.b, line.r2,
                      tuple(i / m if m > 0 else 0.0 for i, m in zip(input_medians, medians, strict=True)))


def _fit_memory(step: TrainingStep, resolution: int, device: torch.device, precision: str, method: str,
                memory_batches: Sequence[int] | None, max_batch: int) -> tuple[Fit, list[int], list[int]]:
    """Peak memory at a few batch sizes and its line in B."""
    sizes = [b for b in (memory_batches or DEFAULT_MEMORY_BATCHES) if b <= max_batch]
    if len(set(sizes)) < 2:
        sizes = sorted({max(1, max_batch // 8), max(1, max_batch // 4), max(1, max_batch // 2), max_batch})
    if len(set(sizes)) < 2:
        sizes = [1, 2]
    step(min(sizes))  # one-time allocations (optimizer state, kernel caches) must not bias the first point
    mem_batches, mem_bytes = measure_memory(step, sizes, device, method)
    if len(mem_batches) < 2:
        mem_batches, mem_bytes = measure_memory(step, [1, 2], device, method)
    if len(mem_batches) < 2:
        raise HdblError(
            f"The model does not fit in memory at batch 2 (resolution {resolution}, {precision}); use a "
            "smaller model or resolution."
        )
    return fit_line(mem_batches, mem_bytes), mem_batches, mem_bytes


def _predict(memory: Fit, capacity: int, margin: float, max_batch: int, resolution: int, precision: str,
             device: torch.device) -> int:
    """B_max predicted by the memory line under the capacity (at most max_batch)."""
    if memory.a <= 0:
        # Memory did not grow measurably over the sampled sizes (e.g. RSS dominated by a cached heap):
        # nothing bounds B below max_batch, and the confirmation step still guards the cap.
        return max_batch
    try:
        return min(predict_bmax(memory, capacity, margin), max_batch)
    except ValueError as err:
        raise HdblError(
            f"At resolution {resolution} ({precision}) the model does not fit in the memory capacity "
            f"({capacity} bytes): {err} Use a smaller model or resolution"
            + (", or a larger --memory-budget." if device.type == "cpu" else ".")
        ) from err


def _confirming_step(step: TrainingStep, device: torch.device, method: str, capacity: int) -> Callable[[int], None]:
    """The step that confirms B_max: on a CPU, a step whose measured peak exceeds the budget counts as
    out-of-memory (a CPU has no hard limit of its own)."""
    if device.type != "cpu":
        return step

    def guarded(batch: int) -> None:
        peak = peak_memory(step, batch, device, method)
        if peak > capacity:
            raise OutOfMemory(f"batch {batch} peaked at {peak} bytes, over the budget of {capacity} bytes")

    return guarded
