"""hdbl_mpi/datasets.py: one table of what each data set is, read by the schedule, the loaders and the sources."""

from __future__ import annotations

import subprocess
import sys

import pytest

from hdbl_mpi.datasets import DATASET_NAMES, DATASETS, canonical_name, native_resolution, statistics
from hdbl_mpi.errors import DataError


def test_every_spelling_finds_its_native_resolution():
    for spelling in ("fashion-mnist", "Fashion_MNIST", "fashionmnist", "mnist"):
        assert native_resolution(spelling) == 28
    for spelling in ("cifar10", "CIFAR-10", "cifar_100"):
        assert native_resolution(spelling) == 32
    assert native_resolution("synthetic") == 16 and native_resolution("synthetic", {"size": 24}) == 24
    assert native_resolution("folder") is None and native_resolution("imagenet") is None


def test_statistics_and_classes_come_from_the_table():
    assert statistics("folder") == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert statistics("cifar100")[0] == (0.5071, 0.4865, 0.4409) and DATASETS["cifar100"].classes == 100
    with pytest.raises(ValueError, match="measured"):
        statistics("synthetic")
    assert set(DATASET_NAMES) <= set(DATASETS)
    with pytest.raises(DataError, match="Unknown data set 'svhn'; set data.name to one of: fashion-mnist, mnist"):
        canonical_name("svhn")


def test_the_table_loads_neither_torch_nor_mpi():
    code = ("import sys, hdbl_mpi.datasets; "
            "assert 'torch' not in sys.modules and 'mpi4py' not in sys.modules, sorted(sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60).returncode == 0
