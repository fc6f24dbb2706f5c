"""ResNet-18 stems, dropout before the classifier, input channels, and the small ResNet."""

import pytest
import torch
from torch import nn

from hdbl_mpi.errors import ConfigError
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
