"""Reader for the IDX files of MNIST and Fashion-MNIST.

The format is parsed here with numpy instead of through torchvision so that loading never needs network
access or torchvision's own directory conventions, and so that a corrupt file is reported with its name
(torchvision would fail with a bare ``struct``/``reshape`` error deep inside its constructor).
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch

from hdbl_mpi.errors import DataError

IMAGE_MAGIC = 0x00000803
"""IDX magic of an unsigned-byte, 3-dimensional array (N, H, W): an image file."""
LABEL_MAGIC = 0x00000801
"""IDX magic of an unsigned-byte, 1-dimensional array (N,): a label file."""

SPLIT_FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
"""The (images, labels) file stems of each split; each file may also carry a ``.gz`` suffix."""

TORCHVISION_CLASSES = {"fashion-mnist": "FashionMNIST", "mnist": "MNIST"}
"""torchvision's class for each data set; it is also the folder torchvision downloads into."""


def wanted_files(splits: tuple[str, ...]) -> list[str]:
    """The file stems needed for ``splits``, in the order they are reported to the user."""
    return [stem for split in splits for stem in SPLIT_FILES[split]]


def locate_idx(directory: Path, splits: tuple[str, ...]) -> dict[str, tuple[Path, Path]] | None:
    """The (images, labels) paths of every split in ``directory``, or None unless all of them are there.

    An uncompressed file is preferred over its ``.gz`` twin because it reads without inflating.
    """
    found: dict[str, tuple[Path, Path]] = {}
    for split in splits:
        paths = [_existing(directory, stem) for stem in SPLIT_FILES[split]]
        if paths[0] is None or paths[1] is None:
            return None
        found[split] = (paths[0], paths[1])
    return found


def _existing(directory: Path, stem: str) -> Path | None:
    for candidate in (directory / stem, directory / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def read_idx(path: Path, magic: int) -> np.ndarray:
    """The uint8 array stored in IDX file ``path``, checked against the expected ``magic``.

    The whole file must be exactly header + payload: a short file means an interrupted download or copy,
    which would otherwise surface much later as silently missing samples.
    """
    kind = "image" if magic == IMAGE_MAGIC else "label"
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as handle:
                data = handle.read()
        else:
            data = path.read_bytes()
    except (OSError, EOFError) as exc:
        raise DataError(
            f"Cannot read IDX {kind} file {path}: {exc}. The file is damaged (an interrupted download or "
            "copy?); replace it with an intact copy."
        ) from exc
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    found_magic = int.from_bytes(data[:4], "big") if len(data) >= 4 else None
    if found_magic is not None and found_magic != magic:
        raise DataError(
            f"{path} is not an IDX {kind} file: its magic number is 0x{found_magic:08x}, expected "
            f"0x{magic:08x}. The file is corrupt or is not the file its name says; replace it with the "
            "original file of the data set."
        )
    if len(data) < header:
        raise _truncated(path, kind, f"{len(data)} bytes, shorter than the {header}-byte header")
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(dims))
    payload = len(data) - header
    if payload != expected:
        shape = "x".join(map(str, dims))
        raise _truncated(path, kind, f"its header declares {shape} bytes of data but it holds {payload}")
    return np.frombuffer(data, dtype=np.uint8, count=expected, offset=header).reshape(dims)


def _truncated(path: Path, kind: str, detail: str) -> DataError:
    return DataError(
        f"IDX {kind} file {path} is truncated or damaged: {detail}. Replace it with an intact copy "
        "(an interrupted download or copy leaves such files)."
    )


def read_idx_split(images_path: Path, labels_path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Images as uint8 (N, 1, H, W) and labels as int64 (N,) from one split's pair of IDX files."""
    images = read_idx(images_path, IMAGE_MAGIC)
    labels = read_idx(labels_path, LABEL_MAGIC)
    if images.shape[0] != labels.shape[0]:
        raise DataError(
            f"{images_path} holds {images.shape[0]} images but {labels_path} holds {labels.shape[0]} labels; "
            "the two files come from different data sets or one is damaged. Replace both with the original "
            "files."
        )
    # np.frombuffer views the read-only bytes object; copy once into memory torch may own.
    x = torch.from_numpy(np.ascontiguousarray(images[:, None, :, :]).copy())
    y = torch.from_numpy(labels.astype(np.int64))
    return x, y


def download_idx(name: str, root: Path) -> None:
    """Fetch ``name`` with torchvision into ``root``; its raw IDX files land in ``root/<Class>/raw``.

    Failures propagate unchanged: the caller turns them into one DataError that also says where the files
    can be put by hand. torchvision is imported here because it is slow to import and only a download needs
    it.
    """
    from torchvision import datasets

    dataset_class = getattr(datasets, TORCHVISION_CLASSES[name])
    # One construction downloads all four files; train=False only avoids decoding the larger split.
    dataset_class(root=str(root), train=False, download=True)
