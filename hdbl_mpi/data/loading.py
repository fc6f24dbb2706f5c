"""In-memory data sets: found on disk (or downloaded when allowed), loaded once as uint8 tensors.

Every process loads its data once into memory as uint8 (N, C, H, W) tensors; batches are converted,
augmented and resized on demand (hdbl_mpi/data/batches.py). Files are searched for in a fixed order (the given
data directory, then system locations such as Debian's ``/usr/share/datasets``) and downloaded only when
explicitly allowed, because cluster nodes are usually offline and a silent download attempt would hang or
fail far from its cause. What each data set is (classes, statistics, how to obtain it): hdbl_mpi/datasets.py.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import torch

from hdbl_mpi.data import cifar, idx
from hdbl_mpi.data import synthetic as synthetic_data
from hdbl_mpi.datasets import DATASETS, canonical_name, statistics
from hdbl_mpi.errors import DataError

DEFAULT_DATA_DIR = Path("data")
"""Searched, and downloaded into, when no data directory is given (relative to the working directory)."""

SYSTEM_DIRS: dict[str, tuple[Path, ...]] = {"fashion-mnist": (Path("/usr/share/datasets/fashion-mnist"),)}
"""Where distribution packages install a data set; searched after the data directory."""

T = TypeVar("T")


@dataclass
class ArrayDataset:
    """A whole data set in memory: uint8 images (N, C, H, W) and int64 labels, per split.

    A split that was not requested is present but empty, with the same (C, H, W), so code that only
    inspects shapes works on every process whichever splits it loaded.
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    source: str

    @property
    def channels(self) -> int:
        return int(self.x_test.shape[1])

    @property
    def native_resolution(self) -> int:
        return int(self.x_test.shape[2])

    @property
    def train_size(self) -> int:
        return int(self.x_train.shape[0])


def load_dataset(
    name: str,
    data_dir: str | Path | None = None,
    download: bool = False,
    *,
    train: bool = True,
    test: bool = True,
    synthetic: dict | None = None,
) -> ArrayDataset:
    """Load data set ``name`` into memory, only the splits asked for.

    ``data_dir`` (default :data:`DEFAULT_DATA_DIR`) is searched first, then system locations; with
    ``download`` a missing data set is fetched into ``data_dir`` through torchvision, otherwise the network
    is never touched. ``synthetic`` holds the generator options and is used only for ``name="synthetic"``.
    Raises :class:`DataError`, saying what was looked for where and how to fix it, when the data cannot be
    found or read.
    """
    key = canonical_name(name)
    splits = tuple(split for split, wanted in (("train", train), ("test", test)) if wanted)
    if not splits:
        raise ValueError("load_dataset needs train=True or test=True")
    if key == "synthetic":
        return _load_synthetic(synthetic, splits)
    root = Path(data_dir).expanduser() if data_dir else DEFAULT_DATA_DIR  # "" from a config means unset
    hit, source = _locate(key, root, splits, download)
    if key in idx.TORCHVISION_CLASSES:
        loaded = {split: idx.read_idx_split(*hit[split]) for split in splits}
    else:
        loaded = {split: cifar.read_cifar_split(hit, key, split) for split in splits}
    classes = DATASETS[key].classes
    assert classes is not None  # every file-based set has a known class count
    return _assemble(key, loaded, classes, *statistics(key), source)


def _locate(key: str, root: Path, splits: tuple[str, ...], download: bool):
    """(files or directory, where found) of a file-based data set; DataError with the fix when missing."""
    if key in idx.TORCHVISION_CLASSES:
        extra = [root / idx.TORCHVISION_CLASSES[key] / "raw"]
        wanted = ", ".join(f"{stem}[.gz]" for stem in idx.wanted_files(splits))
        return _find(key, root, extra, wanted, download, lambda d: idx.locate_idx(d, splits), idx.download_idx)
    return _find(key, root, [], cifar.describe(key), download, lambda d: cifar.locate_cifar(d, key, splits),
                 cifar.download_cifar, _cifar_mixup)


def find_dataset(name: str, data_dir: str | Path | None = None) -> str:
    """Where data set ``name`` would be read from, without reading it (for `hdbl doctor` on every host);
    raises the same DataError as :func:`load_dataset` when it is missing."""
    key = canonical_name(name)
    if key == "synthetic":
        return "generated in memory"
    root = Path(data_dir).expanduser() if data_dir else DEFAULT_DATA_DIR
    return _locate(key, root, ("train", "test"), False)[1]


