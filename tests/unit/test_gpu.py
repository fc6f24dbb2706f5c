"""On a real GPU (skipped without one): a rank's device is current before anything allocates, and pinned staging
of the wire format goes to and from it."""

from __future__ import annotations

import pytest
import torch

from hdbl_mpi.comm.placement import take_device

pytestmark = pytest.mark.gpu


def test_take_device_makes_the_last_gpu_current():
    last = torch.cuda.device_count() - 1
    got = take_device(f"cuda:{last}", None, 0, "one process")
    assert got.device == torch.device("cuda", last) and torch.cuda.current_device() == last and got.sharing == 1


def test_the_flat_vector_round_trips_through_pinned_memory_on_the_gpu():
    from hdbl_mpi.comm.wire import FlatState
    from hdbl_mpi.models import build_model

    take_device("cuda", None, 0, "one process")
    model = build_model("resnet_small", 10, 3, 32, width=4).cuda()
    flat = FlatState(model)
    host = flat.to_host().copy()
    flat.vector.mul_(0)
    flat.to_host()[:] = host
    flat.from_host()
    torch.cuda.synchronize()
    assert torch.equal(flat.vector.cpu(), torch.from_numpy(host))
