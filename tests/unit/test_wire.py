"""The flat wire format: the model's tensors are views of one float32 vector MPI sends from directly."""

import numpy as np
import pytest
import torch

from hdbl_mpi.comm.wire import PUSH, REPLY, FlatState
from hdbl_mpi.models import build_model


def _model():
    torch.manual_seed(0)
    return build_model("resnet_small", 10, 1, 16, width=4)


def test_vector_holds_parameters_and_bn_buffers():
    model = _model()
    expected = sum(p.numel() for p in model.parameters()) + sum(
        b.numel() for b in model.buffers() if b.is_floating_point())
    flat = FlatState(model)
    assert flat.numel == expected and flat.host.dtype == np.float32 and flat.nbytes == 4 * expected
    assert any(name.endswith("running_var") for name in flat.names)
    assert not any(name.endswith("num_batches_tracked") for name in flat.names)


def test_model_shares_memory_with_the_host_array():
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flat = FlatState(model)
    for key, value in model.state_dict().items():  # flattening keeps the values
        assert torch.equal(value, before[key])
    flat.host[:] = 0.5  # what an MPI Recv into the host array does
    assert all(torch.all(p == 0.5) for p in model.parameters())
    bn = model.stem[1]
    assert torch.all(bn.running_mean == 0.5)
    with torch.no_grad():
        next(model.parameters()).add_(1.0)  # an optimizer step shows up in the array MPI sends
    assert flat.host[0] == pytest.approx(1.5)


def test_training_still_works_on_views():
    model = _model()
    flat = FlatState(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    snapshot = flat.host.copy()
    loss = model(torch.randn(8, 1, 16, 16)).sum()
    loss.backward()
    opt.step()
    assert not np.array_equal(snapshot, flat.host)  # the step changed the shared vector


def test_headers_round_trip():
    packed = PUSH.pack(local_commit=3, samples=1024, loss_sum=12.5)
    assert PUSH.unpack(packed)["samples"] == 1024 and PUSH.unpack(packed)["compute_s"] == 0.0
    assert REPLY.unpack(REPLY.pack(stop=1, lr=0.02))["lr"] == pytest.approx(0.02)
    with pytest.raises(KeyError):
        PUSH.pack(nonsense=1)


def test_channels_last_views_keep_the_wire_order_plain():
    plain, cl = _model(), _model()  # the same weights
    reference = FlatState(plain)
    flat = FlatState(cl, channels_last=True)
    name, conv = next((n, p) for n, p in cl.named_parameters() if p.dim() == 4 and p.shape[1] > 1)
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    assert conv.data_ptr() >= flat.vector.data_ptr()  # a view of the vector, not a copy
    # What MPI sends (and a checkpoint keeps) is the plain row-major order whatever the memory format.
    assert np.array_equal(flat.to_host(), reference.to_host())
    assert torch.equal(flat.snapshot(), reference.snapshot())
    flat.host[:] = np.arange(flat.numel, dtype=np.float32)  # a pull
    flat.from_host()
    reference.load(torch.arange(reference.numel, dtype=torch.float32))
    for (key, a), b in zip(cl.state_dict().items(), plain.state_dict().values(), strict=True):
        assert torch.equal(a, b), key
    with torch.no_grad():
        conv.add_(1.0)  # a training step shows up in the next push, in row-major order
    start = sum(int(np.prod(s)) for s in flat.shapes[:flat.names.index(f"param:{name}")])
    assert np.array_equal(flat.to_host()[start:start + conv.numel()], conv.detach().contiguous().view(-1).numpy())
