"""A generated, learnable image data set, so tests and smoke runs need no files and no network.

Each class has a fixed smooth random prototype; a sample is its class prototype, circularly shifted by a
few pixels, plus Gaussian noise, quantised to uint8. The classes are therefore well separated (a small CNN
learns them within a few hundred steps) while the shifts and noise keep the task from being a lookup, so a
falling loss shows that training, not memorisation of one image, works.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from hdbl_mpi.datasets import SYNTHETIC_DEFAULTS as DEFAULTS
from hdbl_mpi.errors import DataError

NOISE_STD = 0.15
"""Per-pixel Gaussian noise, in [0, 1] units: visible, yet far below the prototypes' contrast."""


def synthetic_options(options: dict | None) -> dict[str, int]:
    """``options`` merged over :data:`DEFAULTS` and checked, so a typo is reported instead of ignored."""
    merged = dict(DEFAULTS)
    unknown = sorted(set(options or {}) - set(DEFAULTS))
    if unknown:
        raise DataError(
            f"Unknown synthetic data option(s) {', '.join(unknown)}; the valid keys are "
            f"{', '.join(DEFAULTS)}. Fix the key under data.synthetic."
        )
    merged.update(options or {})
    for key, value in merged.items():
        minimum = 0 if key == "seed" else (2 if key == "classes" else 1)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise DataError(
                f"data.synthetic.{key} is {value!r}; it must be an integer >= {minimum}. Set it, e.g. "
                f"`--set data.synthetic.{key}={DEFAULTS[key]}`."
            )
    return merged


def generate_synthetic(
    train_size: int, test_size: int, classes: int, channels: int, size: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x_train, y_train, x_test, y_test): uint8 (N, channels, size, size) images and int64 labels.

    Everything is drawn from one generator seeded with ``seed``, so equal arguments give identical tensors
    on every rank and every run. Train and test come from the same pool, so they share a distribution.
    """
    generator = torch.Generator().manual_seed(seed)
    # Prototypes: a coarse random grid upsampled, i.e. smooth blobs a convolution can pick up under shifts.
    coarse = max(2, size // 4)
    grid = torch.rand(classes, channels, coarse, coarse, generator=generator)
    prototypes = F.interpolate(grid, size=(size, size), mode="bilinear", align_corners=False)

    total = train_size + test_size
    labels = (torch.arange(total) % classes)[torch.randperm(total, generator=generator)]
    max_shift = max(1, size // 8)
    shifts = torch.randint(-max_shift, max_shift + 1, (2, total), generator=generator)
    rows = (torch.arange(size)[None, :] - shifts[0][:, None]) % size  # (total, size)
    cols = (torch.arange(size)[None, :] - shifts[1][:, None]) % size
    shifted = prototypes[
        labels[:, None, None, None],
        torch.arange(channels)[None, :, None, None],
        rows[:, None, :, None],
        cols[:, None, None, :],
    ]
    noisy = shifted + NOISE_STD * torch.randn(shifted.shape, generator=generator)
    images = noisy.clamp_(0.0, 1.0).mul_(255.0).round_().to(torch.uint8).contiguous()
    return images[:train_size], labels[:train_size], images[train_size:], labels[train_size:]


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 ``images`` in [0, 1] units, for normalising generated data."""
    pixels = images.to(torch.float64).div_(255.0).transpose(0, 1).reshape(images.shape[1], -1)
    return tuple(pixels.mean(dim=1).tolist()), tuple(pixels.std(dim=1).tolist())
