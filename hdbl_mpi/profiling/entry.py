"""The profile entry, typed: what one measurement of (device, torch version, model, resolution, precision) found,
as the profiler makes it, the store keeps it, the plan reads it and reports plot it. Torch- and MPI-free.

In a profile file an entry is the flat JSON mapping of :meth:`ProfileEntry.to_dict`; :meth:`ProfileEntry.from_dict`
reads it back, and refuses, naming the key, an entry the plan could not use (a missing B_max, a text where a
number belongs), rather than letting a KeyError or TypeError surface deep inside the plan.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from typing import Any


@dataclass(frozen=True)
class MemoryFit:
    """Peak bytes of a step = a*B + b on this device, and what B_max was predicted under."""

    a: float
    b: float
    r2: float
    capacity: int  # bytes: the GPU's share (device_share ranks on it) or the CPU's budget
    margin: float | None
    method: str  # cuda | rss | saved-tensors (several joined by + in an average)
    device_share: int = 1
    batches: tuple[int, ...] = ()
    bytes: tuple[int, ...] = ()


@dataclass(frozen=True)
class StepSamples:
    """The timed batch sizes, the median step time of each, and (one rank's) every timed step."""

    batch: tuple[int, ...]
    median_s: tuple[float, ...]
    step_s: tuple[tuple[float, ...], ...] = ()


@dataclass(frozen=True)
class InputShare:
    """`hdbl profile --config`: how long each timed step waited for the config's input pipeline."""

    median_s: tuple[float, ...]
    a: float
    b: float
    r2: float
    share: tuple[float, ...]  # of the median step, per timed batch size
    data: str = ""
    decoder: str = ""


@dataclass(frozen=True)
class RankLine:
    """One rank's own line and B_max, kept in an entry averaged over ranks."""

    device: str
    a: float
    b: float
    b_max: int


# What each required number is, for the message that refuses an entry without it.
_NUMBERS = {"a": "seconds per sample of the step-time line", "b": "seconds per step of the step-time line"}
_COUNTS = {"b_max": "the largest batch that fits", "resolution": "the image size in pixels"}
_NAMES = ("device", "torch", "model", "precision")
_OPTIONAL_EMPTY = (None, (), "")  # optional fields left out of the file when they hold nothing


@dataclass(frozen=True)
class ProfileEntry:
    device: str
    torch: str
    model: str  # "" until the profiler names the model it measured
    resolution: int
    precision: str
    a: float  # tau(B) = a*B + b, seconds
    b: float
    r2: float
    b_max: int
    b_max_predicted: int | None = None
    oom_backoffs: tuple[int, ...] = ()
    memory: MemoryFit | None = None
    samples: StepSamples | None = None
    input: InputShare | None = None
    steps: int | None = None  # timed steps per batch size
    warmup: int | None = None
    optimizer: str | None = None
    channels_last: bool | None = None
    compile: bool | None = None
    skipped_batches: tuple[int, ...] = ()
    per_rank: tuple[RankLine, ...] = ()  # an average over ranks: each rank's own line
    saved: str = ""

    @property
    def ranks(self) -> int:
        return len(self.per_rank) or 1

    def to_dict(self) -> dict[str, Any]:
        """The flat JSON form of a profile file (optional fields that hold nothing are left out)."""
        data = {k: v for k, v in asdict(self).items() if not (k in _OPTIONAL and v in _OPTIONAL_EMPTY)}
        if self.per_rank:
            data["ranks"] = self.ranks
        return data

    @classmethod
    def from_dict(cls, data: Any) -> ProfileEntry:
        """The entry of a profile file's mapping; ValueError saying what is missing or wrong otherwise."""
        problem = _problem(data)
        if problem:
            raise ValueError(problem)
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known and k not in _NESTED}
        for key, kind in _NESTED.items():
            if data.get(key) is not None:
                values[key] = kind(data[key])
        for key in ("oom_backoffs", "skipped_batches"):
            values[key] = tuple(data.get(key) or ())
        values.update(resolution=int(data["resolution"]), b_max=int(data["b_max"]), a=float(data["a"]),
                      b=float(data["b"]), r2=float(data.get("r2", math.nan)), model=data.get("model") or "")
        return cls(**values)

    def named(self, model: str) -> ProfileEntry:
        return replace(self, model=model)


def _memory(data: dict) -> MemoryFit:
    return MemoryFit(**{**data, "batches": tuple(data.get("batches") or ()), "bytes": tuple(data.get("bytes") or ())})


def _samples(data: dict) -> StepSamples:
    return StepSamples(tuple(data["batch"]), tuple(data["median_s"]),
                       tuple(tuple(s) for s in data.get("step_s") or ()))


def _input(data: dict) -> InputShare:
    return InputShare(**{**data, "median_s": tuple(data["median_s"]), "share": tuple(data["share"])})


def _per_rank(data: list) -> tuple[RankLine, ...]:
    return tuple(RankLine(**r) for r in data)


_NESTED: dict[str, Callable[[Any], Any]] = {"memory": _memory, "samples": _samples, "input": _input,
                                            "per_rank": _per_rank}
_OPTIONAL = {f.name for f in fields(ProfileEntry)} - {"device", "torch", "model", "resolution", "precision", "a",
                                                       "b", "r2", "b_max"}


def _problem(entry: Any) -> str:
    """Why a file's entry cannot be used (empty when it can)."""
    if not isinstance(entry, dict):
        return f"is {type(entry).__name__}, not a mapping of keys"
    for key, what in {**_NUMBERS, **_COUNTS}.items():
        value = entry.get(key)
        if value is None:
            return f"has no {key!r} ({what})"
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return f"has {key}={value!r}; it must be a finite number ({what})"
        if key in _COUNTS and (value < 1 or value != int(value)):
            return f"has {key}={value!r}; it must be a positive whole number ({what})"
    missing = [key for key in _NAMES if not isinstance(entry.get(key), str)]
    return f"has no {missing[0]!r} name" if missing else ""
