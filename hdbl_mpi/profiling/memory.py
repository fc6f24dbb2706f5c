"""Memory of a training step: its peak on the device (CUDA's allocator, or on a CPU the process's peak RSS or the
tensors autograd saves), the capacity B_max is predicted against (a GPU's share, a CPU's budget), and memory
sizes as users write them ("8GiB").
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import re
from collections.abc import Callable, Sequence

import torch

from hdbl_mpi.engine import is_out_of_memory
from hdbl_mpi.errors import ConfigError
from hdbl_mpi.profiling.step import TrainingStep

_CLEAR_REFS = "/proc/self/clear_refs"
"""Writing "5" here resets the process's peak RSS (VmHWM) on Linux; a module constant so tests can redirect it."""


_PROC_STATUS = "/proc/self/status"


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


def release_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def measure_memory(
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
            release_memory(device)
            break
        measured.append(batch)
        peaks.append(peak)
    return measured, peaks
