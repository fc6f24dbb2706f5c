"""One batch interface for every data set, so the worker and the evaluator do not care where images live.

A source has ``batches(steps, batch, resolution)``: with ``steps`` it yields that many training batches drawn
from fresh random permutations of the whole training set (method §4); with ``steps=None`` it yields the test
split once, in order. In-memory sets (:class:`ArraySource`) are resized to the stage's resolution on the fly;
image folders use the DALI or torchvision loaders of :mod:`hdbl_mpi.data.folder`, which rebuild their
pipeline when the resolution changes.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch

from hdbl_mpi.data.batches import eval_batches, make_batch
from hdbl_mpi.data.loading import ArrayDataset, load_dataset
from hdbl_mpi.datasets import statistics
from hdbl_mpi.errors import DataError

if TYPE_CHECKING:
    from hdbl_mpi.schema import Config

FOLDER_MEAN, FOLDER_STD = statistics("folder")  # ImageNet's, the usual normalisation for photographs in folders


class BatchSource(Protocol):
    """Where a trainer takes its batches from, whatever holds the images (arrays in memory, DALI, torchvision).

    ``batches(steps, batch, resolution)`` yields ``steps`` training batches of (images, labels) on the source's
    device, drawn from fresh random permutations of the whole training set; ``steps=None`` yields the test split
    once, in order (the last batch may be smaller)."""

    def batches(self, steps: int | None, batch: int,
                resolution: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...


def sample_indices(dataset_size: int, count: int, generator: torch.Generator) -> torch.Tensor:
    """`count` indices from fresh random permutations of the whole set (no fixed partition), chaining
    permutations when a commit needs more than one pass."""
    chunks, left = [], count
    while left > 0:
        perm = torch.randperm(dataset_size, generator=generator)
        chunks.append(perm[:left])
        left -= len(chunks[-1])
    return torch.cat(chunks)


@dataclass
class DataInfo:
    """What set-up and the summary need to know about a data set, whichever kind it is."""

    name: str
    train_size: int
    test_size: int
    num_classes: int
    channels: int
    native_resolution: int | None  # None for image folders: photos have no single size
    source: str
    decoder: str = "in-memory"
    skipped: list[str] = field(default_factory=list)


class ArraySource:
    def __init__(self, data: ArrayDataset, train: bool, augment: bool, generator: torch.Generator | None,
                 device: torch.device) -> None:
        self.data, self.train, self.augment, self.generator, self.device = data, train, augment, generator, device

    def state_dict(self) -> dict[str, Any]:
        """The stream position: the generator every permutation and augmentation draw comes from."""
        return {"generator": self.generator.get_state()} if self.generator is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.generator is not None and "generator" in state:
            self.generator.set_state(state["generator"])

    def batches(self, steps: int | None, batch: int, resolution: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        d = self.data
        if steps is None:
            yield from eval_batches(d.x_test, d.y_test, batch, resolution, d.mean, d.std, device=self.device)
            return
        if self.generator is None:
            raise ValueError("a training source needs a generator (the test split has none)")
        index = sample_indices(d.train_size, steps * batch, self.generator)
        for step in range(steps):
            idx = index[step * batch : (step + 1) * batch]
            inputs = make_batch(d.x_train, idx, resolution, d.mean, d.std, augment=self.augment,
                                generator=self.generator, device=self.device)
            yield inputs, d.y_train[idx].to(self.device, non_blocking=True)


def download_once(config: Config, first_on_host: bool, host_comm: Any) -> None:
    """With data.download set, one rank per host downloads the data set while the host's other ranks wait at
    `host_comm` (the host's shared-memory communicator), so they never race on the files. Image folders are
    never downloaded."""
    c = config.data
    if not c.download or c.name.lower() == "folder":
        return
    try:
        if first_on_host:
            load_dataset(c.name, c.dir, True, synthetic=c.synthetic)
    finally:
        host_comm.Barrier()


def open_source(config: Config, *, train: bool, device: torch.device, seed: int) -> tuple[DataInfo, BatchSource]:
    """The data set of `config.data` for one process: the training split on a worker (train=True), the test
    split on the server. `data.name: folder` reads `data.dir/train` and `data.dir/val` image folders."""
    c = config.data
    if c.name.lower() == "folder":
        from hdbl_mpi.data.folder import make_folder_loader
        from hdbl_mpi.data.images import index_folder

        if not c.dir:
            raise DataError("data.name is folder but data.dir is not set; point it at a directory holding "
                            "train/<class>/*.jpg and val/<class>/*.jpg.")
        index = index_folder(c.dir, "train" if train else "val")
        loader, decoder = make_folder_loader(index, train=train, mean=FOLDER_MEAN, std=FOLDER_STD,
                                             prefer_dali=c.decoder != "torchvision", device=device,
                                             num_threads=c.threads, seed=seed)
        if c.decoder == "dali" and not decoder.startswith("dali"):
            raise DataError("data.decoder is dali but NVIDIA DALI does not import here; install it with "
                            "`pip install .[dali]` or set data.decoder=auto.")
        size = len(index)
        info = DataInfo("folder", size if train else 0, 0 if train else size, len(index.classes), 3, None,
                        str(Path(c.dir).resolve()), decoder, [f"{p}: {why}" for p, why in index.skipped])
        return info, loader
    data = load_dataset(c.name, c.dir, False, train=train, test=not train, synthetic=c.synthetic)
    info = DataInfo(data.name, data.train_size, len(data.y_test), data.num_classes, data.channels,
                    data.native_resolution, data.source)
    generator = torch.Generator().manual_seed(seed) if train else None
    return info, ArraySource(data, train, c.augment, generator, device)
