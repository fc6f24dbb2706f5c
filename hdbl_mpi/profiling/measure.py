"""Measuring the step-time model tau(B) = a*B + b and the largest batch B_max on the actual device (method §4).

The dual-batch plan needs, per resolution, how long one training step of batch B takes and how large B may
get before the device runs out of memory. Both depend on the model, the resolution, the precision and the
device (and the torch version, whose kernels change), so they are measured, not guessed, and stored in a
profile file keyed by all of these that later runs reuse.

B_max is not found by trial until out-of-memory, as in the original work: the peak memory of a few real steps
is fitted as a line in B, the line predicts B_max under the device capacity with a safety margin, and one real
step at the prediction confirms it (backing off geometrically on an out-of-memory error). On a CPU there is no
hard limit, so the capacity is a user-given budget and a step "runs out of memory" when its measured peak
exceeds that budget.

No MPI here: a caller profiles on every rank and combines the results with
:func:`hdbl_mpi.profiling.store.average_entries`; profile files are read and written by
:mod:`hdbl_mpi.profiling.store`.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc
import math
import platform
import re
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from hdbl_mpi.data.batches import make_batch
from hdbl_mpi.engine import is_out_of_memory
from hdbl_mpi.errors import ConfigError, HdblError
from hdbl_mpi.precision import PRECISIONS, Precision, check_precision

if TYPE_CHECKING:
    from hdbl_mpi.data.sources import BatchSource
    from hdbl_mpi.throughput import CompileWarmup

__all__ = [
    "PRECISIONS",
    "Fit",
    "ProfileSettings",
    "profile_device",
    "OutOfMemory",
    "TrainingStep",
    "confirm_bmax",
    "device_name",
    "fit_line",
    "is_out_of_memory",
    "make_training_step",
    "memory_capacity",
    "memory_method",
    "parse_bytes",
    "peak_memory",
    "plot_profile",
    "predict_bmax",
    "profile_resolution",
    "time_steps",
    "time_sweep",
]


_CLEAR_REFS = "/proc/self/clear_refs"
"""Writing "5" here resets the process's peak RSS (VmHWM) on Linux; a module constant so tests can redirect it."""
_PROC_STATUS = "/proc/self/status"

DEFAULT_MEMORY_BATCHES = (8, 16, 32, 64)
DEFAULT_TIME_POINTS = 8
SOURCE_STREAM_STEPS = 64  # batches per stream drawn from a real source before a fresh one (a new epoch) starts


# --------------------------------------------------------------------------------------------- line fits


@dataclass
class Fit:
    """y = a*x + b by ordinary least squares, with its coefficient of determination r2.

    r2 is kept next to the coefficients because a poor fit (noisy timings, a device that throttles) makes the
    plan built on a and b unreliable, and the user should be able to see that in the profile.
    """

    a: float
    b: float
    r2: float


def fit_line(x: Sequence[float], y: Sequence[float], relative: bool = False) -> Fit:
    """Least-squares line through (x, y); needs at least two distinct x (one point defines no slope).

    `relative=True` minimises relative errors (each point weighted by 1/y). Step times span two orders of
    magnitude between the small and the large batch, and a plain fit is dominated by the largest batches, where
    a CPU is often super-linear; the plan needs the time of B_S as accurately as that of B_L, so step-time fits
    use relative errors. R² is always that of the unweighted residuals.
    """
    xs, ys = [float(v) for v in x], [float(v) for v in y]
    if len(xs) != len(ys):
        raise ValueError(f"fit_line got {len(xs)} x values but {len(ys)} y values")
    if len(set(xs)) < 2:
        raise ValueError(f"fit_line needs at least 2 distinct x values, got {sorted(set(xs))}")
    if relative and any(v <= 0 for v in ys):
        raise ValueError("a relative fit needs positive y values")
    weights = [1.0 / (v * v) if relative else 1.0 for v in ys]
    total = sum(weights)
    mx = sum(w * u for w, u in zip(weights, xs, strict=True)) / total
    mw = sum(w * v for w, v in zip(weights, ys, strict=True)) / total
    sxx = sum(w * (u - mx) ** 2 for w, u in zip(weights, xs, strict=True))
    sxy = sum(w * (u - mx) * (v - mw) for w, u, v in zip(weights, xs, ys, strict=True))
    a = sxy / sxx
    b = mw - a * mx
    n = len(xs)
    my = sum(ys) / n
    ss_tot = sum((v - my) ** 2 for v in ys)
    ss_res = sum((v - (a * u + b)) ** 2 for u, v in zip(xs, ys, strict=True))
    r2 = 1.0 if ss_tot == 0 else min(1.0, max(0.0, 1.0 - ss_res / ss_tot))
    return Fit(a=a, b=b, r2=r2)


