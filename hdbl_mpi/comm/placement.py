"""Which device each rank trains on: one GPU per rank by the launcher's local rank, or the CPU.

torch is imported only by the functions that need it, so `hdbl doctor` and `hdbl launch` read the launcher's
local rank without loading torch.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from hdbl_mpi.errors import ConfigError

if TYPE_CHECKING:
    import torch

    from hdbl_mpi.comm.world import World
    from hdbl_mpi.config import Config

# Where launchers put a rank's index among the ranks of its host: Open MPI, MPICH/Hydra and Intel MPI, SLURM's
# srun, Cray PALS, MVAPICH.
LOCAL_RANK_VARIABLES = ("OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "SLURM_LOCALID", "PALS_LOCAL_RANKID",
                        "MV2_COMM_WORLD_LOCAL_RANK")


def launcher_local_rank(environ: dict[str, str]) -> tuple[int, str] | None:
    """(local rank, variable) as the launcher numbered this rank on its host, or None outside a launcher that
    says. The launcher's numbering is the one its CPU binding and `--gpus-per-task` follow."""
    for name in LOCAL_RANK_VARIABLES:
        value = environ.get(name, "")
        if value.isdigit():
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


def place(world: World, config: Config) -> tuple[torch.device, str]:
    """This rank's device and where its local rank came from. Workers use train.device, the server ps.device
    (CPU by default: it only merges, and evaluates), a shard server the CPU (it only merges). Ranks that take a
    GPU in turn share out their host's GPUs in the order of the launcher's local ranks."""
    from hdbl_mpi.comm.world import SERVER, SHARD

    requested = config.ps.device if world.role == SERVER else "cpu" if world.role == SHARD else config.train.device
    found = launcher_local_rank(dict(os.environ))
    local_rank, source = found if found else (world.local_rank, "MPI shared-memory split")
    peers = world.local_comm.allgather((local_rank, wants_gpu(requested)))
    return pick_device(requested, gpu_slot(local_rank, peers)), source
