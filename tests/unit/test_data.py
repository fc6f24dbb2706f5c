"""Tests of hdbl_mpi.data: file formats, search and error messages, synthetic data, batch construction."""

from __future__ import annotations

import gzip
import pickle
import tarfile
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import hdbl_mpi.data as data
from hdbl_mpi.data import ArrayDataset, cifar, eval_batches, load_dataset, make_batch
from hdbl_mpi.data.idx import IMAGE_MAGIC, LABEL_MAGIC
from hdbl_mpi.errors import DataError

DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")


# ----------------------------------------------------------------------------------------------- helpers


def idx_bytes(magic: int, array: np.ndarray) -> bytes:
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_file(path: Path, payload: bytes, gz: bool) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(payload))
    else:
        path.write_bytes(payload)
    return path


def make_idx_set(directory: Path, n_train: int = 12, n_test: int = 6, seed: int = 0, splits=("train", "test")):
    """Writes an MNIST-style set (train files gzipped, test files raw) and returns the arrays written."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n, prefix, gz in (("train", n_train, "train", True), ("test", n_test, "t10k", False)):
        if split not in splits:
            continue
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n, dtype=np.uint8)
        write_file(directory / f"{prefix}-images-idx3-ubyte", idx_bytes(IMAGE_MAGIC, images), gz)
        write_file(directory / f"{prefix}-labels-idx1-ubyte", idx_bytes(LABEL_MAGIC, labels), gz)
        arrays[split] = (images, labels)
    return arrays


def cifar_rows(n: int, offset: int) -> np.ndarray:
    """(n, 3072) rows whose red/green/blue planes are the constants offset+1, +2, +3 (checks the layout)."""
    rows = np.empty((n, 3, 1024), dtype=np.uint8)
    for channel in range(3):
        rows[:, channel, :] = offset + channel + 1
    return rows.reshape(n, 3072)


def dump(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(obj))


def make_cifar10(parent: Path, per_batch: int = 4, n_test: int = 3) -> Path:
    folder = parent / "cifar-10-batches-py"
    for i in range(1, 6):
        labels = [(i + j) % 10 for j in range(per_batch)]
        dump(folder / f"data_batch_{i}", {b"data": cifar_rows(per_batch, 10 * i), b"labels": labels})
    dump(folder / "test_batch", {b"data": cifar_rows(n_test, 100), b"labels": list(range(n_test))})
    return folder


def make_cifar100(parent: Path, n_train: int = 5, n_test: int = 2) -> Path:
    folder = parent / "cifar-100-python"
    for name, n in (("train", n_train), ("test", n_test)):
        fine = [99 - j for j in range(n)]
        dump(folder / name, {b"data": cifar_rows(n, 50), b"fine_labels": fine, b"coarse_labels": [0] * n})
    return folder


def tar_folder(folder: Path, archive: Path) -> None:
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname=folder.name)


@pytest.fixture
def no_system_dirs(monkeypatch):
    """Hides /usr/share/datasets so that "not found" paths are exercised whatever is installed."""
    monkeypatch.setattr(data.loading, "SYSTEM_DIRS", {"fashion-mnist": (Path("/nonexistent/datasets/fashion-mnist"),)})


# ---------------------------------------------------------------------------------------------- names


def test_unknown_name_lists_valid_names():
    with pytest.raises(DataError) as info:
        load_dataset("imagenet")
    message = str(info.value)
    assert "'imagenet'" in message
    for name in ("fashion-mnist", "mnist", "cifar10", "cifar100", "synthetic"):
        assert name in message


@pytest.mark.parametrize("spelling", ["Fashion-MNIST", "fashion_mnist", "FASHIONMNIST", "fashionmnist"])
def test_name_aliases(spelling):
    assert data.canonical_name(spelling) == "fashion-mnist"


# ------------------------------------------------------------------------------------------------ IDX


def test_idx_gz_and_raw_files_load(tmp_path):
    arrays = make_idx_set(tmp_path)
    ds = load_dataset("mnist", tmp_path)
    assert isinstance(ds, ArrayDataset)
    assert ds.name == "mnist" and ds.num_classes == 10 and ds.source == str(tmp_path)
    assert ds.x_train.shape == (12, 1, 28, 28) and ds.x_train.dtype == torch.uint8
    assert ds.x_test.shape == (6, 1, 28, 28) and ds.y_test.dtype == torch.int64
    assert ds.x_train.is_contiguous()
    assert torch.equal(ds.x_train[:, 0], torch.from_numpy(arrays["train"][0]))
    assert torch.equal(ds.y_train, torch.from_numpy(arrays["train"][1].astype(np.int64)))
    assert torch.equal(ds.x_test[:, 0], torch.from_numpy(arrays["test"][0]))
    assert (ds.channels, ds.native_resolution, ds.train_size) == (1, 28, 12)
    assert ds.mean == (0.1307,) and ds.std == (0.3081,)


@pytest.mark.parametrize("layout", ["fashion-mnist", "FashionMNIST/raw"])
def test_idx_found_in_subfolders(tmp_path, layout):
    make_idx_set(tmp_path / layout)
    ds = load_dataset("fashion_mnist", tmp_path)
    assert ds.source == str(tmp_path / layout)
    assert ds.train_size == 12 and ds.mean == (0.2860,) and ds.std == (0.3530,)


def test_idx_test_split_only_needs_test_files(tmp_path):
    make_idx_set(tmp_path, splits=("test",))
    ds = load_dataset("mnist", tmp_path, train=False)
    assert ds.x_train.shape == (0, 1, 28, 28) and ds.x_train.dtype == torch.uint8
    assert ds.y_train.shape == (0,) and ds.y_train.dtype == torch.int64
    assert ds.x_test.shape == (6, 1, 28, 28)
    assert (ds.channels, ds.native_resolution, ds.train_size) == (1, 28, 0)


def test_idx_wrong_magic_names_file(tmp_path):
    make_idx_set(tmp_path)
    bad = tmp_path / "t10k-images-idx3-ubyte"
    bad.write_bytes(idx_bytes(LABEL_MAGIC, np.zeros(6, dtype=np.uint8)))
    with pytest.raises(DataError) as info:
        load_dataset("mnist", tmp_path)
    message = str(info.value)
    assert str(bad) in message
    assert "0x00000801" in message and "0x00000803" in message


@pytest.mark.parametrize("gz", [False, True])
def test_idx_truncated_file_names_file(tmp_path, gz):
    make_idx_set(tmp_path)
    full = idx_bytes(IMAGE_MAGIC, np.zeros((6, 28, 28), dtype=np.uint8))
    (tmp_path / "t10k-images-idx3-ubyte").unlink()
    if gz:  # a cut-off gzip stream: fails while inflating
        path = tmp_path / "t10k-images-idx3-ubyte.gz"
        path.write_bytes(gzip.compress(full)[:-20])
    else:  # a cut-off payload behind an intact header
        path = write_file(tmp_path / "t10k-images-idx3-ubyte", full[:-100], gz=False)
    with pytest.raises(DataError) as info:
        load_dataset("mnist", tmp_path)
    message = str(info.value)
    assert str(path) in message
    if gz:
        assert f"Cannot read IDX image file {path}" in message and "damaged" in message
    else:
        assert "is truncated or damaged: its header declares 6x28x28 bytes of data but it holds 4604" in message


def test_idx_count_mismatch_names_both_files(tmp_path):
    make_idx_set(tmp_path)
    labels = tmp_path / "t10k-labels-idx1-ubyte"
    labels.write_bytes(idx_bytes(LABEL_MAGIC, np.zeros(5, dtype=np.uint8)))
    with pytest.raises(DataError) as info:
        load_dataset("mnist", tmp_path)
    message = str(info.value)
    assert str(tmp_path / "t10k-images-idx3-ubyte") in message and str(labels) in message
    assert "6 images" in message and "5 labels" in message


def test_idx_label_out_of_range(tmp_path):
    make_idx_set(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(LABEL_MAGIC, np.full(6, 12, dtype=np.uint8)))
    with pytest.raises(DataError, match=r"range over 12\.\.12, outside 0\.\.9"):
        load_dataset("mnist", tmp_path)


def test_missing_fashion_mnist_names_dirs_and_fixes(tmp_path, no_system_dirs):
    with pytest.raises(DataError) as info:
        load_dataset("fashion-mnist", tmp_path / "nowhere")
    message = str(info.value)
    for directory in ("nowhere", "nowhere/fashion-mnist", "nowhere/FashionMNIST/raw"):
        assert str(tmp_path / directory) in message
    assert "/nonexistent/datasets/fashion-mnist" in message
    assert "train-images-idx3-ubyte[.gz]" in message and "t10k-labels-idx1-ubyte[.gz]" in message
    assert "apt-get install dataset-fashion-mnist" in message
    assert "--set data.download=true" in message


def test_incomplete_dir_is_not_used(tmp_path):
    make_idx_set(tmp_path)
    (tmp_path / "train-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="mnist data not found"):
        load_dataset("mnist", tmp_path)


def test_default_data_dir_is_searched(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    make_idx_set(tmp_path / "data")
    assert load_dataset("mnist").source == "data"


def test_no_download_without_permission(tmp_path, monkeypatch):
    import torchvision.datasets

    def forbidden(*args, **kwargs):
        raise AssertionError("download attempted with download=False")

    monkeypatch.setattr(torchvision.datasets, "MNIST", forbidden)
    with pytest.raises(DataError, match="mnist data not found"):
        load_dataset("mnist", tmp_path, download=False)


def test_failed_download_says_offline(tmp_path, monkeypatch):
    import torchvision.datasets

    def offline(root, train, download):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(torchvision.datasets, "MNIST", offline)
    with pytest.raises(DataError) as info:
        load_dataset("mnist", tmp_path, download=True)
    message = str(info.value)
    assert f"Downloading mnist into {tmp_path} failed (URLError" in message
    assert "offline" in message and str(tmp_path / "MNIST" / "raw") in message


def test_download_then_read_raw_files(tmp_path, monkeypatch):
    import torchvision.datasets

    calls = []

    def fake_mnist(root, train, download):
        calls.append((root, download))
        make_idx_set(Path(root) / "MNIST" / "raw", seed=3)

    monkeypatch.setattr(torchvision.datasets, "MNIST", fake_mnist)
    ds = load_dataset("mnist", tmp_path, download=True)
    assert calls == [(str(tmp_path), True)]
    assert ds.source == str(tmp_path / "MNIST" / "raw") and ds.train_size == 12
    load_dataset("mnist", tmp_path, download=True)  # files present now: no second download
    assert len(calls) == 1


@pytest.mark.skipif(
    not DEBIAN_FASHION.is_dir(), reason=f"{DEBIAN_FASHION} missing (apt-get install dataset-fashion-mnist)"
)
def test_real_fashion_mnist_from_debian_location():
    ds = load_dataset("fashion-mnist")
    assert ds.source == str(DEBIAN_FASHION)
    assert ds.x_train.shape == (60000, 1, 28, 28) and ds.x_test.shape == (10000, 1, 28, 28)
    assert ds.y_train.shape == (60000,) and ds.y_test.shape == (10000,)
    assert sorted(torch.bincount(ds.y_train).tolist()) == [6000] * 10
    assert ds.y_train[:5].tolist() == [9, 0, 0, 3, 0]  # the well-known first training labels
    assert abs(ds.x_train.float().mean().item() / 255 - ds.mean[0]) < 1e-3


# ---------------------------------------------------------------------------------------------- CIFAR


def test_cifar10_folder_loads(tmp_path):
    make_cifar10(tmp_path)
    ds = load_dataset("CIFAR10", tmp_path)
    assert ds.x_train.shape == (20, 3, 32, 32) and ds.x_test.shape == (3, 3, 32, 32)
    assert ds.num_classes == 10 and ds.mean[0] == pytest.approx(0.4914)
    assert ds.y_train[:4].tolist() == [1, 2, 3, 4]  # data_batch_1 first: batches concatenated in order
    assert ds.y_test.tolist() == [0, 1, 2]
    # Each row is red plane, green plane, blue plane: channel c of batch i holds 10*i + c + 1.
    assert ds.x_train[0, :, 0, 0].tolist() == [11, 12, 13] and ds.x_train[-1, :, 31, 31].tolist() == [51, 52, 53]


def test_cifar100_folder_pointed_at_directly(tmp_path):
    folder = make_cifar100(tmp_path)
    ds = load_dataset("cifar100", folder, train=False)
    assert ds.num_classes == 100 and ds.x_train.shape == (0, 3, 32, 32)
    assert ds.x_test.shape == (2, 3, 32, 32) and ds.y_test.tolist() == [99, 98]


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_archive_is_unpacked_next_to_itself(tmp_path, name):
    build = tmp_path / "build"
    folder = make_cifar10(build) if name == "cifar10" else make_cifar100(build)
    archive_dir = tmp_path / "archives"
    archive_dir.mkdir()
    archive = archive_dir / cifar.VARIANTS[name].archive
    tar_folder(folder, archive)
    ds = load_dataset(name, archive_dir)
    assert ds.train_size == (20 if name == "cifar10" else 5)
    assert ds.x_test.shape[1:] == (3, 32, 32)
    # Unpacked beside the archive, no scratch folder left behind.
    assert sorted(p.name for p in archive_dir.iterdir()) == sorted([folder.name, archive.name])


def test_cifar10_request_with_cifar100_folder(tmp_path):
    make_cifar100(tmp_path)
    with pytest.raises(DataError) as info:
        load_dataset("cifar10", tmp_path)
    message = str(info.value)
    assert "CIFAR-10 (cifar10) was requested, but only CIFAR-100 files were found" in message
    assert str(tmp_path / "cifar-100-python") in message and "data.name=cifar100" in message


def test_cifar100_request_with_cifar10_archive(tmp_path):
    make_cifar10(tmp_path / "build")
    tar_folder(tmp_path / "build" / "cifar-10-batches-py", tmp_path / "cifar-10-python.tar.gz")
    with pytest.raises(DataError) as info:
        load_dataset("cifar100", tmp_path)
    message = str(info.value)
    assert "only CIFAR-10 files were found, at " + str(tmp_path / "cifar-10-python.tar.gz") in message
    assert "data.name=cifar10" in message


def test_cifar10_folder_holding_cifar100_pickles(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        dump(folder / name, {b"data": cifar_rows(2, 0), b"fine_labels": [1, 2], b"coarse_labels": [0, 0]})
    with pytest.raises(DataError) as info:
        load_dataset("cifar10", tmp_path)
    message = str(info.value)
    assert str(folder / "data_batch_1") in message and "is a CIFAR-100 file" in message


def test_cifar_damaged_pickle_names_file(tmp_path):
    folder = make_cifar10(tmp_path)
    (folder / "test_batch").write_bytes(b"not a pickle")
    with pytest.raises(DataError, match=f"CIFAR file {folder / 'test_batch'} cannot be used"):
        load_dataset("cifar10", tmp_path)


def test_missing_cifar_names_dirs_and_fix(tmp_path):
    with pytest.raises(DataError) as info:
        load_dataset("cifar10", tmp_path)
    message = str(info.value)
    assert f"in {tmp_path}, {tmp_path / 'cifar10'}." in message
    assert "cifar-10-batches-py/" in message and "cifar-10-python.tar.gz" in message
    assert "--set data.download=true" in message


# ------------------------------------------------------------------------------------------ synthetic


def test_synthetic_shape_and_determinism():
    options = {"train_size": 64, "test_size": 16, "classes": 4, "channels": 1, "size": 12, "seed": 5}
    a = load_dataset("synthetic", synthetic=options)
    b = load_dataset("synthetic", synthetic=dict(options))
    assert a.x_train.shape == (64, 1, 12, 12) and a.x_test.shape == (16, 1, 12, 12)
    assert a.x_train.dtype == torch.uint8 and a.y_train.dtype == torch.int64
    assert a.num_classes == 4 and a.source == "generated"
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    assert set(a.y_train.tolist()) == {0, 1, 2, 3}
    assert len(a.mean) == 1 and 0.0 < a.std[0] < 0.5
    c = load_dataset("synthetic", synthetic={**options, "seed": 6})
    assert not torch.equal(a.x_train, c.x_train)


def test_synthetic_defaults_and_single_split():
    ds = load_dataset("synthetic", test=False)
    assert ds.x_train.shape == (2048, 3, 16, 16) and ds.x_test.shape == (0, 3, 16, 16)
    full = load_dataset("synthetic")
    assert full.mean == ds.mean  # statistics do not depend on which splits were asked for
    assert torch.equal(full.x_train, ds.x_train)


def test_synthetic_is_learnable():
    """Nearest class mean on raw pixels already separates the classes: the signal is strong."""
    ds = load_dataset("synthetic", synthetic={"train_size": 512, "test_size": 256})
    x_train, x_test = ds.x_train.flatten(1).float(), ds.x_test.flatten(1).float()
    centroids = torch.stack([x_train[ds.y_train == k].mean(0) for k in range(10)])
    accuracy = (torch.cdist(x_test, centroids).argmin(1) == ds.y_test).float().mean().item()
    assert accuracy > 0.5  # chance is 0.1


@pytest.mark.parametrize("options,fragment", [({"classe": 3}, "Unknown synthetic data option(s) classe"),
                                              ({"size": 0}, "data.synthetic.size is 0")])
def test_synthetic_bad_options(options, fragment):
    with pytest.raises(DataError) as info:
        load_dataset("synthetic", synthetic=options)
    assert fragment in str(info.value)


# -------------------------------------------------------------------------------------------- batches


def images(n=16, c=3, size=32, seed=0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, c, size, size), dtype=torch.uint8, generator=generator)


def test_make_batch_native_normalisation():
    x = images()
    index = torch.tensor([3, 0, 7])
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    batch = make_batch(x, index, 32, mean, std, augment=False)
    assert batch.shape == (3, 3, 32, 32) and batch.dtype == torch.float32 and batch.is_contiguous()
    expected = (x[index].float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    torch.testing.assert_close(batch, expected)


@pytest.mark.parametrize("resolution", [16, 24, 48])
def test_make_batch_resizes(resolution):
    x = images(n=4, c=1, size=28)
    batch = make_batch(x, torch.arange(4), resolution, (0.0,), (1.0,), augment=False)
    assert batch.shape == (4, 1, resolution, resolution)
    expected = F.interpolate(x.float() / 255, size=(resolution, resolution), mode="bilinear",
                             align_corners=False, antialias=resolution < 28)
    torch.testing.assert_close(batch, expected)
    constant = torch.full((1, 1, 28, 28), 51, dtype=torch.uint8)  # resizing keeps a flat image flat
    flat = make_batch(constant, torch.tensor([0]), resolution, (0.1,), (0.5,), augment=False)
    torch.testing.assert_close(flat, torch.full_like(flat, (0.2 - 0.1) / 0.5))


def test_make_batch_augment_deterministic_for_seeded_generator():
    x = images()
    index = torch.arange(16)
    a = make_batch(x, index, 32, (0.5,) * 3, (0.25,) * 3, augment=True, generator=torch.Generator().manual_seed(1))
    b = make_batch(x, index, 32, (0.5,) * 3, (0.25,) * 3, augment=True, generator=torch.Generator().manual_seed(1))
    c = make_batch(x, index, 32, (0.5,) * 3, (0.25,) * 3, augment=True, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def all_crops_and_flips(image: torch.Tensor, pad: int) -> list[tuple[int, int, bool, torch.Tensor]]:
    _, h, w = image.shape
    padded = F.pad(image, (pad, pad, pad, pad))
    out = []
    for top in range(2 * pad + 1):
        for left in range(2 * pad + 1):
            crop = padded[:, top:top + h, left:left + w]
            out.append((top - pad, left - pad, False, crop))
            out.append((top - pad, left - pad, True, crop.flip(-1)))
    return out


@pytest.mark.parametrize("size,pad", [(32, 4), (28, 3)])
def test_make_batch_augment_is_a_crop_and_flip(size, pad):
    x = images(n=64, c=3, size=size, seed=4)
    batch = make_batch(x, torch.arange(64), size, (0.0,), (1.0,), augment=True,
                       generator=torch.Generator().manual_seed(0))
    pixels = torch.round(batch * 255).to(torch.uint8)
    seen_flip, seen_shift, changed = False, False, 0
    for i in range(64):
        candidates = all_crops_and_flips(x[i], pad)
        matches = [(dy, dx, flip) for dy, dx, flip, crop in candidates if torch.equal(crop, pixels[i])]
        assert matches, f"sample {i} is not a padded crop / flip of its source image"
        dy, dx, flip = matches[0]
        seen_flip |= flip
        seen_shift |= (dy, dx) != (0, 0)
        changed += not torch.equal(pixels[i], x[i])
    assert seen_flip and seen_shift and changed > 48  # identity has probability 1/(2*(2*pad+1)^2)
    # Zero padding: a sample shifted down has black rows at the top.
    assert pixels.float().mean() < x.float().mean()


def test_make_batch_augment_then_resize():
    x = images(n=8, size=32)
    batch = make_batch(x, torch.arange(8), 16, (0.5,) * 3, (0.5,) * 3, augment=True,
                       generator=torch.Generator().manual_seed(0))
    assert batch.shape == (8, 3, 16, 16) and batch.dtype == torch.float32
    assert batch.min() >= -1.0 and batch.max() <= 1.0


def test_eval_batches_in_order_last_partial():
    x = images(n=10, c=1, size=28)
    y = torch.arange(10)
    batches = list(eval_batches(x, y, 4, 28, (0.2,), (0.3,)))
    assert [inputs.shape[0] for inputs, _ in batches] == [4, 4, 2]
    assert torch.equal(torch.cat([labels for _, labels in batches]), y)
    full = make_batch(x, torch.arange(10), 28, (0.2,), (0.3,), augment=False)
    torch.testing.assert_close(torch.cat([inputs for inputs, _ in batches]), full)


def test_load_needs_a_split():
    with pytest.raises(ValueError):
        load_dataset("synthetic", train=False, test=False)


def test_data_modules_do_not_use_mpi():
    """The data code runs in every process, also in tests without MPI; it must not pull mpi4py in."""
    for module in Path(data.__file__).parent.glob("*.py"):
        assert "mpi4py" not in module.read_text(), module
