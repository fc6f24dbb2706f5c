"""ResNet-18 as the papers use it, plus a narrow ResNet that trains in minutes on a CPU.

ResNet-18 comes from torchvision (a well-kept reference implementation) with two changes the method needs:
the stem can be the CIFAR one (3x3 convolution, stride 1, no max-pool, as for 24/32 px inputs) or the ImageNet
one (7x7 stride 2 + max-pool), and a dropout layer sits before the classifier because the cyclic schedule
changes dropout with the resolution (method §5). The small ResNet reuses torchvision's BasicBlock so both models
share one block implementation.
"""

from __future__ import annotations

from torch import nn
from torchvision.models.resnet import BasicBlock, ResNet, resnet18

from hdbl_mpi.errors import ConfigError

RESNETS = ("resnet18", "resnet_small")
STEMS = ("cifar", "imagenet", "auto")


def _resolve_stem(stem: str, resolution: int) -> str:
    """`auto` picks the CIFAR stem for small images, where a stride-4 stem would discard most pixels."""
    if stem not in STEMS:
        raise ConfigError(f"model.stem is {stem!r}; use one of {', '.join(STEMS)}.")
    if stem == "auto":
        return "cifar" if resolution <= 64 else "imagenet"
    return stem


def _classifier(in_features: int, num_classes: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Dropout(p=dropout), nn.Linear(in_features, num_classes))


def _resnet18(num_classes: int, in_channels: int, stem: str, dropout: float) -> ResNet:
    model = resnet18(weights=None, num_classes=num_classes)
    if stem == "cifar":
        model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    elif in_channels != 3:
        model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    model.fc = _classifier(model.fc.in_features, num_classes, dropout)
    return model


class SmallResNet(nn.Module):
    """Three stages of one BasicBlock each (widths w, 2w, 4w): a real ResNet, about 40x cheaper than ResNet-18.

    It keeps BatchNorm and residual connections, so the exchange of BatchNorm buffers and the merge rules are
    exercised exactly as with ResNet-18, while a 2-core CPU still reaches ~90% on Fashion-MNIST in minutes.
    """

    def __init__(self, num_classes: int, in_channels: int, stem: str, dropout: float, width: int) -> None:
        super().__init__()
        if stem == "cifar":
            self.stem = nn.Sequential(
                nn.Conv2d(in_channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)
            )
        else:
            self.stem = nn.Sequential(
                nn.Conv2d(in_channels, width, 7, 2, 3, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(3, 2, 1),
            )
        stages, inplanes = [], width
        for i, planes in enumerate((width, 2 * width, 4 * width)):
            stride = 1 if i == 0 else 2
            downsample = None
            if stride != 1 or inplanes != planes:
                downsample = nn.Sequential(
                    nn.Conv2d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
                )
            stages.append(BasicBlock(inplanes, planes, stride, downsample))
            inplanes = planes
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = _classifier(inplanes, num_classes, dropout)

    def forward(self, x):  # noqa: D102 - standard nn.Module forward
        return self.fc(self.pool(self.stages(self.stem(x))).flatten(1))


def build_resnet(name: str, num_classes: int, in_channels: int, resolution: int, stem: str = "auto",
                 dropout: float = 0.0, width: int = 16) -> nn.Module:
    """resnet18 or resnet_small; `resolution` only matters for `stem: auto`."""
    resolved = _resolve_stem(stem, resolution)
    if name == "resnet18":
        return _resnet18(num_classes, in_channels, resolved, dropout)
    if width < 1:
        raise ConfigError(f"model.width is {width}; it must be a positive integer (16 is a good start).")
    return SmallResNet(num_classes, in_channels, resolved, dropout, width)