# ----------------------------------------------------------------------------------------- training step


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


# ------------------------------------------------------------------------------------------------ memory


def memory_method(device: torch.device) -> str:
    """How :func:`peak_memory` measures on `device`: "cuda", "rss" (Linux peak RSS) or "saved-tensors".

    The peak RSS of the process is the honest measure on a CPU, but resetting it needs a writable
    /proc/self/clear_refs (Linux, not blocked by a sandbox); elsewhere the bytes are counted instead.
    """
    device = torch.device(device)
    if device.type == "cuda":
        return "cuda"
    try:
        with open(_CLEAR_REFS, "w") as handle:
            handle.write("5")
        _read_vm_hwm()
    except OSError:
        return "saved-tensors"
    return "rss"


def _trim_heap() -> None:
    """Give freed heap memory back to the OS (glibc's malloc_trim) before an RSS measurement.

    Otherwise memory freed after an earlier, larger step stays resident, the reset peak starts from it, and
    every smaller batch measures the same: the fit would come out flat and over-predict B_max.
    """
    global _MALLOC_TRIM
    if _MALLOC_TRIM is None:
        try:
            _MALLOC_TRIM = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _MALLOC_TRIM = False
    if callable(_MALLOC_TRIM):
        _MALLOC_TRIM(0)


_MALLOC_TRIM: Callable[[int], int] | bool | None = None


def _read_vm_hwm() -> int:
    """The process's peak resident set size in bytes, from /proc/self/status."""
    with open(_PROC_STATUS) as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise OSError(f"no VmHWM line in {_PROC_STATUS}")


def _storage_key(t: torch.Tensor) -> tuple[int, int]:
    storage = t.untyped_storage()
    return storage.data_ptr(), storage.nbytes()


def _counted_peak(step: Callable[[int], None], batch: int) -> int:
    """Bytes of parameters, gradients, optimizer state and the tensors saved for backward during one step.

    The saved tensors are the activations that make memory grow with the batch; storages are deduplicated by
    address so a tensor saved by several operations (or a saved weight) is counted once.
    """
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        ptr, size = _storage_key(t)
        if ptr:
            seen[ptr] = max(seen.get(ptr, 0), size)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        step(batch)
    model = getattr(step, "model", None)
    optimizer = getattr(step, "optimizer", None)
    tensors: list[torch.Tensor] = []
    if model is not None:
        for p in model.parameters():
            tensors.append(p)
            if p.grad is not None:
                tensors.append(p.grad)
        tensors.extend(model.buffers())
    if optimizer is not None:
        for state in optimizer.state.values():
            tensors.extend(v for v in state.values() if isinstance(v, torch.Tensor))
    for t in tensors:
        ptr, size = _storage_key(t)
        if ptr:
            seen[ptr] = max(seen.get(ptr, 0), size)
    return sum(seen.values())


def peak_memory(step: Callable[[int], None], batch: int, device: torch.device, method: str | None = None) -> int:
    """Bytes in use at the peak of one step at `batch`.

    CUDA: the allocator's peak of allocated bytes. CPU: the process's peak RSS after resetting it ("rss"),
    or, where it cannot be reset, the counted bytes of model, gradients, optimizer state and saved activations
    ("saved-tensors"). `method` (see :func:`memory_method`) is looked up when not given.
    """
    device = torch.device(device)
    method = method or memory_method(device)
    if isinstance(step, TrainingStep):
        step.prepare(batch)
    if method == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        step(batch)
        torch.cuda.synchronize(device)
        return int(torch.cuda.max_memory_allocated(device))
    if method == "rss":
        gc.collect()
        _trim_heap()
        with open(_CLEAR_REFS, "w") as handle:
            handle.write("5")
        step(batch)
        return _read_vm_hwm()
    if method == "saved-tensors":
        gc.collect()
        return _counted_peak(step, batch)
    raise ValueError(f"unknown memory method {method!r}; use cuda, rss or saved-tensors")


