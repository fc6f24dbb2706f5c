"""Turning indices into model-ready batches: augmentation, resizing, normalisation.

Data sets stay uint8 in memory (4x smaller than float32, and 4x less to copy to an accelerator); only the
indexed batch is converted. Augmentation works on whole batches through index arithmetic, without a Python
loop over samples, because per-sample transforms would dominate step time for small models.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F


def make_batch(
    x: torch.Tensor,
    index: torch.Tensor,
    resolution: int,
    mean: Sequence[float],
    std: Sequence[float],
    *,
    augment: bool,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Float32 (B, C, resolution, resolution) normalised inputs for the uint8 images ``x[index]``.

    With ``augment`` the images get a random crop from a zero-padded copy (pad = native size // 8, the
    usual 4 px for 32 px images) and a random horizontal flip, both at native resolution so the shift is
    the same fraction of the image whatever resolution the batch is trained at. Random numbers come from
    ``generator`` (on its own device), so a seeded generator reproduces a batch exactly.
    """
    images = x[index.to(x.device)].to(device, non_blocking=True)
    if augment:
        images = _crop_and_flip(images, generator)
    batch = images.to(torch.float32).div_(255.0)
    native = batch.shape[-1]
    if resolution != native or batch.shape[-2] != resolution:
        downscale = resolution < native
        batch = F.interpolate(
            batch, size=(resolution, resolution), mode="bilinear", align_corners=False, antialias=downscale
        )
    channels = batch.shape[1]
    mean_t = torch.as_tensor(mean, dtype=torch.float32, device=batch.device).reshape(1, -1, 1, 1)
    std_t = torch.as_tensor(std, dtype=torch.float32, device=batch.device).reshape(1, -1, 1, 1)
    if mean_t.shape[1] not in (1, channels) or std_t.shape[1] not in (1, channels):
        raise ValueError(f"mean/std have {mean_t.shape[1]}/{std_t.shape[1]} entries for {channels} channels")
    return batch.sub_(mean_t).div_(std_t).contiguous()


def _crop_and_flip(images: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Random padded crop plus horizontal flip of a uint8 batch, as one gather.

    A crop is a window of rows/columns of the padded batch; a flip reverses the window's column order, so
    both fold into one advanced-indexing operation per batch.
    """
    b, c, h, w = images.shape
    pad_h, pad_w = h // 8, w // 8
    rng_device = generator.device if generator is not None else torch.device("cpu")
    top = torch.randint(0, 2 * pad_h + 1, (b,), generator=generator, device=rng_device)
    left = torch.randint(0, 2 * pad_w + 1, (b,), generator=generator, device=rng_device)
    flip = torch.rand(b, generator=generator, device=rng_device) < 0.5
    device = images.device
    rows = top.to(device)[:, None] + torch.arange(h, device=device)  # (b, h)
    cols = left.to(device)[:, None] + torch.arange(w, device=device)  # (b, w)
    cols = torch.where(flip.to(device)[:, None], cols.flip(1), cols)
    padded = F.pad(images, (pad_w, pad_w, pad_h, pad_h))  # zeros = black pixels
    return padded[
        torch.arange(b, device=device)[:, None, None, None],
        torch.arange(c, device=device)[None, :, None, None],
        rows[:, None, :, None],
        cols[:, None, None, :],
    ]


def eval_batches(
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int,
    resolution: int,
    mean: Sequence[float],
    std: Sequence[float],
    device: torch.device | str = "cpu",
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(inputs, labels) over all of ``x``/``y`` in order, unaugmented, the last batch possibly partial.

    Evaluation must see every sample exactly once and deterministically, hence no shuffling, no dropping.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    for start in range(0, x.shape[0], batch_size):
        index = torch.arange(start, min(start + batch_size, x.shape[0]))
        inputs = make_batch(x, index, resolution, mean, std, augment=False, device=device)
        yield inputs, y[index].to(device, non_blocking=True)
