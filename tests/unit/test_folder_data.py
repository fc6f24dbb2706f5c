"""Tests of ImageNet-style folders: indexing, the torchvision/PIL loader, the DALI loader, and the choice.

The generated images are uniform colours that encode their identity: red = 20 + 9 * file id, green =
40 + 80 * class. Crops and resizes keep a uniform colour, so every output sample tells which file it came from
and whether its label matches, whatever the augmentation did.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hdbl_mpi.data import dali as dali_backend
from hdbl_mpi.data.folder import TorchvisionFolderLoader, make_folder_loader
from hdbl_mpi.data.images import FolderIndex, index_folder
from hdbl_mpi.errors import DataError

MEAN = (0.4, 0.5, 0.6)
STD = (0.2, 0.25, 0.3)
CLASSES = ["a", "b", "c"]
PER_CLASS = 8
N_TRAIN = len(CLASSES) * PER_CLASS

needs_dali = pytest.mark.skipif(
    not dali_backend.dali_available(), reason="NVIDIA DALI is not installed (pip install nvidia-dali-cuda120)"
)


def colour(file_id: int, label: int) -> tuple[int, int, int]:
    return (20 + 9 * file_id, 40 + 80 * label, 128)


def write_jpeg(path: Path, rgb: tuple[int, int, int], stripes: bool = False) -> None:
    image = np.empty((40, 50, 3), dtype=np.uint8)
    image[:] = rgb
    if stripes:  # edges that a centre crop must remove
        image[:, :3] = image[:, -3:] = (255, 0, 0)
    Image.fromarray(image).save(path, quality=95)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """train: 3 classes x 8 images, an empty class folder, a corrupt and a truncated JPEG; val: 3 x 2 images."""
    base = tmp_path_factory.mktemp("folders")
    for label, name in enumerate(CLASSES):
        (base / "train" / name).mkdir(parents=True)
        (base / "val" / name).mkdir(parents=True)
        for k in range(PER_CLASS):
            file_id = label * PER_CLASS + k
            write_jpeg(base / "train" / name / f"img{k}.JPEG", colour(file_id, label))
        for k in range(2):
            write_jpeg(base / "val" / name / f"v{k}.jpg", colour(label * 2 + k, label), stripes=True)
    (base / "train" / "d_empty").mkdir()
    (base / "train" / "a" / "zz_corrupt.JPEG").write_bytes(np.random.default_rng(0).bytes(3000))
    good = (base / "train" / "b" / "img0.JPEG").read_bytes()
    (base / "train" / "b" / "zz_truncated.jpg").write_bytes(good[: len(good) // 2])
    return base


def pixels(inputs: torch.Tensor) -> torch.Tensor:
    """Per-sample mean RGB in 0-255 units, undoing the normalisation: (B, 3)."""
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return ((inputs * std + mean) * 255).mean(dim=(2, 3))


def file_ids(inputs: torch.Tensor, labels: torch.Tensor) -> list[int]:
    """The file id encoded in each sample's colour, after checking that the colour matches the label."""
    rgb = pixels(inputs)
    assert torch.allclose(rgb[:, 1], 40 + 80 * labels.float(), atol=4), "image does not match its label"
    ids = ((rgb[:, 0] - 20) / 9).round().long()
    assert torch.allclose(rgb[:, 0], 20 + 9 * ids.float(), atol=3)
    return ids.tolist()


def check_batch(inputs: torch.Tensor, labels: torch.Tensor, batch: int, resolution: int) -> None:
    assert inputs.shape == (batch, 3, resolution, resolution) and inputs.dtype == torch.float32
    assert labels.shape == (batch,) and labels.dtype == torch.int64


# ------------------------------------------------------------------------------------------------- index


def test_index_classes_labels_and_skips(root: Path) -> None:
    index = index_folder(root, "train")
    assert index.classes == ["a", "b", "c", "d_empty"]
    assert len(index) == N_TRAIN and index.labels == [label for label in range(3) for _ in range(PER_CLASS)]
    pairs = zip(index.files, index.labels, strict=True)
    assert all(path.parent.name == index.classes[label] for path, label in pairs)
    reasons = {path.name: reason for path, reason in index.skipped}
    assert set(reasons) == {"d_empty", "zz_corrupt.JPEG", "zz_truncated.jpg"}
    assert "empty" in reasons["d_empty"] and "truncated" in reasons["zz_truncated.jpg"].lower()
    assert not any(path.name.startswith("zz_") for path in index.files)


def test_index_val_shares_the_class_mapping(root: Path) -> None:
    val = index_folder(root, "val")
    assert val.classes == index_folder(root, "train").classes
    assert val.labels == [0, 0, 1, 1, 2, 2]
    assert [reason for _, reason in val.skipped] == ["class 'd_empty' has no folder in the val split"]