class OutOfMemory(MemoryError):
    """A step needed more memory than allowed: raised for a CPU step whose peak exceeds the memory budget, so
    that the back-off (and :func:`hdbl_mpi.engine.is_out_of_memory`) treats a budget overrun like a CUDA
    out-of-memory error."""


def predict_bmax(memory: Fit, capacity_bytes: float, margin: float = 0.9) -> int:
    """Largest integer B >= 1 with a*B + b <= margin * capacity.

    The margin leaves room for what the fit does not see: allocator fragmentation, the CUDA context, a
    workspace picked by a different kernel at a larger batch.
    """
    if not 0 < margin <= 1:
        raise ValueError(f"margin must be in (0, 1], got {margin}")
    limit = margin * float(capacity_bytes)
    if memory.a <= 0:
        raise ValueError(
            f"the memory fit has slope a = {memory.a:.4g} bytes per sample (must be > 0): memory did not grow "
            "with the batch in the measured range, so B_max cannot be predicted; measure at larger batch sizes."
        )
    if memory.a + memory.b > limit:
        raise ValueError(
            f"even batch 1 needs {memory.a + memory.b:.4g} bytes by the memory fit, more than "
            f"margin x capacity = {margin} x {float(capacity_bytes):.4g} = {limit:.4g} bytes."
        )
    b_max = max(1, int(math.floor((limit - memory.b) / memory.a)))
    while memory.a * (b_max + 1) + memory.b <= limit:  # guard the float division both ways
        b_max += 1
    while b_max > 1 and memory.a * b_max + memory.b > limit:
        b_max -= 1
    return b_max


def confirm_bmax(
    step: Callable[[int], None],
    predicted: int,
    backoff: float = 0.9,
    min_batch: int = 1,
    on_oom: Callable[[], None] | None = None,
) -> tuple[int, list[int]]:
    """Run a real step at `predicted`, backing off on out-of-memory; (confirmed B, batch sizes that failed).

    A prediction from a line fit is not a guarantee (kernels change their workspace with the batch), so the
    largest batch is only trusted once a real step at it has succeeded.
    """
    if not 0 < backoff < 1:
        raise ValueError(f"backoff must be in (0, 1), got {backoff}")
    batch, failed = int(predicted), list[int]()
    while True:
        if batch < min_batch:
            tried = f" (tried {', '.join(map(str, failed))})" if failed else ""
            raise HdblError(
                f"The model does not fit in memory even at batch {min_batch}{tried}; use a smaller model, a "
                "smaller resolution or, on the CPU, a larger --memory-budget."
            )
        oom = False
        try:
            step(batch)
        except Exception as err:  # anything but an out-of-memory error is re-raised
            if not is_out_of_memory(err):
                raise
            oom = True
        if not oom:
            return batch, failed
        # on_oom runs outside the except block: the traceback holds the failed step's tensors until then.
        failed.append(batch)
        if on_oom is not None:
            on_oom()
        batch = min(int(math.floor(batch * backoff)), batch - 1)


def memory_capacity(device: torch.device, memory_budget: int | None, share: int = 1) -> int:
    """Bytes B_max is predicted against: this rank's share of the GPU's total memory (`share` ranks train on
    it), or the user's budget on the CPU.

    A CPU has no fixed limit (swap, other processes), so there the user must say how much the run may use.
    On CUDA a given budget further caps the share.
    """
    device = torch.device(device)
    if memory_budget is not None and memory_budget <= 0:
        raise ConfigError(f"the memory budget is {memory_budget} bytes; it must be positive (e.g. 8GiB).")
    if device.type == "cuda":
        total = int(torch.cuda.mem_get_info(device)[1]) // max(1, share)
        return min(total, int(memory_budget)) if memory_budget is not None else total
    if memory_budget is None:
        raise ConfigError(
            "on the CPU pass --memory-budget (e.g. 8GiB): the profiler predicts B_max against a memory "
            "capacity, and a CPU has none it can read."
        )
    return int(memory_budget)


