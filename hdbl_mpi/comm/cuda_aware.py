"""Whether the MPI library can send from and receive into GPU memory ("CUDA-aware"), asked of the library
itself at start-up and recorded in summary.json.

Open MPI answers through `MPIX_Query_cuda_support()`, MPICH through `MPIX_GPU_query_support(MPIX_GPU_SUPPORT_CUDA,
&flag)`; both are C extensions mpi4py does not wrap, so they are looked up in the libmpi this process has loaded.
An MPI that offers neither is taken as not CUDA-aware (device memory is then staged through pinned host
memory), and the record says the library could not be asked. HDBL_CUDA_AWARE_MPI=0 turns the direct path off
where a library claims support it does not deliver (a build with CUDA support on a node without GPUDirect).
"""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass
from functools import cache

OVERRIDE_ENV = "HDBL_CUDA_AWARE_MPI"
_MPIX_GPU_SUPPORT_CUDA = 0  # MPICH's mpi.h


@dataclass(frozen=True)
class CudaAwareness:
    """What the MPI library says about device buffers (summary.json `cuda_aware_mpi`)."""

    supported: bool
    how: str  # which query answered, or why none did

    def to_dict(self) -> dict[str, object]:
        return {"supported": self.supported, "how": self.how}


def _loaded_mpi_libraries(maps: str = "/proc/self/maps") -> list[str]:
    try:
        with open(maps) as handle:
            lines = handle.read().splitlines()
    except OSError:
        return []
    return sorted({line.split()[-1] for line in lines if "/libmpi" in line and ".so" in line})


def _ask(path: str) -> CudaAwareness | None:
    try:
        lib = ctypes.CDLL(path)
    except OSError:
        return None
    if hasattr(lib, "MPIX_Query_cuda_support"):
        return CudaAwareness(bool(lib.MPIX_Query_cuda_support()), f"MPIX_Query_cuda_support() in {path}")
    if hasattr(lib, "MPIX_GPU_query_support"):
        flag = ctypes.c_int(0)
        if lib.MPIX_GPU_query_support(_MPIX_GPU_SUPPORT_CUDA, ctypes.byref(flag)) == 0:
            return CudaAwareness(bool(flag.value), f"MPIX_GPU_query_support(CUDA) in {path}")
    return None


@cache
def cuda_aware_mpi() -> CudaAwareness:
    """Ask the loaded MPI library once (mpi4py must have loaded it: import mpi4py.MPI first)."""
    override = os.environ.get(OVERRIDE_ENV, "")
    if override in ("0", "1"):
        return CudaAwareness(override == "1", f"{OVERRIDE_ENV}={override}")
    for path in _loaded_mpi_libraries():
        answer = _ask(path)
        if answer is not None:
            return answer
    return CudaAwareness(False, "the MPI library offers no CUDA-support query; device buffers are staged "
                                "through pinned host memory")


@dataclass(frozen=True)
class ReductionPath:
    """Where the mpi4py allreduce reduces gradients that live on a GPU (summary.json `exchange_path`)."""

    device_memory: bool  # MPI reads and writes the device buffers itself
    overlapped: bool  # buckets are reduced while backward runs
    why: str

    def to_dict(self) -> dict[str, object]:
        return {"device_memory": self.device_memory, "overlapped": self.overlapped, "why": self.why}


def gpu_reduction_path(aware: CudaAwareness, overlap: bool) -> ReductionPath:
    """The documented way to reduce GPU gradients with this MPI. Open MPI supports device buffers in point-to-point
    calls and *blocking* collectives, not in non-blocking ones (its CUDA FAQ), and its reductions on device
    buffers stage through host memory anyway (the `cuda` coll component). So the overlapped path, which needs
    MPI_Iallreduce, always copies each finished bucket to pinned host memory on a side stream; device buffers
    go to MPI only in blocking reductions after backward, and only where the library says it is CUDA-aware."""
    if overlap:
        return ReductionPath(False, True, "pinned host memory, non-blocking reductions overlapped with backward "
                                          "(MPI documents device buffers for blocking collectives only)")
    if aware.supported:
        return ReductionPath(True, False, "device memory, blocking reductions after backward (CUDA-aware MPI)")
    return ReductionPath(False, False, "pinned host memory, blocking reductions after backward (MPI is not "
                                       "CUDA-aware)")
