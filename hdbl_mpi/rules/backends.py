"""The data-parallel baselines' modes and gradient backends, and which library averages the allreduce baseline's
gradients (`ps.backend`), decided from what every rank found.

Pure (no torch, no MPI): the ranks gather their facts (their device, how many ranks share their GPU, what
Horovod was built with) and each applies the same rule to the same list, so they all choose alike. The rule
follows the libraries' documented limits rather than finding them at the first GPU tensor:
- Horovod hands GPU tensors only to operations it was compiled with: a build without CUDA fails on the first
  one ("Requested ReadyEvent with GPU device but not compiled with CUDA");
- NCCL (DDP's GPU process group, Horovod's GPU operations) refuses two ranks on one GPU ("Duplicate GPU
  detected"), so ranks that share a GPU use gloo in DDP, and mpi4py when the choice is automatic.
"""

from __future__ import annotations

from dataclasses import dataclass

from hdbl_mpi.errors import ConfigError

PEER_MODES = ("allreduce", "localsgd")  # ps.mode values where every rank is a worker and there is no server
BACKENDS = ("mpi4py", "horovod", "ddp")  # ps.backend of the allreduce baseline (besides auto)


@dataclass(frozen=True)
class HorovodBuild:
    """What the installed Horovod can do (None in BackendFacts when horovod.torch does not import)."""

    version: str
    gpu: bool  # compiled with CUDA (or ROCm): GPU tensors can be handed to it
    nccl: bool  # its GPU operations are NCCL's


@dataclass(frozen=True)
class BackendFacts:
    """One rank's facts, gathered by every rank."""

    cuda: bool  # this rank trains on a GPU
    gpu_sharing: int  # ranks of its host on its GPU (1: its own)
    horovod: HorovodBuild | None
    nccl: bool  # torch.distributed has NCCL


@dataclass(frozen=True)
class BackendChoice:
    name: str  # mpi4py | horovod | ddp | none (LocalSGD)
    process_group: str | None  # ddp: nccl or gloo
    reason: str  # one line: why this backend (printed at start-up, kept in summary.json)


def choose_backend(mode: str, asked: str, facts: list[BackendFacts]) -> BackendChoice:
    """The backend for `ps.backend=asked`; a ConfigError naming the fix when the asked one cannot work here."""
    if mode != "allreduce":
        return BackendChoice("none", None, "LocalSGD averages models, not gradients")
    gpu = any(f.cuda for f in facts)
    nccl_ok = all(f.cuda and f.nccl for f in facts) and not _shared(facts)
    builds = [f.horovod for f in facts]
    if asked == "horovod":
        return _horovod_asked(builds, gpu, facts)
    if asked == "ddp":
        why = "NCCL" if nccl_ok else _why_not_nccl(facts)
        return BackendChoice("ddp", "nccl" if nccl_ok else "gloo", f"ps.backend=ddp, process group "
                                                                   f"{'nccl' if nccl_ok else 'gloo'} ({why})")
    if asked == "mpi4py":
        return BackendChoice("mpi4py", None, "ps.backend=mpi4py")
    return _automatic(builds, gpu, nccl_ok, facts)


def _shared(facts: list[BackendFacts]) -> bool:
    return any(f.gpu_sharing > 1 for f in facts)


def _why_not_nccl(facts: list[BackendFacts]) -> str:
    if not any(f.cuda for f in facts):
        return "the ranks train on the CPU"
    if not all(f.cuda for f in facts):
        return "some ranks train on the CPU"
    if _shared(facts):
        return (f"up to {max(f.gpu_sharing for f in facts)} ranks share a GPU, and NCCL needs one GPU per rank")
    return "torch.distributed has no NCCL here"


def _horovod_asked(builds: list[HorovodBuild | None], gpu: bool, facts: list[BackendFacts]) -> BackendChoice:
    if any(b is None for b in builds):
        raise ConfigError("ps.backend is horovod but horovod.torch does not import here; build it with "
                          "launchers/install_horovod.sh, or set ps.backend=mpi4py (or auto).")
    version = builds[0].version if builds[0] else "?"
    if gpu and not all(b is not None and b.gpu for b in builds):
        raise ConfigError(f"ps.backend is horovod and the ranks train on GPUs, but Horovod {version} was built "
                          "without GPU operations (hvd.cuda_built() is False), so its first GPU tensor would fail. "
                          "Rebuild it with them (HDBL_HOROVOD_GPU=nccl HDBL_HOROVOD_REBUILD=1 "
                          "launchers/install_horovod.sh), or set ps.backend=ddp or mpi4py (or auto).")
    if gpu and _shared(facts) and any(b is not None and b.nccl for b in builds):
        sharing = max(f.gpu_sharing for f in facts)
        raise ConfigError(f"ps.backend is horovod (NCCL operations) but up to {sharing} ranks share a GPU, and NCCL "
                          "needs one GPU per rank. Start at most one rank per GPU on each host (e.g. mpirun -H "
                          "host:GPUS), or set ps.backend=ddp (gloo) or mpi4py (or auto).")
    return BackendChoice("horovod", None, f"ps.backend=horovod (Horovod {version})")


def _automatic(builds: list[HorovodBuild | None], gpu: bool, nccl_ok: bool,
               facts: list[BackendFacts]) -> BackendChoice:
    """auto: Horovod where it imports and can take this run's tensors; on GPUs otherwise DDP over NCCL, or
    mpi4py where NCCL cannot run (shared GPUs)."""
    importable = all(b is not None for b in builds)
    version = builds[0].version if importable and builds[0] else None
    if not gpu:
        if importable:
            return BackendChoice("horovod", None, f"ps.backend auto: Horovod {version} imports")
        return BackendChoice("mpi4py", None, "ps.backend auto: Horovod does not import here")
    if importable and all(b is not None and b.nccl for b in builds) and nccl_ok:
        return BackendChoice("horovod", None, f"ps.backend auto: Horovod {version} with NCCL")
    if not importable:
        horovod = "Horovod does not import here"
    elif not all(b is not None and b.gpu for b in builds):
        horovod = f"Horovod {version} was built without GPU operations"
    elif not all(b is not None and b.nccl for b in builds):
        horovod = f"Horovod {version} was built without NCCL"
    else:
        horovod = f"Horovod {version} needs NCCL and {_why_not_nccl(facts)}"
    if nccl_ok:
        return BackendChoice("ddp", "nccl", f"ps.backend auto: DDP over NCCL ({horovod})")
    return BackendChoice("mpi4py", None, f"ps.backend auto: mpi4py ({horovod}; no NCCL: {_why_not_nccl(facts)})")
