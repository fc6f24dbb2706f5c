"""comm/placement.py with a mocked CUDA that records its calls: each rank makes its own GPU current before
anything touches one, counts the ranks that share it, and B_max is planned for that share."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from hdbl_mpi.comm import placement
from hdbl_mpi.comm.placement import Placement, take_device
from hdbl_mpi.profiling.memory import memory_capacity

GiB = 1 << 30


class FakeHost:
    """The host's other ranks, as seen from one rank: each allgather returns the next prepared answer with this
    rank's own value in its place (so the test also sees what this rank contributed)."""

    def __init__(self, mine: int, *answers: list) -> None:
        self.mine, self.answers, self.sent = mine, list(answers), []

    def allgather(self, value):
        self.sent.append(value)
        answer = list(self.answers.pop(0))
        answer[self.mine] = value
        return answer


@pytest.fixture
def cuda(monkeypatch):
    """Two GPUs, UUIDs by index; every call that picks, queries or sets a device is recorded in order."""
    calls: list[tuple] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: calls.append(("set_device", torch.device(device))))

    def properties(device):
        calls.append(("get_device_properties", torch.device(device)))
        return SimpleNamespace(uuid=f"GPU-{torch.device(device).index}")

    monkeypatch.setattr(torch.cuda, "get_device_properties", properties)
    return calls


def test_each_rank_sets_its_own_gpu_before_touching_one(cuda):
    """Local rank 2 of a host with a CPU server (local rank 0) and three GPU workers: the second GPU taker gets
    cuda:1, sets it first, and shares it with nobody."""
    host = FakeHost(2, [(0, False), (1, True), None, (3, True)], [None, "GPU-0", None, "GPU-0"])
    got = take_device("auto", host, 2, "OMPI_COMM_WORLD_LOCAL_RANK")
    assert got == Placement(torch.device("cuda", 1), "OMPI_COMM_WORLD_LOCAL_RANK", sharing=1)
    assert cuda[0] == ("set_device", torch.device("cuda", 1))  # before any query that could open a context
    assert host.sent == [(2, True), "GPU-1"]


def test_ranks_on_one_gpu_count_each_other(cuda):
    host = FakeHost(3, [(0, False), (1, True), (2, True), None], [None, "GPU-0", "GPU-1", None])
    got = take_device("cuda", host, 3, "SLURM_LOCALID")
    assert got.device == torch.device("cuda", 0) and got.sharing == 2  # the third GPU taker wraps round to GPU 0
    assert ("set_device", torch.device("cuda", 0)) in cuda


def test_one_gpu_per_task_is_not_sharing(cuda):
    """Under SLURM's --gpus-per-task every rank sees its own GPU as cuda:0: the UUIDs tell them apart."""
    host = FakeHost(0, [None, (1, True)], [None, "GPU-7"])
    assert take_device("auto", host, 0, "SLURM_LOCALID").sharing == 1


def test_a_rank_that_cannot_have_its_device_still_joins_the_second_gather(monkeypatch):
    """Otherwise the host's other ranks (a CPU server) would wait in the allgather for ever."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    host = FakeHost(1, [(0, False), None], ["unused", None])
    with pytest.raises(Exception, match="torch sees no CUDA device"):
        take_device("cuda", host, 1, "x")
    assert host.sent == [(1, False), None]


def test_the_cpu_is_never_set_and_never_shared(cuda):
    got = take_device("cpu", FakeHost(0, [None, (1, True)], [None, "GPU-0"]), 0, "x")
    assert got == Placement(torch.device("cpu"), "x", 1) and cuda == []


def test_place_uses_the_launchers_local_rank(cuda, monkeypatch):
    from hdbl_mpi.comm.world import LARGE
    from hdbl_mpi.config import load_config

    monkeypatch.setenv("OMPI_COMM_WORLD_LOCAL_RANK", "1")
    world = SimpleNamespace(role=LARGE, local_rank=5, local_comm=FakeHost(1, [(0, True), None], ["GPU-0", None]))
    got = placement.place(world, load_config(None, ["dual.batch_large=8"]))
    assert got.device == torch.device("cuda", 1) and got.local_rank_from == "OMPI_COMM_WORLD_LOCAL_RANK"
    assert cuda[0] == ("set_device", torch.device("cuda", 1))


def test_b_max_is_planned_for_the_share_of_a_shared_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (10 * GiB, 80 * GiB))
    assert memory_capacity(torch.device("cuda", 0), None, share=4) == 20 * GiB
    assert memory_capacity(torch.device("cuda", 0), 16 * GiB, share=4) == 16 * GiB
    assert memory_capacity(torch.device("cuda", 0), None) == 80 * GiB