_UNITS = {
    "": 1, "b": 1,
    "k": 1024, "ki": 1024, "kib": 1024, "kb": 1000,
    "m": 1024**2, "mi": 1024**2, "mib": 1024**2, "mb": 1000**2,
    "g": 1024**3, "gi": 1024**3, "gib": 1024**3, "gb": 1000**3,
    "t": 1024**4, "ti": 1024**4, "tib": 1024**4, "tb": 1000**4,
}  # fmt: skip


def parse_bytes(text: str) -> int:
    """Bytes from "8GiB", "512MiB", "2G", "1.5GB", "1000000".

    GiB/MiB/KiB and the bare G/M/K are binary (how memory is sold and how `free -g` counts); GB/MB/KB are
    decimal.
    """
    if isinstance(text, int) and not isinstance(text, bool):
        return text
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([A-Za-z]*)\s*", str(text))
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _UNITS:
        raise ConfigError(
            f"{text!r} is not a memory size; write e.g. 8GiB, 512MiB, 2G (binary) or 1.5GB (decimal)."
        )
    return int(round(float(match.group(1)) * _UNITS[unit]))


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


# --------------------------------------------------------------------------------------------- profiling


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


def _release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _measure_memory(
    step: Callable[[int], None], sizes: Sequence[int], device: torch.device, method: str
) -> tuple[list[int], list[int]]:
    """Peak bytes at each size, in increasing order, stopping at the first size that does not fit."""
    measured, peaks = [], []
    for batch in sorted(set(int(s) for s in sizes)):
        oom = False
        try:
            peak = peak_memory(step, batch, device, method)
        except Exception as err:  # only out-of-memory is handled
            if not is_out_of_memory(err):
                raise
            oom = True
        if oom:
            _release(device)
            break
        measured.append(batch)
        peaks.append(peak)
    return measured, peaks


