"""The torchvision/PIL decoding path for image folders, and the choice between it and DALI.

Unlike the in-memory sets, these images are decoded per batch, because ImageNet does not fit in memory as uint8
(~1.28 M images). The fast path decodes through NVIDIA DALI (:mod:`hdbl_mpi.data.dali`);
:class:`TorchvisionFolderLoader` here is the fallback for machines without DALI and yields tensors of the same
shape and dtype, so the trainer does not care which one it got (:func:`make_folder_loader` picks and says
which). Both read one :class:`hdbl_mpi.data.images.FolderIndex`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from hdbl_mpi.data.images import VAL_RESIZE_RATIO, FolderIndex, check_request
from hdbl_mpi.errors import DataError

if TYPE_CHECKING:
    from hdbl_mpi.data.dali import DaliFolderLoader

__all__ = ["TorchvisionFolderLoader", "make_folder_loader"]

log = logging.getLogger(__name__)

# ------------------------------------------------------------------------------------ torchvision/PIL path


class _FolderDataset(Dataset):
    """Map-style dataset whose item key is (file index, resolution, augmentation seed).

    Carrying the resolution in the key, instead of in an attribute, lets persistent DataLoader workers serve
    any resolution without being restarted, and no worker can apply a stale resolution after a stage change.
    The seed, drawn in the main process from the loader's checkpointed generator, decides the sample's crop and
    flip, so a resumed loader repeats them exactly whichever worker process decodes the file.
    A file that fails to decode gives a zero image and the reason instead of an exception, so one bad file does
    not kill the worker; the loader replaces the sample.
    """

    def __init__(self, files: list[Path], labels: list[int], train: bool, mean: Sequence[float], std: Sequence[float]):
        self.files, self.labels, self.train = files, labels, train
        self.mean, self.std = list(mean), list(std)
        self._transforms: dict[int, object] = {}

    def __len__(self) -> int:
        return len(self.files)

    def _transform(self, resolution: int):
        from torchvision import transforms as T

        if resolution not in self._transforms:
            if self.train:
                steps = [T.RandomResizedCrop(resolution), T.RandomHorizontalFlip()]
            else:
                steps = [T.Resize(int(resolution / VAL_RESIZE_RATIO)), T.CenterCrop(resolution)]
            self._transforms[resolution] = T.Compose([*steps, T.ToTensor(), T.Normalize(self.mean, self.std)])
        return self._transforms[resolution]

    def __getitem__(self, key: tuple[int, int, int]) -> tuple[torch.Tensor, int, str]:
        index, resolution, seed = key
        try:
            with Image.open(self.files[index]) as image:
                rgb = image.convert("RGB")  # greyscale, CMYK and palette images all become 3 channels
        except Exception as exc:  # see _header_problem on catching everything PIL raises
            return torch.zeros(3, resolution, resolution), self.labels[index], f"{type(exc).__name__}: {exc}"
        with torch.random.fork_rng(devices=[]):  # torchvision draws from the global RNG: seed it, then restore
            torch.manual_seed(seed)
            return self._transform(resolution)(rgb), self.labels[index], ""


class _PlanSampler:
    """Batch sampler replaying a plan set in the main process before each pass of the DataLoader."""

    def __init__(self) -> None:
        self.plan: list[list[tuple[int, int, int]]] = []

    def __iter__(self) -> Iterator[list[tuple[int, int, int]]]:
        return iter(self.plan)

    def __len__(self) -> int:
        return len(self.plan)


def _single_threaded_worker(_: int) -> None:
    """Each DataLoader worker is one decoding thread; torch's intra-op threads would oversubscribe the CPU."""
    torch.set_num_threads(1)