def test_index_check_none_keeps_damaged_files(root: Path) -> None:
    assert len(index_folder(root, "train", check="none")) == N_TRAIN + 2


def test_index_reports_a_wrong_layout(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"No 'train' split.*root/train/<class>/\*\.JPEG"):
        index_folder(tmp_path, "train")
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "loose.JPEG").write_bytes(b"")
    with pytest.raises(DataError, match="no class subfolders"):
        index_folder(tmp_path, "train")
    (tmp_path / "train" / "cat").mkdir()
    (tmp_path / "train" / "cat" / "broken.jpg").write_bytes(b"not an image")
    with pytest.raises(DataError, match="No usable images.*1 files were found but none could be read"):
        index_folder(tmp_path, "train")


# ------------------------------------------------------------------------------------ torchvision path


def test_torchvision_train_shapes_at_two_resolutions(root: Path) -> None:
    loader = TorchvisionFolderLoader(index_folder(root, "train"), train=True, mean=MEAN, std=STD, num_threads=0)
    for resolution in (16, 24):
        batches = list(loader.batches(2, 5, resolution))
        assert len(batches) == 2
        for inputs, labels in batches:
            check_batch(inputs, labels, 5, resolution)
            file_ids(inputs, labels)  # normalised with MEAN/STD, and each image matches its label


def test_torchvision_consecutive_calls_draw_different_samples(root: Path) -> None:
    loader = TorchvisionFolderLoader(index_folder(root, "train"), train=True, mean=MEAN, std=STD, num_threads=0)
    first = [i for x, y in loader.batches(2, 4, 16) for i in file_ids(x, y)]
    second = [i for x, y in loader.batches(2, 4, 16) for i in file_ids(x, y)]
    assert len(set(first)) == 8 and len(set(second)) == 8  # no repeats within a commit
    assert set(first) != set(second)


@pytest.mark.parametrize("threads", [0, 2])
def test_torchvision_resumes_the_stream_exactly(tmp_path: Path, threads: int) -> None:
    """A loader restored from another's state_dict yields what that one yields next, crops and flips included
    (they are drawn from the checkpointed generator, not from the decoding processes' own RNG)."""
    rng = np.random.default_rng(0)
    for name in CLASSES:  # noise images: every crop and flip shows in the pixels
        (tmp_path / "train" / name).mkdir(parents=True)
        for k in range(4):
            Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(
                tmp_path / "train" / name / f"n{k}.png")
    index = index_folder(tmp_path, "train")
    first = TorchvisionFolderLoader(index, train=True, mean=MEAN, std=STD, num_threads=threads, seed=5)
    list(first.batches(2, 4, 24))
    state = first.state_dict()
    expected = list(first.batches(3, 4, 24))
    torch.manual_seed(1234)  # the process's own RNG plays no part
    resumed = TorchvisionFolderLoader(index, train=True, mean=MEAN, std=STD, num_threads=threads, seed=99)
    resumed.load_state_dict(state)
    got = list(resumed.batches(3, 4, 24))
    for (x, y), (x2, y2) in zip(expected, got, strict=True):
        assert torch.equal(y, y2) and torch.equal(x, x2)
    again = list(first.batches(1, 4, 24))[0][0]
    assert not torch.equal(again, expected[0][0])  # the stream moves on


def test_torchvision_skips_files_that_fail_to_decode(root: Path) -> None:
    """Damaged files that escaped indexing are replaced by others; the batches keep their size (DataLoader
    worker process path)."""
    index = index_folder(root, "train", check="none")
    loader = TorchvisionFolderLoader(index, train=True, mean=MEAN, std=STD, num_threads=1)
    batches = list(loader.batches(2, N_TRAIN + 2, 16))  # every file is drawn at least once
    for inputs, labels in batches:
        check_batch(inputs, labels, N_TRAIN + 2, 16)
        assert set(file_ids(inputs, labels)) <= set(range(N_TRAIN))
    assert loader.skipped == 2
    assert {path.name for path, _ in loader.skipped_files} == {"zz_corrupt.JPEG", "zz_truncated.jpg"}


def test_torchvision_val_centre_crops_the_whole_split_once(root: Path) -> None:
    index = index_folder(root, "val")
    loader = TorchvisionFolderLoader(index, train=False, mean=MEAN, std=STD, num_threads=0)
    batches = list(loader.batches(None, 4, 16))
    assert [len(labels) for _, labels in batches] == [4, 2]
    inputs = torch.cat([x for x, _ in batches])
    labels = torch.cat([y for _, y in batches])
    check_batch(inputs, labels, 6, 16)
    assert labels.tolist() == index.labels
    assert file_ids(inputs, labels) == [0, 1, 2, 3, 4, 5]
    red = (inputs[:, 0] * STD[0] + MEAN[0]) * 255
    assert (red - red.mean(dim=(1, 2), keepdim=True)).abs().max() < 6, "the red edge stripes were not cropped off"
    with pytest.raises(ValueError, match="whole split"):
        next(loader.batches(3, 4, 16))


