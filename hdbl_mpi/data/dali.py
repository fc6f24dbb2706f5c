"""Decoding ImageNet-style folders with NVIDIA DALI (method §6): the fast path for :class:`FolderIndex` data.

DALI decodes in its own C++ threads (on the CPU, or partly on the GPU with the 'mixed' decoder) and prefetches
whole batches, so decoding overlaps training without the worker processes of a torch DataLoader (which also
means no fork() inside an MPI process). DALI is optional: it is imported only inside functions, and
:func:`dali_available` tells whether it can be used; :func:`hdbl_mpi.data.folder.make_folder_loader` falls back
to the torchvision/PIL path without it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch

from hdbl_mpi.data.images import VAL_RESIZE_RATIO, FolderIndex, check_request, find_undecodable
from hdbl_mpi.errors import DataError

__all__ = ["DaliFolderLoader", "dali_available"]

_READER = "reader"
"""Name of the file reader operator, through which the iterator learns the epoch size."""

_CULPRIT_SEARCH_S = 60.0
"""How long to look for the undecodable file with PIL after DALI failed, before reporting without a name."""


def dali_available() -> bool:
    """Whether NVIDIA DALI and its PyTorch plugin import (an install without matching CUDA libraries can fail
    with OSError rather than ImportError; both mean "not usable here")."""
    try:
        import nvidia.dali  # noqa: F401
        import nvidia.dali.plugin.pytorch  # noqa: F401
    except (ImportError, OSError):
        return False
    return True


class DaliFolderLoader:
    """Batches of a :class:`FolderIndex` decoded by a DALI pipeline; same contract as
    :class:`~hdbl_mpi.data.folder.TorchvisionFolderLoader`, plus ``device_id``.

    ``device_id=None`` decodes with DALI's CPU operators; an int decodes JPEGs on that GPU ('mixed') and returns
    the images there. The pipeline reads exactly the files and labels of ``index`` (damaged files found by
    :func:`~hdbl_mpi.data.folder.index_folder` are already left out, because one undecodable file makes DALI
    fail the whole pipeline).

    Training: the reader shuffles (``random_shuffle``) and the pipeline keeps running across :meth:`batches`
    calls, so consecutive commits get the next samples of the stream, never a restart at the same place; each
    reader epoch reads every file exactly once. Random resized crop during decoding (the same area/aspect
    ranges as torchvision's RandomResizedCrop), resize to exactly r x r, random mirror, normalisation.
    Requests for a batch size other than the pipeline's are served by splitting and joining pipeline batches,
    so a re-planned batch size keeps the stream (and its epoch coverage) intact.

    A new resolution REBUILDS the pipeline; nothing a running pipeline reads is changed in place. DALI
    prefetches batches ahead of the consumer, so a resolution read from mutable state would take effect some
    batches late, and those batches would arrive at the old size. A rebuilt pipeline starts a fresh reader epoch
    with a new seed (the rest of the old epoch is dropped, and the new one does not replay the old order).

    Validation: decode, resize the shorter side to r / 0.875, centre crop r x r, normalise; in file order, the
    whole split once per :meth:`batches` call (the last batch may be smaller). The pipeline is rebuilt when the
    resolution or the batch size changes.

    If DALI fails on a file anyway (it accepts fewer damaged files than PIL), :meth:`batches` raises
    :class:`DataError` naming the file when PIL fails on it too (found by decoding the split with PIL for up to
    a minute), otherwise passing on DALI's message.
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
        device_id: int | None = None,
    ):
        if num_threads < 1:
            raise ValueError(f"DALI needs num_threads >= 1, got {num_threads}")
        self.index, self.train, self.device, self.device_id = index, train, torch.device(device), device_id
        self.num_threads, self.seed = num_threads, seed
        self.mean = [255.0 * m for m in mean]  # DALI normalises raw 0-255 pixels
        self.std = [255.0 * s for s in std]
        self.builds = 0
        """How many pipelines were built so far (a rebuild happens on a resolution change)."""
        self._key: tuple[int, int] | None = None
        self._iterator: Any = None
        self._pending: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._pass_complete = True

    def batches(
        self, steps: int | None, batch: int, resolution: int
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(inputs float32 (B, 3, r, r), labels int64 (B,)) on the loader's device.

        Training: exactly ``steps`` batches of ``batch``. Validation (``steps=None``): the whole split once.
        """
        check_request(self.train, steps, batch, resolution)
        if steps is not None:  # training (check_request made sure)
            return self._train_batches(steps, batch, resolution)
        return self._val_batches(batch, resolution)

    def state_dict(self) -> dict[str, Any]:
        """How many pipelines were built (a resumed loader builds with the next seed, never replaying an order it
        already read). DALI's reader position inside its epoch cannot be restored: a resumed run starts a fresh,
        differently shuffled reader epoch (docs/reliability.md)."""
        return {"builds": self.builds}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.builds = int(state.get("builds", self.builds))

    def _train_batches(self, steps: int, batch: int, resolution: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self._key is None or self._key[0] != resolution:
            self._build(resolution, batch)
        for _ in range(steps):
            yield self._take(batch)

    def _take(self, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The next ``batch`` samples of the stream, from pending pipeline output first."""
        have = sum(len(labels) for _, labels in self._pending)
        while have < batch:
            self._pending.append(self._next())
            have += len(self._pending[-1][1])
        if len(self._pending) == 1 and have == batch:  # the usual case: pipeline batch == requested batch
            inputs, labels = self._pending.pop()
        else:
            inputs = torch.cat([x for x, _ in self._pending])
            labels = torch.cat([y for _, y in self._pending])
            self._pending = [(inputs[batch:], labels[batch:])] if have > batch else []
            inputs, labels = inputs[:batch], labels[:batch]
        return inputs.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)

    def _val_batches(self, batch: int, resolution: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self._key != (resolution, batch) or not self._pass_complete:  # an abandoned pass would resume mid-split
            self._build(resolution, batch)
        self._pass_complete = False
        while True:
            try:
                inputs, labels = self._next()
            except StopIteration:  # the iterator resets itself (auto_reset) for the next pass
                break
            yield inputs.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)
        self._pass_complete = True

    def _next(self) -> tuple[torch.Tensor, torch.Tensor]:
        """One pipeline batch as (float32 NCHW, int64 labels); a DALI failure becomes a DataError."""
        try:
            out = next(self._iterator)[0]
        except RuntimeError as exc:
            self._key, self._iterator = None, None  # DALI declares the pipeline unusable after a failure
            raise self._decode_failure(exc) from exc
        return out["data"], out["label"].view(-1).to(torch.int64)

    def _decode_failure(self, exc: RuntimeError) -> DataError:
        split_dir = self.index.root / self.index.split
        found, checked = find_undecodable(self.index.files, time_budget_s=_CULPRIT_SEARCH_S)
        if found:
            names = "; ".join(f"{path} ({reason})" for path, reason in found[:10])
            more = f" and {len(found) - 10} more" if len(found) > 10 else ""
            return DataError(
                f"DALI failed while decoding the images of {split_dir}. These files cannot be decoded: {names}{more}. "
                "Move them out of the data folder, or decode with torchvision/PIL (prefer_dali=False), which "
                "skips and counts such files."
            )
        dali_message = " ".join(str(exc).split())[:600]
        return DataError(
            f"DALI failed while decoding the images of {split_dir} and did not say on which file "
            f"({dali_message}). PIL decoded "
            f"all {checked} of the split's {len(self.index.files)} files it checked in {_CULPRIT_SEARCH_S:.0f} s, "
            "so the file is one DALI alone rejects or one not yet checked. Decode with torchvision/PIL "
            "(prefer_dali=False), which skips and counts such files, or find it with index_folder(check='full')."
        )

    def _build(self, resolution: int, batch: int) -> None:
        """A new pipeline and iterator for this resolution and pipeline batch size (the old ones are dropped)."""
        from nvidia.dali import fn, pipeline_def, types
        from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

        self._iterator, self._pending = None, []
        decoder = "cpu" if self.device_id is None else "mixed"
        files = [str(path) for path in self.index.files]
        train = self.train

        @pipeline_def(
            batch_size=batch,
            num_threads=self.num_threads,
            device_id=self.device_id,  # type: ignore[arg-type]  # None: DALI's CPU-only mode, which its stubs omit
            seed=(self.seed * 1_000_003 + self.builds) % (2**31 - 1),  # a rebuilt pipeline must not replay
        )
        def pipeline():
            jpegs, labels = fn.readers.file(
                files=files,
                labels=list(self.index.labels),
                random_shuffle=train,
                pad_last_batch=not train,  # validation passes then start exactly at the first file
                name=_READER,
            )
            if train:
                images = fn.decoders.image_random_crop(jpegs, device=decoder, output_type=types.RGB)
                images = fn.resize(images, resize_x=resolution, resize_y=resolution)
                mirror = fn.random.coin_flip(probability=0.5)
            else:
                images = fn.decoders.image(jpegs, device=decoder, output_type=types.RGB)
                images = fn.resize(images, resize_shorter=int(resolution / VAL_RESIZE_RATIO))
                mirror = 0
            images = fn.crop_mirror_normalize(
                images,
                dtype=types.FLOAT,
                output_layout="CHW",
                crop=(resolution, resolution),
                mean=self.mean,
                std=self.std,
                mirror=mirror,
            )
            return images, labels

        if train:  # an endless stream: no epoch bookkeeping, the reader wraps around by itself
            options: dict[str, Any] = {}
        else:
            options = {"reader_name": _READER, "last_batch_policy": LastBatchPolicy.PARTIAL, "auto_reset": True}
        try:  # the iterator runs the pipeline for its first batch already
            self._iterator = DALIGenericIterator([pipeline()], ["data", "label"], **options)
        except RuntimeError as exc:
            raise self._decode_failure(exc) from exc
        self._key = (resolution, batch)
        self.builds += 1
