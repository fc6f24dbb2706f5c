"""What the tool knows about each data set, in one table: its canonical name and spellings, classes, channels,
native resolution and per-channel mean/std, and how to obtain its files. Pure (no torch, no files), so the
schedule (native resolutions), the loaders and sources (statistics), `hdbl schedule` and `hdbl doctor` read the
same facts without loading anything.
"""

from __future__ import annotations

from dataclasses import dataclass

from hdbl_mpi.errors import DataError


@dataclass(frozen=True)
class DatasetFacts:
    name: str
    classes: int | None  # None: from the files (folder) or the generator's options (synthetic)
    channels: int | None
    native_resolution: int | None  # None: image folders have none; synthetic: its options' size
    mean: tuple[float, ...] | None  # per channel, in [0, 1] units; None: measured on the data (synthetic)
    std: tuple[float, ...] | None
    obtain: str = ""  # how to get the files by hand, appended to "put them into one of those directories"


_CIFAR_ARCHIVE = " (the archive is at https://www.cs.toronto.edu/~kriz/cifar.html)"

# The literature's per-channel statistics of each training set; ImageNet's for image folders.
DATASETS: dict[str, DatasetFacts] = {
    "fashion-mnist": DatasetFacts("fashion-mnist", 10, 1, 28, (0.2860,), (0.3530,),
                                  ", or install them with `apt-get install dataset-fashion-mnist`"),
    "mnist": DatasetFacts("mnist", 10, 1, 28, (0.1307,), (0.3081,)),
    "cifar10": DatasetFacts("cifar10", 10, 3, 32, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616),
                            _CIFAR_ARCHIVE),
    "cifar100": DatasetFacts("cifar100", 100, 3, 32, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762),
                             _CIFAR_ARCHIVE),
    "synthetic": DatasetFacts("synthetic", None, None, None, None, None),
    "folder": DatasetFacts("folder", None, 3, None, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}

DATASET_NAMES = ("fashion-mnist", "mnist", "cifar10", "cifar100", "synthetic")  # the sets held in memory

DECODERS = ("auto", "dali", "torchvision")  # data.decoder: how image folders decode (hdbl_mpi/data/folder.py)

SYNTHETIC_DEFAULTS: dict[str, int] = {
    "train_size": 2048,
    "test_size": 512,
    "classes": 10,
    "channels": 3,
    "size": 16,
    "seed": 0,
}
"""The accepted keys of `data.synthetic` and their defaults (the generator: hdbl_mpi/data/synthetic.py)."""

_ALIASES = {name.replace("-", ""): name for name in DATASET_NAMES}


def canonical_name(name: str) -> str:
    """The canonical spelling of an in-memory data set's name; case, '-' and '_' do not matter ("Fashion_MNIST")."""
    key = _ALIASES.get(name.strip().lower().replace("_", "").replace("-", ""))
    if key is None:
        raise DataError(f"Unknown data set {name!r}; set data.name to one of: {', '.join(DATASET_NAMES)}.")
    return key


def statistics(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) per channel of a data set whose statistics are known (not synthetic: those are measured)."""
    facts = DATASETS[name]
    if facts.mean is None or facts.std is None:
        raise ValueError(f"{name}'s statistics are measured on its data, not known in advance")
    return facts.mean, facts.std


def native_resolution(name: str, synthetic: dict | None = None) -> int | None:
    """The image size a data set comes in (the generator's `size` for synthetic); None for image folders and
    names this table does not know (their loader says what is wrong)."""
    if name.strip().lower() == "folder":
        return None
    try:
        key = canonical_name(name)
    except DataError:
        return None
    if key == "synthetic":
        return int({**SYNTHETIC_DEFAULTS, **(synthetic or {})}["size"])
    return DATASETS[key].native_resolution