def profile_resolution(
    model_factory: Callable[[], nn.Module],
    num_classes: int,
    in_channels: int,
    resolution: int,
    device: torch.device,
    settings: ProfileSettings | None = None,
) -> dict:
    """Measure B_max and tau(B) = a*B + b for one resolution and precision; the profile entry as a dict.

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
    _check_precision(s.precision, device)  # before building anything
    model = model_factory().to(device)
    channels_last = s.channels_last and use_channels_last(model)
    if s.compile:  # each batch size's graph is compiled in its warm-up steps, which are not timed
        compile_model(model)
    step = make_training_step(model, num_classes, in_channels, resolution, device, s.precision,
                              optimizer=s.optimizer, source=s.source)
    step.warm_up = CompileWarmup(model, in_channels) if s.compile else None
    del model  # the step holds the only reference, so dropping the step frees the model
    try:
        entry = _profile_step(step, resolution, device, s, capacity, memory_method(device))
        entry.update(optimizer=type(step.optimizer).__name__, channels_last=channels_last, compile=s.compile)
        if s.source is not None:
            entry["input"] = _input_share(step, entry)
        return entry
    finally:
        del step
        _release(device)


def _profile_step(step: TrainingStep, resolution: int, device: torch.device, s: ProfileSettings, capacity: int,
                  method: str) -> dict:
    """The measurements of :func:`profile_resolution` on a built step (kept apart so that every reference to
    the model is gone once it returns): memory first, because the timing sweep must stay below B_max."""
    memory, mem_batches, mem_bytes = _fit_memory(step, resolution, device, s.precision, method, s.memory_batches,
                                                 s.max_batch)
    predicted = _predict(memory, capacity, s.margin, s.max_batch, resolution, s.precision, device)
    b_max, backoffs = confirm_bmax(_confirming_step(step, device, method, capacity), predicted,
                                   on_oom=lambda: _release(device))
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
    entry = {
        "device": device_name(device), "torch": torch.__version__, "model": None, "resolution": int(resolution),
        "precision": s.precision, "a": tau.a, "b": tau.b, "r2": tau.r2, "b_max": int(b_max),
        "b_max_predicted": int(predicted), "oom_backoffs": backoffs,
        "memory": {"a": memory.a, "b": memory.b, "r2": memory.r2, "capacity": int(capacity), "margin": s.margin,
                   "device_share": s.device_share,
                   "method": method, "batches": mem_batches, "bytes": mem_bytes},
        "samples": {"batch": time_batches, "step_s": step_s, "median_s": medians},
        "steps": s.steps, "warmup": s.warmup,
    }
    if skipped:
        entry["skipped_batches"] = skipped
    return entry


def _input_share(step: TrainingStep, entry: dict) -> dict:
    """How much of each timed step was spent waiting for the input pipeline: the median draw time per batch
    size (the timed steps' draws, warm-up excluded), its line in B, and its share of the median step."""
    batches, medians = entry["samples"]["batch"], entry["samples"]["median_s"]
    timed = [step.input_s[b][-entry["steps"]:] for b in batches]
    input_medians = [statistics.median(x) for x in timed]
    line = fit_line(batches, input_medians)
    return {"median_s": input_medians, "a": line.a, "b": line.b, "r2": line.r2,
            "share": [i / m if m > 0 else 0.0 for i, m in zip(input_medians, medians, strict=True)]}


def _fit_memory(step: TrainingStep, resolution: int, device: torch.device, precision: str, method: str,
                memory_batches: Sequence[int] | None, max_batch: int) -> tuple[Fit, list[int], list[int]]:
    """Peak memory at a few batch sizes and its line in B."""
    sizes = [b for b in (memory_batches or DEFAULT_MEMORY_BATCHES) if b <= max_batch]
    if len(set(sizes)) < 2:
        sizes = sorted({max(1, max_batch // 8), max(1, max_batch // 4), max(1, max_batch // 2), max_batch})
    if len(set(sizes)) < 2:
        sizes = [1, 2]
    step(min(sizes))  # one-time allocations (optimizer state, kernel caches) must not bias the first point
    mem_batches, mem_bytes = _measure_memory(step, sizes, device, method)
    if len(mem_batches) < 2:
        mem_batches, mem_bytes = _measure_memory(step, [1, 2], device, method)
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


def plot_profile(profile: dict, path: str | Path) -> None:
    """Median step time against batch size with the fitted line, one subplot per resolution: a look at the
    plot shows at once whether the linear model holds over the range the plan uses."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as err:
        raise HdblError("Plotting a profile needs matplotlib: pip install matplotlib") from err
    entries = list(profile.get("entries", {}).values())
    if not entries:
        raise HdblError("The profile holds no entries to plot.")
    resolutions = sorted({int(e["resolution"]) for e in entries})
    fig, axes = plt.subplots(1, len(resolutions), figsize=(5 * len(resolutions), 4), squeeze=False)
    for ax, res in zip(axes[0], resolutions, strict=True):
        for entry in (e for e in entries if int(e["resolution"]) == res):
            label = f"{entry.get('model')} {entry.get('precision')} {entry.get('device')}"
            samples = entry.get("samples") or {}
            xs, ys = samples.get("batch", []), samples.get("median_s", [])
            top = max([*xs, int(entry.get("b_max", 1))])
            points = ax.scatter(xs, ys, s=14, label=f"{label} (measured)")
            line_x = [0, top]
            ax.plot(line_x, [entry["a"] * x + entry["b"] for x in line_x], color=points.get_facecolor()[0],
                    label=f"a={entry['a']:.3g}, b={entry['b']:.3g}, R²={entry.get('r2', float('nan')):.3f}")
        ax.set_title(f"{res} px")
        ax.set_xlabel("batch size")
        ax.set_ylabel("seconds per step")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(str(path))
    plt.close(fig)


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


def profile_device(model_factory: Callable[[int], nn.Module], model: str, num_classes: int, in_channels: int,
                   resolutions: Sequence[int], device: torch.device, settings: ProfileSettings) -> list[dict]:
    """This rank's profile entries, one per resolution (`model_factory(resolution)` builds the model). The one
    measuring function behind `hdbl profile` and `dual.profile: auto`; under MPI every rank calls it on its own
    device and :func:`hdbl_mpi.profiling.store.average_ranks` combines the ranks' entries."""
    entries = []
    for r in resolutions:
        entry = profile_resolution(functools.partial(model_factory, r), num_classes, in_channels, r, device, settings)
        entry["model"] = model
        entries.append(entry)
    return entries