def _search_dirs(key: str, root: Path, extra: list[Path]) -> list[Path]:
    """Directories searched for ``key``, in order: the data directory, its per-data-set folders, system ones."""
    ordered = [root, root / key, *extra, *SYSTEM_DIRS.get(key, ())]
    return list(dict.fromkeys(ordered))


def _find(
    key: str,
    root: Path,
    extra: list[Path],
    wanted: str,
    download: bool,
    locate: Callable[[Path], T | None],
    fetch: Callable[[str, Path], None],
    diagnose: Callable[[str, list[Path]], str | None] | None = None,
) -> tuple[T, str]:
    """The first hit of ``locate`` over the search directories, downloading once if allowed.

    Shared by the file-based loaders so that the search order and the wording of "not found" are the same
    for every data set. Returns the hit and the directory it came from.
    """
    dirs = _search_dirs(key, root, extra)
    where = ", ".join(str(d) for d in dirs)
    remedy = "To fix: put these files into one of those directories (data.dir sets the first)" + DATASETS[key].obtain

    def search() -> tuple[T, str] | None:
        for directory in dirs:
            if directory.is_dir():
                hit = locate(directory)
                if hit is not None:
                    return hit, str(directory)
        return None

    found = search()
    if found is None and download:
        try:
            fetch(key, root)
        except Exception as exc:  # torchvision raises URLError, RuntimeError, OSError... for a failed fetch
            raise DataError(
                f"Downloading {key} into {root} failed ({type(exc).__name__}: {exc}); this machine is "
                f"probably offline. Looked for {wanted} in {where}. {remedy}, and run again without "
                "data.download."
            ) from exc
        found = search()
    if found is None:
        mixup = diagnose(key, dirs) if diagnose is not None else None
        if mixup is not None:
            raise DataError(f"{mixup} Searched: {where}.")
        download_hint = "" if download else ", or, when online, pass `--set data.download=true`"
        raise DataError(f"{key} data not found: looked for {wanted} in {where}. {remedy}{download_hint}.")
    return found


def _cifar_mixup(key: str, dirs: list[Path]) -> str | None:
    """A message naming the other CIFAR release if that is what the search directories hold instead."""
    for directory in dirs:
        other = cifar.find_other_variant(directory, key) if directory.is_dir() else None
        if other is not None:
            found, wanted = cifar.VARIANTS[cifar.other_variant(key)], cifar.VARIANTS[key]
            return (
                f"{wanted.title} ({key}) was requested, but only {found.title} files were found, at {other}. "
                f"Set data.name={cifar.other_variant(key)} to train on them, or provide {cifar.describe(key)}."
            )
    return None


def _load_synthetic(options: dict | None, splits: tuple[str, ...]) -> ArrayDataset:
    """The generated data set; mean/std are measured on its training split (always generated, so that they
    do not depend on which splits a process asked for)."""
    settings = synthetic_data.synthetic_options(options)
    x_train, y_train, x_test, y_test = synthetic_data.generate_synthetic(**settings)
    mean, std = synthetic_data.channel_stats(x_train)
    generated = {"train": (x_train, y_train), "test": (x_test, y_test)}
    loaded = {split: generated[split] for split in splits}
    return _assemble("synthetic", loaded, settings["classes"], mean, std, "generated")


def _assemble(
    key: str,
    loaded: dict[str, tuple[torch.Tensor, torch.Tensor]],
    num_classes: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    source: str,
) -> ArrayDataset:
    """An ArrayDataset from the loaded splits, with empty stand-ins for the others, after sanity checks."""
    shapes = {tuple(x.shape[1:]) for x, _ in loaded.values()}
    if len(shapes) != 1:
        raise DataError(
            f"The {key} splits in {source} have different image shapes {sorted(shapes)}; the files come from "
            "different data sets. Replace them with one consistent set."
        )
    image_shape = shapes.pop()
    for split, (_, y) in loaded.items():
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes):
            raise DataError(
                f"The {key} {split} labels in {source} range over {int(y.min())}..{int(y.max())}, outside "
                f"0..{num_classes - 1}; the files are damaged or belong to another data set. Replace them."
            )
    empty = (torch.empty((0, *image_shape), dtype=torch.uint8), torch.empty(0, dtype=torch.int64))
    x_train, y_train = loaded.get("train", empty)
    x_test, y_test = loaded.get("test", empty)
    return ArrayDataset(
        name=key,
        x_train=x_train.contiguous(),
        y_train=y_train,
        x_test=x_test.contiguous(),
        y_test=y_test,
        num_classes=num_classes,
        mean=tuple(mean),
        std=tuple(std),
        source=source,
    )
