"""ResNet-18 stems, dropout before the classifier, input channels, and the small ResNet."""

import pytest
import torch
from torch import nn

from hdbl_mpi.errors import ConfigError, HdblError
from hdbl_mpi.models import build_model, set_dropout


def test_resnet18_cifar_stem():
    model = build_model("resnet18", 100, 3, 32, stem="cifar", dropout=0.2)
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert isinstance(model.maxpool, nn.Identity)
    assert isinstance(model.fc[0], nn.Dropout) and model.fc[0].p == 0.2
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 100)
    assert 11_000_000 < sum(p.numel() for p in model.parameters()) < 11_300_000


def test_resnet18_imagenet_stem_and_channels():
    model = build_model("resnet18", 10, 1, 224, stem="auto")
    assert model.conv1.kernel_size == (7, 7) and model.conv1.stride == (2, 2) and model.conv1.in_channels == 1
    assert isinstance(model.maxpool, nn.MaxPool2d)
    assert model(torch.randn(1, 1, 96, 96)).shape == (1, 10)


def test_auto_stem_follows_resolution():
    assert build_model("resnet18", 10, 3, 32).conv1.kernel_size == (3, 3)
    assert build_model("resnet_small", 10, 3, 160).stem[0].kernel_size == (7, 7)


def test_small_resnet_and_dropout_switch():
    model = build_model("resnet_small", 10, 1, 28, width=8, dropout=0.1)
    assert model(torch.randn(4, 1, 28, 28)).shape == (4, 10)
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    set_dropout(model, 0.3)
    assert [m.p for m in model.modules() if isinstance(m, nn.Dropout)] == [0.3]


def test_bad_model_settings():
    with pytest.raises(ConfigError, match="model.name"):
        build_model("vgg", 10, 3, 32)
    with pytest.raises(ConfigError, match="model.stem"):
        build_model("resnet18", 10, 3, 32, stem="tiny")
    with pytest.raises(ConfigError, match="model.dropout"):
        build_model("resnet18", 10, 3, 32, dropout=1.5)


# --- the source documents' small models, torchvision classifiers, a user's factory --------------------------------

def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_lenet5_shape_and_parameter_count():
    model = build_model("lenet5", 10, 1, 28)
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    # conv 1->6 (5x5) 156, conv 6->16 (5x5) 2,416, 400->120 48,120, 120->84 10,164, 84->10 850
    assert _count(model) == 61_706
    assert build_model("lenet5", 100, 3, 32)(torch.randn(1, 3, 32, 32)).shape == (1, 100)


def test_mlp_shape_parameter_count_and_other_resolutions():
    model = build_model("mlp", 10, 1, 28)
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    assert _count(model) == 784 * 128 + 128 + 128 * 64 + 64 + 64 * 10 + 10 == 109_386
    assert model(torch.randn(2, 1, 20, 20)).shape == (2, 10)  # a cyclic schedule's lower stage: resized


def test_a_torchvision_classifier_adapts_to_the_data():
    model = build_model("torchvision:mobilenet_v3_small", 10, 1, 32, options={"dropout": 0.1})
    first = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    assert first.in_channels == 1 and model(torch.randn(2, 1, 32, 32)).shape == (2, 10)
    set_dropout(model, 0.3)
    assert {m.p for m in model.modules() if isinstance(m, nn.Dropout)} == {0.3}


def test_unknown_torchvision_names_list_the_close_ones():
    with pytest.raises(ConfigError, match=r"torchvision:resnet5 is not a classification model.*close ones: .*resnet50"):
        build_model("torchvision:resnet5", 10, 3, 32)
    with pytest.raises(ConfigError, match="use one of resnet18, resnet_small, lenet5, mlp.*did you mean lenet5"):
        build_model("lenet", 10, 1, 28)


def test_a_model_without_dropout_gets_it_before_its_head():
    from hdbl_mpi.models import model_notes

    model = build_model("torchvision:resnet18", 10, 3, 32)
    assert not any(isinstance(m, nn.Dropout) for m in model.modules())
    assert model_notes(model) == ["the model has no dropout layer: the schedule's dropout applies to the input of "
                                  "its classifier head (fc)"]
    set_dropout(model, 0.5)
    x = torch.randn(4, 3, 32, 32)
    model.eval()
    assert torch.equal(model(x), model(x))  # evaluation: no dropout
    model.train()
    torch.manual_seed(0)
    a = model(x)
    torch.manual_seed(1)
    assert not torch.equal(a, model(x))  # training: the head's input is dropped out
    assert "fc.weight" in model.state_dict() and "fc.1.weight" not in model.state_dict()  # names unchanged


