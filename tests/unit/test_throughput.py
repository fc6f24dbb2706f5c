"""Throughput settings (hdbl_mpi/throughput.py): channels-last and torch.compile train the same model as the
plain eager step does, and compiling happens before the clock of a timed step starts."""

from __future__ import annotations

import pytest
import torch

from hdbl_mpi.comm.wire import FlatState
from hdbl_mpi.data import ArrayDataset
from hdbl_mpi.data.sources import ArraySource
from hdbl_mpi.engine import train_steps
from hdbl_mpi.models import build_model
from hdbl_mpi.precision import Precision
from hdbl_mpi.throughput import CompileWarmup, compile_model, throughput_of, use_channels_last

CPU = torch.device("cpu")


def _model():
    torch.manual_seed(0)
    return build_model("resnet_small", 10, 1, 16, width=4)


def _source() -> ArraySource:
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (64, 1, 16, 16), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 10, (64,), generator=g)
    data = ArrayDataset("toy", x, y, x[:8], y[:8], 10, (0.5,), (0.25,), "generated")
    return ArraySource(data, True, True, torch.Generator().manual_seed(2), CPU)


def _train(model, steps: int = 3, **kw):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    torch.manual_seed(3)
    return train_steps(model, optimizer, _source(), steps, 8, 16, CPU, **kw)


def test_channels_last_trains_the_same_steps_as_the_plain_layout():
    plain, cl = _model(), _model()
    reference = FlatState(plain)
    assert use_channels_last(cl)
    flat = FlatState(cl, channels_last=True)
    a, b = _train(plain), _train(cl)
    assert b.steps == 3 and a.samples == b.samples
    assert b.loss_sum == pytest.approx(a.loss_sum, rel=1e-4)
    assert torch.allclose(flat.snapshot(), reference.snapshot(), atol=1e-5)


def test_an_mlp_has_no_channels_last_form():
    mlp = build_model("mlp", 10, 1, 16)
    assert not use_channels_last(mlp)
    assert not FlatState(mlp, channels_last=True).channels_last


def test_compiled_steps_match_eager_and_compile_before_the_clock():
    eager, compiled = _model(), _model()
    reference, flat = FlatState(eager), FlatState(compiled)
    compile_model(compiled)
    warm = CompileWarmup(compiled, channels=1)
    before = flat.snapshot()
    rng = torch.random.get_rng_state()
    warm(8, 16, Precision("fp32", CPU))  # the warm-up itself: compiles, changes nothing
    assert torch.equal(flat.snapshot(), before) and torch.equal(torch.random.get_rng_state(), rng)
    assert all(p.grad is None for p in compiled.parameters())
    stats = _train(compiled, warm_up=warm)
    _train(eager)
    assert warm.seen == {(8, 16, (0.0,), True, "fp32")}  # one graph for this shape, compiled once
    assert torch.allclose(flat.snapshot(), reference.snapshot(), atol=1e-4)
    assert stats.steps == 3 and torch.isfinite(torch.tensor(stats.loss_sum))


def test_throughput_record_says_what_took_effect():
    from hdbl_mpi.schema import TrainConfig

    class Info:
        def __init__(self, device: str) -> None:
            self.device = device

    train = TrainConfig(channels_last=True, compile=True)
    cpu_only = throughput_of(train, [Info("vm:cpu")], [(8, 1, 3, 3)])
    assert cpu_only.to_dict() == {"cudnn_benchmark": False, "channels_last": True, "compile": True}
    assert throughput_of(train, [Info("vm:cpu"), Info("gpu1:cuda:0")], [(10, 4)]).to_dict() == {
        "cudnn_benchmark": True, "channels_last": False, "compile": True}


def test_compile_without_a_cpp_compiler_says_what_to_install(monkeypatch):
    import shutil

    from hdbl_mpi import throughput
    from hdbl_mpi.errors import ConfigError

    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.delenv("CXX", raising=False)
    with pytest.raises(ConfigError, match=r"train.compile needs a C\+\+ compiler .* apt-get install g\+\+"):
        throughput.compile_model(_model())