# ------------------------------------------------------------------------------------------- DALI path


@needs_dali
def test_dali_shapes_rebuild_and_epoch_coverage(root: Path) -> None:
    loader = dali_backend.DaliFolderLoader(
        index_folder(root, "train"), train=True, mean=MEAN, std=STD, num_threads=1, seed=3
    )
    stream = []
    for _ in range(3):  # three commits of one reader epoch each: 4 batches of 6
        commit = []
        for inputs, labels in loader.batches(4, 6, 16):
            check_batch(inputs, labels, 6, 16)
            commit += file_ids(inputs, labels)
        stream.append(commit)
    assert loader.builds == 1, "the same resolution must continue the running pipeline"
    assert all(sorted(commit) == list(range(N_TRAIN)) for commit in stream), "each epoch reads every file once"
    assert stream[0] != stream[1] != stream[2], "consecutive commits must not replay the same order"
    # A new batch size keeps the stream: an epoch split into batches of 5 and 7 still covers every file once.
    mixed = [i for b in (5, 7, 5, 7) for x, y in loader.batches(1, b, 16) for i in file_ids(x, y)]
    assert sorted(mixed) == list(range(N_TRAIN)) and loader.builds == 1
    for inputs, labels in loader.batches(2, 6, 24):
        check_batch(inputs, labels, 6, 24)
        file_ids(inputs, labels)
    assert loader.builds == 2, "a new resolution rebuilds the pipeline"


@needs_dali
def test_dali_consecutive_small_commits_differ(root: Path) -> None:
    loader = dali_backend.DaliFolderLoader(index_folder(root, "train"), train=True, mean=MEAN, std=STD, num_threads=1)
    first = {i for x, y in loader.batches(2, 4, 16) for i in file_ids(x, y)}
    second = {i for x, y in loader.batches(2, 4, 16) for i in file_ids(x, y)}
    assert len(first) == len(second) == 8 and first.isdisjoint(second)  # same epoch: no file twice


@needs_dali
def test_dali_val_matches_the_torchvision_path(root: Path) -> None:
    index = index_folder(root, "val")
    dali = dali_backend.DaliFolderLoader(index, train=False, mean=MEAN, std=STD, num_threads=1)
    torchvision = TorchvisionFolderLoader(index, train=False, mean=MEAN, std=STD, num_threads=0)
    for resolution in (16, 24):
        ours = list(dali.batches(None, 4, resolution))
        assert [len(y) for _, y in ours] == [4, 2]
        for (x, y), (x_ref, y_ref) in zip(ours, torchvision.batches(None, 4, resolution), strict=True):
            assert x.shape == x_ref.shape and x.dtype == x_ref.dtype and torch.equal(y, y_ref)
            assert (x - x_ref).abs().mean() < 0.1
    again = [y for _, y in dali.batches(None, 4, 24)]
    assert torch.cat(again).tolist() == index.labels, "a second pass covers the split again, from the start"


@needs_dali
def test_dali_names_a_file_it_cannot_decode(root: Path) -> None:
    corrupt = root / "train" / "a" / "zz_corrupt.JPEG"
    index = FolderIndex(root, "train", [corrupt], [0], CLASSES)
    loader = dali_backend.DaliFolderLoader(index, train=True, mean=MEAN, std=STD, num_threads=1)
    with pytest.raises(DataError, match="zz_corrupt.JPEG"):
        next(loader.batches(1, 2, 16))


# ---------------------------------------------------------------------------------------------- choice


def test_make_folder_loader_falls_back_without_dali(
    root: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(dali_backend, "dali_available", lambda: False)
    with caplog.at_level(logging.WARNING):
        loader, kind = make_folder_loader(index_folder(root, "val"), train=False, mean=MEAN, std=STD, num_threads=0)
    assert kind == "torchvision" and isinstance(loader, TorchvisionFolderLoader)
    assert [r.getMessage() for r in caplog.records] == [
        "NVIDIA DALI not installed (pip install .[dali]); decoding with torchvision/PIL"
    ]


@needs_dali
def test_make_folder_loader_prefers_dali(root: Path) -> None:
    loader, kind = make_folder_loader(index_folder(root, "val"), train=False, mean=MEAN, std=STD, num_threads=1)
    assert kind == "dali-cpu" and isinstance(loader, dali_backend.DaliFolderLoader)
    _, kind = make_folder_loader(index_folder(root, "val"), train=False, mean=MEAN, std=STD, prefer_dali=False)
    assert kind == "torchvision"
