"""Profile files: the step-time and memory measurements of `hdbl profile`, stored as JSON and looked up.

Kept apart from the measuring code (``hdbl_mpi.profiling.measure``) and free of torch and MPI, so that `hdbl plan
--profile FILE` and the training set-up read a profile instantly. A profile holds one entry per (device,
torch version, model, resolution, precision): a and b of tau(B) = a*B + b with R², B_max, and the raw samples
they came from (hdbl_mpi/profiling/entry.py).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from statistics import fmean

from hdbl_mpi.errors import HdblError
from hdbl_mpi.profiling.entry import MemoryFit, ProfileEntry, RankLine, StepSamples

PROFILE_FORMAT = 1


def profile_key(device: str, torch_version: str, model: str, resolution: int, precision: str) -> str:
    """The key of one entry in a profile file, e.g. "NVIDIA A100|2.14.1|resnet18|32|amp"."""
    return f"{device}|{torch_version}|{model}|{int(resolution)}|{precision}"


def entry_key(entry: ProfileEntry) -> str:
    if not entry.model:
        raise ValueError("a profile entry needs its model named before it is saved")
    return profile_key(entry.device, entry.torch, entry.model, entry.resolution, entry.precision)


@dataclass
class Profile:
    """A profile file: its entries by key, and when it was last written."""

    entries: dict[str, ProfileEntry] = field(default_factory=dict)
    created: str = ""

    def to_dict(self) -> dict:
        return {"format": PROFILE_FORMAT, "created": self.created,
                "entries": {key: e.to_dict() for key, e in self.entries.items()}}


def save_profile(path: str | Path, entries: list[ProfileEntry]) -> Profile:
    """Merge `entries` into the profile file at `path` (an entry with the same key is replaced); the whole
    profile. Written to a temporary file and renamed, so an interrupted run never leaves a truncated profile."""
    path = Path(path)
    profile = load_profile(path) if path.exists() else Profile()
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    for entry in entries:
        profile.entries[entry_key(entry)] = replace(entry, saved=now)
    profile.created = now
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(profile.to_dict(), indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)
    return profile


def load_profile(path: str | Path) -> Profile:
    """The profile stored at `path`; HdblError saying what is wrong and how to make one when it is unusable."""
    path = Path(path)
    remedy = "Create it with `hdbl profile` (or point to the right file)."
    if not path.is_file():
        raise HdblError(f"Profile file {path} does not exist. {remedy}")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise HdblError(f"Profile file {path} is not readable JSON ({err}). {remedy}") from err
    if not isinstance(data, dict) or data.get("format") != PROFILE_FORMAT or not isinstance(data.get("entries"), dict):
        raise HdblError(
            f"{path} is not a profile file of format {PROFILE_FORMAT} (it needs 'format': {PROFILE_FORMAT} and an "
            f"'entries' mapping). {remedy}"
        )
    entries = {}
    for key, entry in data["entries"].items():
        try:
            entries[key] = ProfileEntry.from_dict(entry)
        except (ValueError, TypeError) as err:
            raise HdblError(f"Profile file {path}: entry {key!r} {err}. Measure it again with `hdbl profile`, or "
                            "correct the entry.") from None
    return Profile(entries, str(data.get("created", "")))


def _describe(entries: dict[str, ProfileEntry]) -> str:
    if not entries:
        return "nothing"
    return "; ".join(f"{e.model} @ {e.resolution} px {e.precision} on {e.device}" for e in entries.values())


def lookup(profile: Profile, model: str, resolution: int, precision: str, device: str | None = None,
           torch_version: str | None = None) -> ProfileEntry:
    """The entry for (model, resolution, precision[, device]).

    Without `device`, entries of several devices are ambiguous (a plan for one GPU is wrong for another), so
    the caller must choose. Among entries of one device from several torch versions, `torch_version`'s (the
    running one, when the caller has torch loaded) wins, else the most recently saved.
    """
    matches = [e for e in profile.entries.values()
               if e.model == model and e.resolution == int(resolution) and e.precision == precision
               and (device is None or e.device == device)]
    if not matches:
        on = f" on {device}" if device is not None else ""
        raise HdblError(
            f"The profile has no entry for {model} at {resolution} px, {precision}{on}; it holds: "
            f"{_describe(profile.entries)}. Profile this combination first."
        )
    devices = sorted({e.device for e in matches})
    if len(devices) > 1:
        raise HdblError(
            f"The profile has entries for {model} at {resolution} px, {precision} on several devices "
            f"({', '.join(devices)}); pass the device to use."
        )
    same_torch = [e for e in matches if torch_version is not None and e.torch == torch_version]
    return max(same_torch or matches, key=lambda e: e.saved)


def average_entries(entries: list[ProfileEntry]) -> ProfileEntry:
    """One entry from the entries of several ranks: mean a, b and r2; the smallest B_max, because every worker
    of a group trains the same B_L and the smallest device must hold it."""
    if not entries:
        raise ValueError("average_entries needs at least one entry")
    ident = {(e.model, e.resolution, e.precision) for e in entries}
    if len(ident) > 1:
        raise ValueError(f"entries to average must share model, resolution and precision; got {sorted(ident)}")
    devices = sorted({e.device for e in entries})
    predicted = [e.b_max_predicted for e in entries]
    return replace(
        entries[0],
        device=devices[0] if len(devices) == 1 else " + ".join(devices),
        a=fmean(e.a for e in entries), b=fmean(e.b for e in entries), r2=fmean(e.r2 for e in entries),
        b_max=min(e.b_max for e in entries),
        b_max_predicted=min(p for p in predicted if p is not None) if None not in predicted else predicted[0],
        oom_backoffs=tuple(sorted({b for e in entries for b in e.oom_backoffs}, reverse=True)),
        per_rank=tuple(RankLine(e.device, e.a, e.b, e.b_max) for e in entries),
        memory=_average_memory([e.memory for e in entries]),
        samples=_average_samples([e.samples for e in entries]),
    )


def _average_memory(fits: list[MemoryFit | None]) -> MemoryFit | None:
    known = [m for m in fits if m is not None]
    if len(known) != len(fits):
        return None
    return MemoryFit(a=fmean(m.a for m in known), b=fmean(m.b for m in known), r2=fmean(m.r2 for m in known),
                     capacity=min(m.capacity for m in known), margin=known[0].margin,
                     method="+".join(sorted({m.method for m in known})), device_share=known[0].device_share)


def _average_samples(samples: list[StepSamples | None]) -> StepSamples | None:
    """The ranks' median step times averaged per batch size, where every rank timed the same sizes."""
    known = [s for s in samples if s is not None]
    if len(known) != len(samples) or any(s.batch != known[0].batch for s in known):
        return None
    return StepSamples(known[0].batch, tuple(fmean(vals) for vals in zip(*(s.median_s for s in known), strict=True)))


def average_ranks(per_rank: list[list[ProfileEntry]]) -> list[ProfileEntry]:
    """One entry per resolution from every rank's entries (each rank's list in the same resolution order)."""
    return [average_entries(list(same)) for same in zip(*per_rank, strict=True)]
