"""Which device each rank trains on: one GPU per rank by the launcher's local rank, or the CPU.

torch is imported only by the functions that need it, so `hdbl doctor` and `hdbl launch` read the launcher's
local rank without loading torch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hdbl_mpi.errors import ConfigError

if TYPE_CHECKING:
    import torch

    from hdbl_mpi.comm.world import World
    from hdbl_mpi.schema import Config

# Where launchers put a rank's index among the ranks of its host: Open MPI, MPICH/Hydra and Intel MPI, SLURM's
# srun, Cray PALS, MVAPICH.
LOCAL_RANK_VARIABLES = ("OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "SLURM_LOCALID", "PALS_LOCAL_RANKID",
                        "MV2_COMM_WORLD_LOCAL_RANK")


def launcher_local_rank(environ: dict[str, str]) -> tuple[int, str] | None:
    """(local rank, variable) as the launcher numbered this rank on its host, or None outside a launcher that
    says. The launcher's numbering is the one its CPU binding and `--gpus-per-task` follow."""
    for name in LOCAL_RANK_VARIABLES:
        value = environ.get(name, "")
        if value.isascii() and value.isdigit():
            return int(value), name
    return None


def wants_gpu(requested: str) -> bool:
    """Whether a rank with this device setting takes one of its host's GPUs in turn (cuda:N names its own)."""
    import torch

    return requested in ("auto", "cuda") and torch.cuda.is_available()


def gpu_slot(local_rank: int, peers: list[tuple[int, bool]]) -> int:
    """This rank's turn among the ranks of its host that take a GPU: peers are (local rank, wants a GPU) of
    every rank on the host. Counting only GPU takers keeps a CPU server from leaving GPU 0 idle and GPU 0
    doubly used by the last worker."""
    return sum(1 for rank, wants in peers if wants and rank < local_rank)


def pick_device(requested: str, slot: int) -> torch.device:
    """`auto`/`cuda` give the rank GPU `slot` (modulo the GPUs this rank sees, so one GPU per task under
    SLURM's --gpus-per-task works too), `auto` falls back to the CPU without GPUs, `cuda:N` is taken as is."""
    import torch

    if requested == "cpu":
        return torch.device("cpu")
    if requested.startswith("cuda") or requested == "auto":
        if not torch.cuda.is_available():
            if requested == "auto":
                return torch.device("cpu")
            raise ConfigError(f"device {requested!r} was asked for but torch sees no CUDA device; use auto or cpu.")
        if ":" in requested:
            return torch.device(requested)
        return torch.device("cuda", slot % torch.cuda.device_count())
    return torch.device(requested)


@dataclass(frozen=True)
class Placement:
    """Where a rank runs, as set-up decided it (summary.json `devices` keeps it)."""

    device: torch.device
    local_rank_from: str  # the launcher variable, or the MPI shared-memory split
    sharing: int = 1  # ranks of this host on this rank's GPU, itself included (1 on the CPU)


def use_device(device: torch.device) -> None:
    """Make `device` this process's current CUDA device, before anything allocates on it: pinned host memory,
    `empty_cache`, streams and events all act on the current device, which is cuda:0 until it is set, so
    every rank of a multi-GPU node would otherwise open a context on GPU 0 (and take its memory)."""
    if device.type == "cuda":
        import torch

        torch.cuda.set_device(device)


def gpu_identity(device: torch.device) -> str | None:
    """What tells this process's GPU apart from another process's on the same host: its UUID (two ranks that
    each see a single GPU through CUDA_VISIBLE_DEVICES both call it cuda:0), None on the CPU."""
    if device.type != "cuda":
        return None
    import torch

    uuid = getattr(torch.cuda.get_device_properties(device), "uuid", None)
    return str(uuid) if uuid else f"{os.environ.get('CUDA_VISIBLE_DEVICES', '*')}/{device.index}"


def take_device(requested: str, local_comm: Any | None, local_rank: int, source: str) -> Placement:
    """This rank's device among the ranks of its host (`local_comm`; None for a lone process), made current, and
    how many of them share its GPU. Two allgathers on the host: who takes a GPU in turn, then which GPU each
    got."""
    def gather(value: Any) -> list:
        return local_comm.allgather(value) if local_comm is not None else [value]

    peers = gather((local_rank, wants_gpu(requested)))
    device, mine, failure = None, None, None
    try:  # a rank that cannot have its device still joins the second allgather, so no peer is left waiting
        device = pick_device(requested, gpu_slot(local_rank, peers))
        use_device(device)
        mine = gpu_identity(device)
    except Exception as err:
        failure = err
    gpus = gather(mine)
    if failure is not None:
        raise failure
    assert device is not None
    return Placement(device, source, sum(1 for g in gpus if g == mine) if mine is not None else 1)


def place(world: World, config: Config) -> Placement:
    """This rank's placement. Workers use train.device, the server ps.device (CPU by default: it only merges,
    and evaluates), a shard server the CPU (it only merges). Ranks that take a GPU in turn share out their
    host's GPUs in the order of the launcher's local ranks."""
    from hdbl_mpi.comm.world import SERVER, SHARD

    requested = config.ps.device if world.role == SERVER else "cpu" if world.role == SHARD else config.train.device
    found = launcher_local_rank(dict(os.environ))
    local_rank, source = found if found else (world.local_rank, "MPI shared-memory split")
    return take_device(requested, world.local_comm, local_rank, source)
