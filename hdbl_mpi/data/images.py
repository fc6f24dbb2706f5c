"""ImageNet-style image folders: the index of usable files and labels that every decoder reads (method §6).

A data set lives in ``root/train/<class>/*.JPEG`` and ``root/val/<class>/...``. Both decoding paths (NVIDIA DALI
in :mod:`hdbl_mpi.data.dali`, torchvision/PIL in :mod:`hdbl_mpi.data.folder`) decode exactly the files of one
:class:`FolderIndex`, so they agree on files and labels. Damaged images are found while indexing (a cheap
header check by default) and left out with a reason, never fatal: one unreadable file among a million must not
stop a multi-day run, but the user has to hear about it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from PIL import Image

from hdbl_mpi.errors import DataError

IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")
"""Image files taken from a class folder (case-insensitive); anything else there is ignored."""

VAL_RESIZE_RATIO = 0.875
"""Validation resizes the shorter side to resolution / 0.875 and centre-crops (the standard ImageNet protocol)."""

_LAYOUT = "root/train/<class>/*.JPEG and root/val/<class>/*.JPEG (one subfolder per class; .jpg/.png also taken)"

_CHECK_THREADS = 8
"""Threads for checking files while indexing: the work is file I/O, which threads overlap even under the GIL."""

Check = Literal["header", "full", "none"]


@dataclass
class FolderIndex:
    """The usable files of one split with their labels, and what was left out and why.

    ``classes`` is the sorted union of the class folder names of the train and val splits, so a label means the
    same class in both splits even when one split lacks a class. ``skipped`` holds (path, reason) for every
    damaged image and every empty class folder; they are warnings, the caller should report them.
    """

    root: Path
    split: str
    files: list[Path]
    labels: list[int]
    classes: list[str]
    skipped: list[tuple[Path, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.files)


def index_folder(root: str | Path, split: str, *, check: Check = "header") -> FolderIndex:
    """Index ``root/<split>/<class>/<image>`` and check the images.

    ``check`` says how hard to look for damaged files before they can break a decoder mid-run:

    - ``"header"`` (default): PIL parses each file's header (``Image.verify``; for PNG this also checks the
      chunk CRCs) and a JPEG must end with its end-of-image marker, which catches the common damage, a
      truncated copy or download. Costs one open and two small reads per file.
    - ``"full"``: decode every image with PIL. Finds everything PIL cannot decode, at the price of a full
      decoding pass over the split (use it on a data set you have not seen before, or after a DALI failure).
    - ``"none"``: trust the files (fastest start on a known-good copy).

    Raises :class:`DataError` when the split folder is missing or holds no class folders or no usable image.
    """
    if check not in ("header", "full", "none"):
        raise ValueError(f"check must be 'header', 'full' or 'none', got {check!r}")
    root = Path(root).expanduser()
    split_dir = root / split
    if not split_dir.is_dir():
        raise DataError(
            f"No {split!r} split: {split_dir} is not a directory. Expected the layout {_LAYOUT}; point the data "
            "directory at the folder that holds train/ and val/."
        )
    classes = sorted({d.name for s in ("train", "val", split) for d in _class_dirs(root / s)})
    if not any(True for _ in _class_dirs(split_dir)):
        raise DataError(
            f"{split_dir} has no class subfolders. Expected the layout {_LAYOUT}; move the images of each class "
            "into their own subfolder."
        )
    candidates: list[tuple[Path, int]] = []
    skipped: list[tuple[Path, str]] = []
    for label, name in enumerate(classes):
        class_dir = split_dir / name
        if not class_dir.is_dir():
            skipped.append((class_dir, f"class {name!r} has no folder in the {split} split"))
            continue
        images = sorted(p for p in class_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not images:
            skipped.append((class_dir, f"class folder is empty (no {'/'.join(IMAGE_SUFFIXES)} files)"))
        candidates.extend((path, label) for path in images)
    problems = dict(_find_damaged([path for path, _ in candidates], check))
    skipped.extend((path, problems[path]) for path, _ in candidates if path in problems)
    usable = [(path, label) for path, label in candidates if path not in problems]
    if not usable:
        damaged = f"; {len(problems)} files were found but none could be read" if problems else ""
        raise DataError(
            f"No usable images in the class folders of {split_dir}{damaged}. Expected the layout {_LAYOUT}."
        )
    return FolderIndex(
        root=root,
        split=split,
        files=[path for path, _ in usable],
        labels=[label for _, label in usable],
        classes=classes,
        skipped=skipped,
    )


def _class_dirs(split_dir: Path) -> Iterator[Path]:
    """The class folders of a split (hidden folders such as .ipynb_checkpoints are not classes)."""
    if split_dir.is_dir():
        yield from (d for d in split_dir.iterdir() if d.is_dir() and not d.name.startswith("."))


def _find_damaged(paths: list[Path], check: Check) -> list[tuple[Path, str]]:
    """(path, reason) for each file that fails ``check``, in the order of ``paths``."""
    if check == "none":
        return []
    problem = _header_problem if check == "header" else _decode_problem
    with ThreadPoolExecutor(max_workers=_CHECK_THREADS) as pool:
        reasons = list(pool.map(problem, paths))
    return [(path, reason) for path, reason in zip(paths, reasons, strict=True) if reason is not None]


def _header_problem(path: Path) -> str | None:
    """Why the file's header is unusable, or None. Catches every exception: PIL raises many kinds
    (OSError, SyntaxError, ValueError, struct.error...) for damaged files, and any of them means "skip it"."""
    try:
        with Image.open(path) as image:
            image_format = image.format
            image.verify()
        if image_format == "JPEG":
            with path.open("rb") as handle:
                handle.seek(max(0, path.stat().st_size - 1024))
                if b"\xff\xd9" not in handle.read():
                    return "JPEG end-of-image marker missing (the file is truncated)"
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def _decode_problem(path: Path) -> str | None:
    """Why PIL cannot decode the whole image, or None (see :func:`_header_problem` on catching everything)."""
    try:
        with Image.open(path) as image:
            image.load()
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def find_undecodable(
    paths: Sequence[Path], *, time_budget_s: float | None = None
) -> tuple[list[tuple[Path, str]], int]:
    """Decode ``paths`` with PIL, in order, and return ((path, reason) of the failures, number checked).

    Used to name the culprit after a decoder failed somewhere in a split. With ``time_budget_s`` it stops
    after about that long, because a full pass over a large split takes many minutes.
    """
    deadline = None if time_budget_s is None else time.monotonic() + time_budget_s
    found: list[tuple[Path, str]] = []
    checked = 0
    chunk = 4 * _CHECK_THREADS
    with ThreadPoolExecutor(max_workers=_CHECK_THREADS) as pool:
        for start in range(0, len(paths), chunk):
            part = list(paths[start : start + chunk])
            found.extend((p, r) for p, r in zip(part, pool.map(_decode_problem, part), strict=True) if r is not None)
            checked += len(part)
            if deadline is not None and time.monotonic() > deadline:
                break
    return found, checked



def check_request(train: bool, steps: int | None, batch: int, resolution: int) -> None:
    """The argument checks shared by both loaders, so they fail alike."""
    if train and (steps is None or steps < 1):
        raise ValueError(f"a training loader needs steps >= 1, got {steps}")
    if not train and steps is not None:
        raise ValueError("a validation loader covers the whole split; call batches(None, batch, resolution)")
    if batch < 1 or resolution < 1:
        raise ValueError(f"batch and resolution must be >= 1, got {batch} and {resolution}")
