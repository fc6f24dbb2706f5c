"""A sweep's grid: `--grid key=v1,v2` and grid files expanded into runs (one per combination and seed), and the
papers' presets.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from pathlib import Path

from hdbl_mpi.errors import HdblError

Grid = list[tuple[str, list[str]]]  # (key, values) in command-line order


@dataclass(frozen=True)
class RunSpec:
    """One run of a sweep: its configuration's name, the seed and the --set overrides (the seed's last)."""

    config: str
    seed: int
    overrides: tuple[str, ...]

    @property
    def name(self) -> str:
        return f"{self.config}.s{self.seed}" if self.config else f"s{self.seed}"


@dataclass(frozen=True)
class Preset:
    """A paper's experiments: the config and the overrides that make a run single-resolution (the all-large-batch
    baseline and dual-batch only train at the top resolution with the phases' learning rates)."""

    config: str
    single: tuple[str, ...]
    seeds: int
    note: str

    def grids(self) -> list[tuple[str, Grid]]:
        """(label, grid) pairs; the label names the experiment in the run names."""
        one = [(key, [value]) for key, value in (item.split("=", 1) for item in self.single)]
        t_grid = [("dual.small", ["1", "2", "3", "4"]), ("dual.extra_time", ["1.05", "1.1"])]
        return [
            ("baseline", [("dual.small", ["0"]), *one]),
            ("cyclic", [("dual.small", ["0"])]),
            ("dual", [*t_grid, *one]),
            ("hybrid", t_grid),
            ("factor", [("dual.small", ["3"]), ("dual.extra_time", ["1.05"]), ("dual.factor", ["sqrt", "none"])]),
            ("merge", [("dual.small", ["3"]), ("dual.extra_time", ["1.05"]), ("ps.merge", ["conference"])]),
        ]


PRESETS = {
    "paper-cifar100": Preset(
        "configs/cifar100-paper.yaml",
        ("schedule.preset=null", "train.epochs=140", "train.lr=0.2", "train.lr_milestones=[80,120]",
         "data.resolution=32"),
        3, "the CIFAR-100 experiments of the journal version (ResNet-18, 1 server + 4 GPU workers)"),
    "paper-imagenet": Preset(
        "configs/imagenet-paper.yaml",
        ("schedule.preset=null", "train.epochs=105", "train.lr=0.2", "train.lr_milestones=[60,90]",
         "data.resolution=288"),
        1, "the ImageNet experiments (ResNet-18, DALI folders); one seed, as published"),
}


def parse_grid(items: list[str]) -> Grid:
    """`key=v1,v2,...` items; commas inside [] or {} belong to one value (e.g. schedule.lrs=[0.1,0.01])."""
    grid: Grid = []
    for item in items:
        key, sep, values = item.partition("=")
        if not sep or not key.strip() or not values.strip():
            raise HdblError(f"--grid expects key=v1,v2,..., got {item!r} (e.g. --grid dual.small=0,2,4).")
        grid.append((key.strip(), _split_values(values)))
    return grid


def load_grids(path: str) -> list[tuple[str, Grid]]:
    """Labelled grids from a YAML file: a list of {label: NAME, grid: {key: [values ...] or value}}; each grid's
    runs are named by its label and the values that vary in it."""
    import yaml

    try:
        entries = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as err:
        raise HdblError(f"--grids {path}: cannot read it ({err}).") from None
    if not isinstance(entries, list) or not all(isinstance(e, dict) and isinstance(e.get("grid"), dict)
                                                for e in entries):
        raise HdblError(f"--grids {path} must be a YAML list of {{label: NAME, grid: {{key: [values]}}}} entries.")
    grids = []
    for e in entries:
        grid = [(str(k), [_yaml_text(v) for v in (vs if isinstance(vs, list) else [vs])])
                for k, vs in e["grid"].items()]
        grids.append((str(e.get("label", "")), grid))
    return grids


def _yaml_text(value: object) -> str:
    """A grid value as --set would spell it (YAML flow style for lists and mappings)."""
    import yaml

    if isinstance(value, (list, dict)) or value is None:
        return yaml.safe_dump(value, default_flow_style=True).strip()
    return str(value).lower() if isinstance(value, bool) else str(value)


def _split_values(text: str) -> list[str]:
    values, depth, current = [], 0, ""
    for ch in text:
        depth += ch in "[{"
        depth -= ch in "]}"
        if ch == "," and depth == 0:
            values.append(current.strip())
            current = ""
        else:
            current += ch
    values.append(current.strip())
    return [v for v in values if v]


def _slug(key: str, value: str) -> str:
    return f"{key.rsplit('.', 1)[-1]}-{re.sub(r'[^A-Za-z0-9.+-]+', '_', value).strip('_')}"


def expand(grids: list[tuple[str, Grid]], seeds: int) -> list[RunSpec]:
    """Every combination of each (label, grid)'s values, for every seed; a combination two grids share runs
    once. A run is named by its label and the grid values that vary within its grid."""
    specs: list[RunSpec] = []
    seen: set[tuple[str, ...]] = set()
    for label, grid in grids:
        for combo in itertools.product(*[[(k, v) for v in values] for k, values in grid]):
            sets = tuple(f"{k}={v}" for k, v in combo)
            if sets in seen:
                continue
            seen.add(sets)
            varying = [_slug(k, v) for k, v in combo if len(dict(grid)[k]) > 1]
            if not label and not varying:  # one value per key: name the run by all of them
                varying = [_slug(k, v) for k, v in combo]
            name = ".".join([label] * bool(label) + varying)
            specs += [RunSpec(name, seed, (*sets, f"train.seed={seed}")) for seed in range(seeds)]
    return specs