class TorchvisionFolderLoader:
    """The fallback without DALI: PIL decoding in a torch DataLoader; same shapes and dtypes as the DALI path.

    ``train=True``: each :meth:`batches` call draws ``steps * batch`` files from fresh random permutations of the
    split (chained when one pass is not enough) with a seeded generator that advances across calls, so
    consecutive commits train on different samples (method §4); RandomResizedCrop + horizontal flip.
    ``train=False``: :meth:`batches` with ``steps=None`` goes over the whole split once, in order, with
    resize to resolution / 0.875 and centre crop.

    ``mean``/``std`` are per-channel in [0, 1] units. Decoding runs in ``num_threads`` persistent worker
    processes (0 = in the calling process). The file choice and every sample's crop/flip come from one generator
    seeded with ``seed`` and kept in :meth:`state_dict`, so a resumed loader continues the stream exactly.
    Give each training process its own ``seed``, or they all train on the same samples.

    A file that fails to decode is counted in :attr:`skipped`, recorded in :attr:`skipped_files`, never drawn
    again, and (in training) replaced by another random file so the batch keeps its size; in validation it is
    left out of its batch.
    """

    def __init__(
        self,
        index: FolderIndex,
        *,
        train: bool,
        mean: Sequence[float],
        std: Sequence[float],
        num_threads: int = 2,
        seed: int = 0,
        device: torch.device | str = "cpu",
    ):
        if num_threads < 0:
            raise ValueError(f"num_threads must be >= 0, got {num_threads}")
        self.index, self.train, self.device = index, train, torch.device(device)
        self.skipped = 0
        self.skipped_files: list[tuple[Path, str]] = []
        self._dataset = _FolderDataset(index.files, index.labels, train, mean, std)
        self._usable = torch.arange(len(index.files))
        self._generator = torch.Generator().manual_seed(seed)
        self._sampler = _PlanSampler()
        self._loader = DataLoader(
            self._dataset,
            batch_sampler=self._sampler,
            num_workers=num_threads,
            persistent_workers=num_threads > 0,
            pin_memory=self.device.type == "cuda",
            worker_init_fn=_single_threaded_worker if num_threads > 0 else None,
            generator=torch.Generator().manual_seed(seed + 1),
        )

    def batches(
        self, steps: int | None, batch: int, resolution: int
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(inputs float32 (B, 3, r, r), labels int64 (B,)) on the loader's device.

        Training: exactly ``steps`` batches of ``batch``. Validation (``steps=None``): the whole split once,
        the last batch possibly smaller.
        """
        check_request(self.train, steps, batch, resolution)  # here, not at the first next()
        return self._iterate(steps, batch, resolution)

    def _iterate(self, steps: int | None, batch: int, resolution: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if steps is not None:  # training (check_request made sure)
            chosen = self._draw(steps * batch).tolist()
            seeds = self._seeds(steps * batch)
            self._sampler.plan = [
                [(chosen[k], resolution, seeds[k]) for k in range(s * batch, (s + 1) * batch)] for s in range(steps)
            ]
        else:
            count = len(self.index.files)
            starts = range(0, count, batch)
            self._sampler.plan = [[(i, resolution, 0) for i in range(a, min(a + batch, count))] for a in starts]
        plan = self._sampler.plan
        for keys, (inputs, labels, errors) in zip(plan, self._loader, strict=True):  # the loader keeps plan order
            failed = [pos for pos, error in enumerate(errors) if error]
            if failed:
                inputs, labels = self._handle_failures(inputs, labels, keys, errors, failed)
            yield inputs.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)

    def state_dict(self) -> dict[str, Any]:
        """The generator every file choice and crop/flip seed comes from, and the files still in use: a loader
        given this state yields exactly what this one yields next."""
        return {"generator": self._generator.get_state(), "usable": self._usable.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._generator.set_state(state["generator"])
        self._usable = state["usable"].clone()

    def _seeds(self, count: int) -> list[int]:
        """One augmentation seed per sample, from the checkpointed generator."""
        return torch.randint(0, 2**62, (count,), generator=self._generator).tolist()

    def _draw(self, count: int) -> torch.Tensor:
        """``count`` file indices from chained fresh permutations of the usable files."""
        chunks, left = [], count
        while left > 0:
            perm = self._usable[torch.randperm(len(self._usable), generator=self._generator)]
            chunks.append(perm[:left])
            left -= len(chunks[-1])
        return torch.cat(chunks)

    def _handle_failures(
        self,
        inputs: torch.Tensor,
        labels: torch.Tensor,
        keys: list[tuple[int, int, int]],
        errors: Sequence[str],
        failed: list[int],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Record the failed files; replace them by other random files (training) or drop them (validation)."""
        for pos in failed:
            self._forget(keys[pos][0], errors[pos])
        if not self.train:
            keep = [pos for pos in range(len(keys)) if pos not in failed]
            return inputs[keep], labels[keep]
        resolution = keys[0][1]
        for pos in failed:
            while True:
                replacement = int(self._draw(1)[0])
                image, label, error = self._dataset[(replacement, resolution, self._seeds(1)[0])]
                if not error:
                    inputs[pos], labels[pos] = image, label
                    break
                self._forget(replacement, error)
        return inputs, labels

    def _forget(self, index: int, reason: str) -> None:
        """Take a failed file out of the draw; counted and logged once (a commit's plan may hold it twice)."""
        if not bool((self._usable == index).any()):
            return
        path = self.index.files[index]
        self.skipped += 1
        self.skipped_files.append((path, reason))
        self._usable = self._usable[self._usable != index]
        log.warning("skipped undecodable image %s (%s)", path, reason)
        if len(self._usable) == 0:
            raise DataError(f"None of the {len(self.index.files)} images of {self.index.root} could be decoded.")


# -------------------------------------------------------------------------------------------------- choice


def make_folder_loader(
    index: FolderIndex,
    *,
    train: bool,
    mean: Sequence[float],
    std: Sequence[float],
    prefer_dali: bool = True,
    device: torch.device | str = "cpu",
    num_threads: int = 2,
    seed: int = 0,
) -> tuple[TorchvisionFolderLoader | DaliFolderLoader, str]:
    """The loader for ``index`` and which decoder it uses: "dali-gpu", "dali-cpu" or "torchvision".

    DALI is used when ``prefer_dali`` and it imports; it decodes on the GPU ('mixed') when ``device`` is a CUDA
    device. Without DALI one log line says so; put the returned name into the run summary, because decoding
    speed (and so the time per commit) depends on it.
    """
    from hdbl_mpi.data import dali as dali_backend

    device = torch.device(device)
    if prefer_dali and dali_backend.dali_available():
        device_id = (device.index or 0) if device.type == "cuda" else None
        loader = dali_backend.DaliFolderLoader(
            index, train=train, mean=mean, std=std, num_threads=max(1, num_threads), seed=seed, device=device,
            device_id=device_id,
        )
        return loader, "dali-cpu" if device_id is None else "dali-gpu"
    if prefer_dali:
        log.warning("NVIDIA DALI not installed (pip install .[dali]); decoding with torchvision/PIL")
    return TorchvisionFolderLoader(
        index, train=train, mean=mean, std=std, num_threads=num_threads, seed=seed, device=device
    ), "torchvision"

