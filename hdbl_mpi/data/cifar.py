"""Reader for the python-pickle releases of CIFAR-10 and CIFAR-100.

The archives are read directly (not through torchvision) so that a run never needs network access or
torchvision's directory checks, and so that a CIFAR-100 directory handed to a CIFAR-10 run is named as
such instead of failing with a missing-key error.
"""

from __future__ import annotations

import os
import pickle
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from hdbl_mpi.errors import DataError


@dataclass(frozen=True)
class CifarVariant:
    """Where and how one CIFAR release stores its data."""

    title: str  # the name users know, for messages
    directory: str  # the folder the archive unpacks to
    archive: str
    files: dict[str, tuple[str, ...]]  # split -> pickle files, concatenated in this order
    label_key: bytes
    torchvision_class: str


VARIANTS: dict[str, CifarVariant] = {
    "cifar10": CifarVariant(
        title="CIFAR-10",
        directory="cifar-10-batches-py",
        archive="cifar-10-python.tar.gz",
        files={"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)},
        label_key=b"labels",
        torchvision_class="CIFAR10",
    ),
    "cifar100": CifarVariant(
        title="CIFAR-100",
        directory="cifar-100-python",
        archive="cifar-100-python.tar.gz",
        files={"train": ("train",), "test": ("test",)},
        label_key=b"fine_labels",
        torchvision_class="CIFAR100",
    ),
}


def other_variant(name: str) -> str:
    """The CIFAR release that is not ``name``: what a mix-up most likely handed us instead."""
    return "cifar100" if name == "cifar10" else "cifar10"


def describe(name: str) -> str:
    """What is looked for, as told to the user when nothing is found."""
    variant = VARIANTS[name]
    files = ", ".join(f for split in ("train", "test") for f in variant.files[split])
    return f"{variant.directory}/ (with {files}) or {variant.archive}"


def _holds(directory: Path, variant: CifarVariant, splits: tuple[str, ...]) -> bool:
    return all((directory / f).is_file() for split in splits for f in variant.files[split])


def locate_cifar(directory: Path, name: str, splits: tuple[str, ...]) -> Path | None:
    """The folder holding the pickle files of ``splits`` for ``name`` under ``directory``, or None.

    ``directory`` may be the unpacked release folder itself or its parent; an archive found in the parent is
    unpacked next to itself first, so later runs read the folder directly.
    """
    variant = VARIANTS[name]
    for candidate in (directory / variant.directory, directory):
        if _holds(candidate, variant, splits):
            return candidate
    archive = directory / variant.archive
    if archive.is_file():
        extract_archive(archive, name)
        unpacked = directory / variant.directory
        if _holds(unpacked, variant, splits):
            return unpacked
        raise DataError(
            f"{archive} unpacked to {unpacked}, but that folder lacks some of {describe(name)}; the archive is "
            f"incomplete. Delete {unpacked} and replace the archive with an intact copy."
        )
    return None


def find_other_variant(directory: Path, name: str) -> Path | None:
    """Where under ``directory`` the *other* CIFAR release is, so a mix-up can be named; None if absent."""
    other = VARIANTS[other_variant(name)]
    for candidate in (directory / other.directory, directory):
        if _holds(candidate, other, ("train", "test")):
            return candidate
    archive = directory / other.archive
    return archive if archive.is_file() else None


def extract_archive(archive: Path, name: str) -> None:
    """Unpack ``archive`` beside itself, atomically, so ranks that share a disk cannot see half a folder.

    Each caller unpacks into its own temporary folder and renames the result into place; a rank that loses
    the race simply finds the folder already there.
    """
    variant = VARIANTS[name]
    target = archive.parent / variant.directory
    try:
        scratch = Path(tempfile.mkdtemp(prefix=".unpack-", dir=archive.parent))
    except OSError as exc:
        raise DataError(
            f"Cannot unpack {archive}: its folder is not writable ({exc}). Unpack it yourself "
            f"(`tar -xzf {archive} -C <writable dir>`) and point data.dir at that folder."
        ) from exc
    try:
        with tarfile.open(archive, "r:gz") as tar:
            tar.extractall(scratch, filter="data")
        unpacked = scratch / variant.directory
        if not unpacked.is_dir():
            other = VARIANTS[other_variant(name)]
            if (scratch / other.directory).is_dir():
                raise DataError(
                    f"{archive} holds {other.title} ({other.directory}/), but {variant.title} was requested. "
                    f"Set data.name={other_variant(name)} to train on it, or provide {variant.archive}."
                )
            raise DataError(
                f"{archive} does not contain {variant.directory}/; it is not the {variant.title} python "
                "release. Replace it with the archive from https://www.cs.toronto.edu/~kriz/cifar.html."
            )
        try:
            os.rename(unpacked, target)
        except OSError:
            if not target.is_dir():  # not merely a lost race with another rank
                raise
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise DataError(
            f"Cannot unpack {archive} ({type(exc).__name__}: {exc}); it is damaged or its folder is not "
            "writable. Replace the archive with an intact copy, or unpack it yourself and point data.dir at "
            "the folder holding the result."
        ) from exc
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def read_cifar_split(directory: Path, name: str, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Images as uint8 (N, 3, 32, 32) and labels as int64 (N,) of one split, from the pickles in ``directory``."""
    variant = VARIANTS[name]
    images, labels = [], []
    for filename in variant.files[split]:
        path = directory / filename
        batch = _unpickle(path)
        if variant.label_key not in batch:
            other = VARIANTS[other_variant(name)]
            if other.label_key in batch:
                raise DataError(
                    f"{path} is a {other.title} file (it has {other.label_key.decode()}), but {variant.title} "
                    f"was requested. Set data.name={other_variant(name)} to train on it, or point data.dir "
                    f"at the {variant.title} files ({describe(name)})."
                )
            raise _damaged(path, f"it has no {variant.label_key.decode()!r} entry")
        data = np.asarray(batch.get(b"data"))
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise _damaged(path, f"its 'data' entry is {data.dtype} {data.shape}, expected uint8 (N, 3072)")
        label_array = np.asarray(batch[variant.label_key], dtype=np.int64)
        if label_array.shape != (data.shape[0],):
            raise _damaged(path, f"it holds {data.shape[0]} images but {label_array.size} labels")
        images.append(data)
        labels.append(label_array)
    # Rows are 1024 red, then 1024 green, then 1024 blue values, i.e. already channel-first.
    x = torch.from_numpy(np.concatenate(images).reshape(-1, 3, 32, 32))
    y = torch.from_numpy(np.concatenate(labels))
    return x, y


def _unpickle(path: Path) -> dict:
    try:
        with path.open("rb") as handle:
            batch = pickle.load(handle, encoding="bytes")
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError) as exc:
        raise _damaged(path, f"{type(exc).__name__}: {exc}") from exc
    if not isinstance(batch, dict):
        raise _damaged(path, f"it holds a {type(batch).__name__}, not a dict")
    return batch


def _damaged(path: Path, detail: str) -> DataError:
    return DataError(
        f"CIFAR file {path} cannot be used: {detail}. It is damaged or not from the python release; replace "
        "it with the file from https://www.cs.toronto.edu/~kriz/cifar.html."
    )


def download_cifar(name: str, root: Path) -> None:
    """Fetch ``name`` with torchvision into ``root``, which unpacks it to ``root/<release folder>``.

    Failures propagate unchanged: the caller turns them into one DataError that also says where the files
    can be put by hand. torchvision is imported here because only a download needs it.
    """
    from torchvision import datasets

    getattr(datasets, VARIANTS[name].torchvision_class)(root=str(root), train=False, download=True)