def test_a_user_factory_by_module_and_function(tmp_path, monkeypatch):
    (tmp_path / "my_models.py").write_text(
        "import torch.nn as nn\n"
        "def tiny(num_classes, in_channels, hidden=8):\n"
        "    return nn.Sequential(nn.Flatten(), nn.LazyLinear(hidden), nn.ReLU(), nn.Linear(hidden, num_classes))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    model = build_model("my_models:tiny", 4, 1, 16, options={"hidden": 5})
    assert model(torch.randn(2, 1, 16, 16)).shape == (2, 4) and model[3].in_features == 5
    searched = r"cannot import module 'nowhere_models'.*Python searched: .*" + str(tmp_path)
    with pytest.raises(ConfigError, match=searched):
        build_model("nowhere_models:tiny", 4, 1, 16)
    with pytest.raises(ConfigError, match="has no function 'huge'"):
        build_model("my_models:huge", 4, 1, 16)
    with pytest.raises(ConfigError, match=r"model.name=my_models:tiny does not take model.options \{'hiden': 5\}: "
                                          ".*unexpected keyword argument 'hiden'"):
        build_model("my_models:tiny", 4, 1, 16, options={"hiden": 5})


def test_unknown_model_options_are_config_errors():
    with pytest.raises(ConfigError, match=r"torchvision:resnet18 does not take model.options \{'depth': 3\}"):
        build_model("torchvision:resnet18", 10, 3, 32, options={"depth": 3})
    with pytest.raises(ConfigError, match="the built-in resnet18 takes no options"):
        build_model("resnet18", 10, 3, 32, options={"depth": 3})


def test_a_model_that_cannot_take_the_images_says_so_at_build_time():
    with pytest.raises(ConfigError, match=r"torchvision:alexnet cannot take 3x16x16 images"):
        build_model("torchvision:alexnet", 10, 3, 16)


def test_integer_buffers_stay_out_of_the_flat_vector_and_the_model_round_trips():
    from hdbl_mpi.comm.wire import FlatState

    model = build_model("torchvision:mobilenet_v3_small", 10, 1, 32)
    ints = [n for n, b in model.named_buffers() if not b.is_floating_point()]
    assert ints and all(n.endswith("num_batches_tracked") for n in ints)
    flat = FlatState(model)
    assert flat.numel == sum(p.numel() for p in model.parameters()) + sum(
        b.numel() for b in model.buffers() if b.is_floating_point())
    other = build_model("torchvision:mobilenet_v3_small", 10, 1, 32)
    FlatState(other).vector.copy_(flat.vector)
    x = torch.randn(2, 1, 32, 32)
    model.eval()
    other.eval()
    assert torch.equal(model(x), other(x))


# --- train.init_from ------------------------------------------------------------------------------------------------

def test_init_from_a_state_dict_loads_every_tensor_and_skips_the_head(tmp_path):
    from hdbl_mpi.run.init_weights import load_initial_weights

    source = build_model("resnet_small", 10, 1, 16, width=4)
    torch.save(source.state_dict(), tmp_path / "weights.pt")
    target = build_model("resnet_small", 10, 1, 16, width=4)
    report = load_initial_weights(target, str(tmp_path / "weights.pt"), [])
    assert all(torch.equal(a, b) for a, b in zip(source.state_dict().values(), target.state_dict().values(),
                                                 strict=True))
    assert report.loaded == len(source.state_dict()) and not report.skipped
    other_head = build_model("resnet_small", 3, 1, 16, width=4)  # 3 classes: the head has another shape
    with pytest.raises(ConfigError, match=r"other shapes: fc\.1\.weight \(\(10, 16\) in the file, \(3, 16\)"):
        load_initial_weights(other_head, str(tmp_path / "weights.pt"), [])
    fresh_head = other_head.fc[1].weight.detach().clone()
    report = load_initial_weights(other_head, str(tmp_path / "weights.pt"), ["fc"])
    assert torch.equal(other_head.fc[1].weight, fresh_head)  # the head stays as it was initialised
    assert torch.equal(other_head.stem[0].weight, source.stem[0].weight)
    assert report.skipped == ["fc.1.bias", "fc.1.weight"]


def test_init_from_an_hdbl_checkpoint_by_its_recorded_layout(tmp_path):
    from hdbl_mpi.comm.wire import FlatState
    from hdbl_mpi.run import rundir
    from hdbl_mpi.run.init_weights import load_initial_weights

    source = build_model("resnet_small", 10, 1, 16, width=4)
    flat = FlatState(source)
    rundir.save_checkpoint(tmp_path / "checkpoint.pt", flat.vector.clone(), {"merged": 8,
                                                                            "flat_layout": flat.layout()})
    target = build_model("resnet_small", 5, 1, 16, width=4)
    load_initial_weights(target, str(tmp_path), ["fc"])  # the run directory holds checkpoint.pt
    assert torch.equal(target.stages[2].conv2.weight, source.stages[2].conv2.weight)
    assert torch.equal(target.stem[1].running_var, source.stem[1].running_var)  # BatchNorm statistics too


def test_init_from_a_rank_file_says_it_holds_no_weights(tmp_path):
    """checkpoint-ranks/<C>/rank-N.pt is in the checkpoint format too, but holds one rank's optimizer and RNG
    state: a KeyError 'vector' before, a message naming the file to use now."""
    from hdbl_mpi.run import rundir
    from hdbl_mpi.run.init_weights import load_initial_weights
    from hdbl_mpi.run.rankstate import RankState

    path = tmp_path / "checkpoint-ranks" / "8" / "rank-1.pt"
    path.parent.mkdir(parents=True)
    rundir.save_blob(path, RankState(rank=1, at=8).to_dict())
    with pytest.raises(HdblError, match=r"rank-1.pt holds no global weights. It is one rank's own state .* Use the "
                                        r"run directory, or the checkpoint.pt in it."):
        load_initial_weights(build_model("resnet_small", 5, 1, 16, width=4), str(path), [])
