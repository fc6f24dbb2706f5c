"""Worker-side arithmetic: fresh permutations per commit, learning, evaluation, LR schedule and scaling."""

import pytest
import torch

from hdbl_mpi.config import load_config
from hdbl_mpi.data import load_dataset
from hdbl_mpi.data.sources import ArraySource, sample_indices
from hdbl_mpi.engine import evaluate, train_steps
from hdbl_mpi.models import build_model
from hdbl_mpi.optim.optimizers import make_optimizer, param_groups
from hdbl_mpi.rules.plan import lr_scale
from hdbl_mpi.rules.schedule import from_config
from hdbl_mpi.run.book import BookPolicy


def test_each_commit_draws_a_fresh_permutation():
    g = torch.Generator().manual_seed(0)
    first, second = sample_indices(100, 40, g), sample_indices(100, 40, g)
    assert len(set(first.tolist())) == 40  # no repeats inside one pass
    assert not torch.equal(first, second)  # not the same subset commit after commit
    chained = sample_indices(100, 250, g)  # a commit longer than the data set chains permutations
    assert len(chained) == 250 and torch.bincount(chained[:200], minlength=100).tolist() == [2] * 100


def test_training_steps_learn_and_evaluate():
    torch.manual_seed(0)
    data = load_dataset("synthetic", synthetic={"train_size": 512, "test_size": 256, "channels": 1, "size": 16,
                                                "classes": 4})
    model = build_model("resnet_small", 4, 1, 16, width=8)
    opt = make_optimizer("sgd", param_groups(model, 1e-4), 0.05, 0.9, 1e-4)
    cpu = torch.device("cpu")
    train = ArraySource(data, True, True, torch.Generator().manual_seed(1), cpu)
    test = ArraySource(data, False, False, None, cpu)
    _, before = evaluate(model, test, 16, 128, cpu)
    stats = train_steps(model, opt, train, 120, 32, 16, cpu)  # 60 steps left some seeds near chance
    _, after = evaluate(model, test, 16, 128, cpu)
    assert stats.steps == 120 and stats.samples == 3840 and stats.seconds > 0
    assert 0 <= stats.correct <= 3840 and stats.loss_sum > 0
    assert after > max(before, 0.9)


def test_nonfinite_loss_says_lower_the_lr():
    data = load_dataset("synthetic", synthetic={"train_size": 64, "test_size": 8, "channels": 1, "size": 16})
    model = build_model("resnet_small", 10, 1, 16, width=4)
    opt = make_optimizer("sgd", param_groups(model, 0.0), 1e12, 0.9, 0.0)
    with pytest.raises(FloatingPointError, match="lower train.lr"):
        source = ArraySource(data, True, False, torch.Generator().manual_seed(0), torch.device("cpu"))
        train_steps(model, opt, source, 20, 16, 16, torch.device("cpu"))


def test_lr_milestones_and_eval_schedule():
    config = load_config(None, ["dual.batch_large=256", "train.epochs=10", "train.lr=0.2",
                                "train.lr_milestones=[4, 8]", "eval.every=3"])
    schedule = from_config(config, native_resolution=28)  # no cyclic schedule: one stage per LR interval at 28 px
    assert [(s.start, s.end, s.resolution) for s in schedule.stages] == [(0, 4, 28), (4, 8, 28), (8, 10, 28)]
    assert [round(schedule.at(e).lr, 6) for e in (0, 3, 4, 7, 8, 9)] == [0.2, 0.2, 0.02, 0.02, 0.002, 0.002]
    assert [e for e in range(1, 11) if BookPolicy.from_config(config).eval_due(e, schedule.epochs)] == [3, 6, 9, 10]


def test_lr_scaling_per_group():
    assert lr_scale("none", 14, 256) == 1.0
    assert lr_scale("linear", 64, 256) == 0.25
    assert lr_scale("sqrt", 64, 256) == 0.5


@pytest.mark.parametrize("error", [
    torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
    RuntimeError("[enforce fail at alloc_cpu.cpp:118] DefaultCPUAllocator: can't allocate memory: you tried to "
                 "allocate 68719476736 bytes."),
    MemoryError(),
])
def test_out_of_memory_points_to_hdbl_profile(error):
    from hdbl_mpi.errors import ResourceError

    data = load_dataset("synthetic", synthetic={"train_size": 64, "test_size": 8, "channels": 1, "size": 16})
    model = build_model("resnet_small", 10, 1, 16, width=4)

    def explode(*args, **kwargs):
        raise error

    model.forward = explode
    opt = make_optimizer("sgd", param_groups(model, 0.0), 0.1, 0.9, 0.0)
    source = ArraySource(data, True, False, torch.Generator().manual_seed(0), torch.device("cpu"))
    with pytest.raises(ResourceError) as caught:
        train_steps(model, opt, source, 1, 32, 16, torch.device("cpu"))
    message = str(caught.value)
    assert "out of memory on cpu at batch size 32, 16 px" in message and "hdbl profile" in message
    assert caught.value.exit_code == 2


def test_other_runtime_errors_are_not_called_out_of_memory():
    data = load_dataset("synthetic", synthetic={"train_size": 64, "test_size": 8, "channels": 1, "size": 16})
    model = build_model("resnet_small", 10, 1, 16, width=4)

    def explode(*args, **kwargs):
        raise RuntimeError("shape mismatch")

    model.forward = explode
    opt = make_optimizer("sgd", param_groups(model, 0.0), 0.1, 0.9, 0.0)
    source = ArraySource(data, True, False, torch.Generator().manual_seed(0), torch.device("cpu"))
    with pytest.raises(RuntimeError, match="shape mismatch"):
        train_steps(model, opt, source, 1, 32, 16, torch.device("cpu"))
