"""Every model `model.name` can name, built the same way for training, profiling, evaluation and resume.

- the built-in ResNets (``resnet18``, ``resnet_small``; hdbl_mpi.models.resnet);
- the source documents' small models: ``lenet5`` (the data-parallel study's) and ``mlp`` (the MXNet examples');
- ``torchvision:<name>``: any classification model of the installed torchvision, built without weights (nothing
  is downloaded) for the data set's classes, its first convolution adapted to the data's channels;
- ``package.module:function``: a user's factory, ``function(num_classes, in_channels, **model.options)``.

The cyclic schedule changes dropout with the resolution. A model with dropout layers of its own has them set; a
model without one gets a dropout on the input of its classifier head (its last ``nn.Linear``), applied by a
forward pre-hook, so its parameters and state-dict names stay exactly those of the model (a saved state dict
still loads, see ``train.init_from``). `model_notes` says which happened.
"""

from __future__ import annotations

import difflib
import importlib
import sys
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hdbl_mpi.errors import ConfigError
from hdbl_mpi.models.resnet import RESNETS, build_resnet

SMALL_MODELS = ("lenet5", "mlp")
MODEL_NAMES = (*RESNETS, *SMALL_MODELS)
TORCHVISION = "torchvision:"


class LeNet5(nn.Module):
    """LeNet-5 as the data-parallel study trains it on MNIST-like data: two 5x5 convolutions (6 and 16 maps, the
    first padded so 28 px inputs keep LeCun's 32 px geometry) with ReLU and 2x2 max-pooling, then 120, 84 and
    the classes. An adaptive pool before the classifier lets any resolution reach its 16 x 5 x 5 features."""

    def __init__(self, num_classes: int, in_channels: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 6, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5), nn.ReLU(inplace=True), nn.MaxPool2d(2), nn.AdaptiveAvgPool2d(5),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(16 * 5 * 5, 120), nn.ReLU(inplace=True), nn.Linear(120, 84),
            nn.ReLU(inplace=True), nn.Dropout(dropout), nn.Linear(84, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class MLP(nn.Module):
    """The MXNet examples' multilayer perceptron: the flattened image, 128 and 64 ReLU units, the classes. It
    is built for one resolution; inputs at another (a cyclic schedule's lower stages) are resized to it."""

    def __init__(self, num_classes: int, in_channels: int, resolution: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.resolution = resolution
        self.layers = nn.Sequential(
            nn.Flatten(), nn.Linear(in_channels * resolution * resolution, 128), nn.ReLU(inplace=True),
            nn.Linear(128, 64), nn.ReLU(inplace=True), nn.Dropout(dropout), nn.Linear(64, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.resolution or x.shape[-2] != self.resolution:
            x = F.interpolate(x, size=(self.resolution, self.resolution), mode="bilinear", align_corners=False)
        return self.layers(x)


def build_model(name: str, num_classes: int, in_channels: int, resolution: int, stem: str = "auto",
                dropout: float = 0.0, width: int = 16, options: dict[str, Any] | None = None) -> nn.Module:
    """The model `name` for `num_classes` classes and `in_channels`-channel images; `resolution` is the largest the
    run trains at (the ResNets' automatic stem and the MLP's input size follow it)."""
    if not 0.0 <= dropout < 1.0:
        raise ConfigError(f"model.dropout is {dropout}; it must be in [0, 1).")
    options = dict(options or {})
    if options and (name in RESNETS or name in SMALL_MODELS):
        raise ConfigError(f"model.options is {options} but the built-in {name} takes no options (they are passed to "
                          "torchvision:<name> models and package.module:function factories); its settings are "
                          "model.width, model.stem and model.dropout.")
    if name in RESNETS:
        model = build_resnet(name, num_classes, in_channels, resolution, stem, dropout, width)
    elif name == "lenet5":
        model = LeNet5(num_classes, in_channels, dropout)
    elif name == "mlp":
        model = MLP(num_classes, in_channels, resolution, dropout)
    elif name.startswith(TORCHVISION):
        model = _checked(name, _torchvision(name[len(TORCHVISION):], num_classes, in_channels, resolution, options),
                         in_channels, resolution)
    elif ":" in name:
        model = _checked(name, _factory(name, num_classes, in_channels, options), in_channels, resolution)
    else:
        close = difflib.get_close_matches(name, MODEL_NAMES, n=2)
        raise ConfigError(f"model.name is {name!r}; use one of {', '.join(MODEL_NAMES)}"
                          + (f" (did you mean {' or '.join(close)}?)" if close else "")
                          + ", torchvision:<name> or your own package.module:function.")
    _ensure_dropout(model, dropout)
    return model


def _torchvision(name: str, num_classes: int, in_channels: int, resolution: int,
                 options: dict[str, Any]) -> nn.Module:
    from torchvision import models

    available = models.list_models(module=models)  # the classification models only
    if name not in available:
        close = difflib.get_close_matches(name, available, n=4, cutoff=0.5)
        raise ConfigError(f"model.name torchvision:{name} is not a classification model of torchvision "
                          f"{_version()}" + (f"; close ones: {', '.join(close)}" if close else "")
                          + f". It has {len(available)}, e.g. resnet50, mobilenet_v3_small, efficientnet_b0, vit_b_16.")
    if name.startswith(("vit_", "maxvit")):
        options.setdefault("image_size", resolution)  # a ViT is built for one input size
    if name in ("inception_v3", "googlenet"):
        options.setdefault("aux_logits", False)  # the auxiliary heads return a tuple in training
        options.setdefault("init_weights", True)
    model = _with_options(f"torchvision:{name}", options,
                          lambda: models.get_model(name, weights=None, num_classes=num_classes, **options))
    if in_channels != 3:
        _adapt_first_conv(model, in_channels, f"torchvision:{name}")
    return model


def _with_options(name: str, options: dict[str, Any], build: Callable[[], Any]) -> Any:
    """`build()`, with a keyword of model.options that the constructor does not take reported as a config error
    (it names the key) instead of a TypeError from deep inside the model's __init__."""
    try:
        return build()
    except TypeError as err:
        if "keyword argument" not in str(err):
            raise
        raise ConfigError(f"model.name={name} does not take model.options {options}: {err}. Remove or rename the "
                          "option (the constructor's own parameters are the ones it takes).") from None


def _version() -> str:
    import torchvision

    return torchvision.__version__


def _adapt_first_conv(model: nn.Module, in_channels: int, name: str) -> None:
    """Replace the first convolution that reads 3 channels by one that reads `in_channels` (same geometry)."""
    for parent in model.modules():
        for attr, child in parent.named_children():
            if isinstance(child, nn.Conv2d) and child.in_channels == 3:
                # The stubs type a Conv2d's own geometry as tuple[int, ...]; it is what the constructor took.
                new = nn.Conv2d(in_channels, child.out_channels, child.kernel_size,  # type: ignore[arg-type]
                                child.stride, child.padding, child.dilation,  # type: ignore[arg-type]
                                child.groups, child.bias is not None, child.padding_mode)
                setattr(parent, attr, new)
                return
    raise ConfigError(f"model.name={name}: no convolution reads 3-channel images, so it cannot be adapted to "
                      f"{in_channels} channel(s); use data with 3 channels or another model.")


def _factory(name: str, num_classes: int, in_channels: int, options: dict[str, Any]) -> nn.Module:
    module_name, _, function_name = name.rpartition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ConfigError(f"model.name={name}: cannot import module {module_name!r} ({err}). Python searched: "
                          f"{', '.join(p or '.' for p in sys.path)}. Put its directory on PYTHONPATH on every "
                          "host (hdbl launch forwards PYTHONPATH), or install it in the venv.") from None
    factory = getattr(module, function_name, None)
    if not callable(factory):
        raise ConfigError(f"model.name={name}: module {module_name!r} ({getattr(module, '__file__', '?')}) has no "
                          f"function {function_name!r}.")
    model = _with_options(name, options, lambda: factory(num_classes, in_channels, **options))
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model.name={name}: {function_name}(num_classes, in_channels, **model.options) returned "
                          f"{type(model).__name__}, not a torch.nn.Module.")
    return model


def _checked(name: str, model: nn.Module, in_channels: int, resolution: int) -> nn.Module:
    """One forward pass at the run's resolution, so a model that cannot take these inputs says so at set-up."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, in_channels, resolution, resolution))
    except Exception as err:
        raise ConfigError(f"model.name={name} cannot take {in_channels}x{resolution}x{resolution} images "
                          f"({type(err).__name__}: {str(err).splitlines()[0][:200]}); use a larger "
                          "data.resolution (or schedule resolutions), or another model.") from None
    model.train(was_training)
    return model


class HeadDropout:
    """Dropout on the input of a classifier head, as a forward pre-hook (for models without dropout layers)."""

    def __init__(self, p: float, head: str) -> None:
        self.p, self.head = p, head

    def __call__(self, module: nn.Module, args: tuple) -> tuple:
        return (F.dropout(args[0], self.p, module.training), *args[1:])


def _ensure_dropout(model: nn.Module, p: float) -> None:
    if any(isinstance(m, nn.Dropout) for m in model.modules()):
        return
    heads = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not heads:
        return  # no classifier head to put it before; model_notes says the schedule's dropout is not applied
    name, head = heads[-1]
    hook = HeadDropout(p, name)
    head.register_forward_pre_hook(hook)
    model._hdbl_head_dropout = hook  # type: ignore[assignment]  # set_dropout finds it here


def set_dropout(model: nn.Module, p: float) -> None:
    """Change every dropout's probability in place (the schedule changes it with the resolution)."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = p
    hook = getattr(model, "_hdbl_head_dropout", None)
    if isinstance(hook, HeadDropout):
        hook.p = p


def model_notes(model: nn.Module) -> list[str]:
    """How the schedule's dropout reaches the model, for the log and the summary."""
    hook = getattr(model, "_hdbl_head_dropout", None)
    if isinstance(hook, HeadDropout):
        return [f"the model has no dropout layer: the schedule's dropout applies to the input of its classifier "
                f"head ({hook.head})"]
    if not any(isinstance(m, nn.Dropout) for m in model.modules()):
        return ["the model has neither a dropout layer nor a linear classifier head: the schedule's dropout is not "
                "applied"]
    return []
