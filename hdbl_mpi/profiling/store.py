"""Profile files: the step-time and memory measurements of `hdbl profile`, stored as JSON and looked up.

Kept apart from the measuring code (``hdbl_mpi.profiling.measure``) and free of torch and MPI, so that `hdbl plan
--profile FILE` and the training set-up read a profile instantly. A profile holds one entry per (device,
torch version, model, resolution, precision): a and b of tau(B) = a*B + b with R², B_max, and the raw samples
they came from.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from hdbl_mpi.errors import HdblError

PROFILE_FORMAT = 1


def profile_key(device: str, torch_version: str, model: str, resolution: int, precision: str) -> str:
    """The key of one entry in a profile file, e.g. "NVIDIA A100|2.14.1|resnet18|32|amp"."""
    return f"{device}|{torch_version}|{model}|{int(resolution)}|{precision}"


def _entry_key(entry: dict) -> str:
    if not entry.get("model"):
        raise ValueError("a profile entry needs its 'model' set (the model name) before it is saved")
    return profile_key(entry["device"], entry["torch"], entry["model"], entry["resolution"], entry["precision"])


def save_profile(path: str | Path, entries: list[dict]) -> dict:
    """Merge `entries` into the profile file at `path` (an entry with the same key is replaced); the whole
    profile. Written to a temporary file and renamed, so an interrupted run never leaves a truncated profile."""
    path = Path(path)
    profile: dict[str, Any] = load_profile(path) if path.exists() else {"format": PROFILE_FORMAT, "entries": {}}
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    for entry in entries:
        key = _entry_key(entry)
        profile["entries"][key] = {**entry, "saved": now}
    profile["format"] = PROFILE_FORMAT
    profile["created"] = now
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(profile, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)
    return profile


def load_profile(path: str | Path) -> dict:
    """The profile stored at `path`; HdblError saying what is wrong and how to make one when it is unusable."""
    path = Path(path)
    remedy = "Create it with `hdbl profile` (or point to the right file)."
    if not path.is_file():
        raise HdblError(f"Profile file {path} does not exist. {remedy}")
    try:
        profile = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise HdblError(f"Profile file {path} is not readable JSON ({err}). {remedy}") from err
    if (
        not isinstance(profile, dict)
        or profile.get("format") != PROFILE_FORMAT
        or not isinstance(profile.get("entries"), dict)
    ):
        raise HdblError(
            f"{path} is not a profile file of format {PROFILE_FORMAT} (it needs 'format': {PROFILE_FORMAT} and an "
            f"'entries' mapping). {remedy}"
        )
    for key, entry in profile["entries"].items():
        problem = _entry_problem(entry)
        if problem:
            raise HdblError(f"Profile file {path}: entry {key!r} {problem}. Measure it again with `hdbl profile`, "
                            "or correct the entry.")
    return profile


# What `hdbl plan`, the start-up plan and the lookup read from every entry, and what each must be.
_NUMBERS = {"a": "seconds per sample of the step-time line", "b": "seconds per step of the step-time line"}
_COUNTS = {"b_max": "the largest batch that fits", "resolution": "the image size in pixels"}
_NAMES = ("device", "model", "precision")


def _entry_problem(entry: Any) -> str:
    """Why an entry cannot be used (empty when it can): a missing key or a value of the wrong kind, found when
    the file is read rather than as a KeyError or TypeError deep inside the plan."""
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


def _describe(entries: dict) -> str:
    if not entries:
        return "nothing"
    return "; ".join(
        f"{e.get('model')} @ {e.get('resolution')} px {e.get('precision')} on {e.get('device')}"
        for e in entries.values()
    )


def lookup(profile: dict, model: str, resolution: int, precision: str, device: str | None = None,
           torch_version: str | None = None) -> dict:
    """The entry for (model, resolution, precision[, device]).

    Without `device`, entries of several devices are ambiguous (a plan for one GPU is wrong for another), so
    the caller must choose. Among entries of one device from several torch versions, `torch_version`'s (the
    running one, when the caller has torch loaded) wins, else the most recently saved.
    """
    entries = profile.get("entries", {})
    matches = [
        e for e in entries.values()
        if e.get("model") == model and int(e.get("resolution", -1)) == int(resolution)
        and e.get("precision") == precision and (device is None or e.get("device") == device)
    ]  # fmt: skip
    if not matches:
        on = f" on {device}" if device is not None else ""
        raise HdblError(
            f"The profile has no entry for {model} at {resolution} px, {precision}{on}; it holds: "
            f"{_describe(entries)}. Profile this combination first."
        )
    devices = sorted({e.get("device") for e in matches})
    if len(devices) > 1:
        raise HdblError(
            f"The profile has entries for {model} at {resolution} px, {precision} on several devices "
            f"({', '.join(devices)}); pass the device to use."
        )
    same_torch = [e for e in matches if torch_version is not None and e.get("torch") == torch_version]
    return max(same_torch or matches, key=lambda e: str(e.get("saved", "")))


def average_entries(entries: list[dict]) -> dict:
    """One entry from the entries of several ranks: mean a, b and r2; the smallest B_max, because every worker
    of a group trains the same B_L and the smallest device must hold it."""
    if not entries:
        raise ValueError("average_entries needs at least one entry")
    ident = {(e.get("model"), e.get("resolution"), e.get("precision")) for e in entries}
    if len(ident) > 1:
        raise ValueError(f"entries to average must share model, resolution and precision; got {sorted(ident)}")
    n = len(entries)

    def mean(key: str, source: Callable[[dict], dict] = lambda e: e) -> float:
        return sum(float(source(e)[key]) for e in entries) / n

    devices = sorted({e["device"] for e in entries})
    result = {k: v for k, v in entries[0].items() if k not in ("samples", "memory", "oom_backoffs")}
    result.update(
        device=devices[0] if len(devices) == 1 else " + ".join(devices),
        a=mean("a"),
        b=mean("b"),
        r2=mean("r2"),
        b_max=min(int(e["b_max"]) for e in entries),
        b_max_predicted=min(int(e["b_max_predicted"]) for e in entries) if all(
            "b_max_predicted" in e for e in entries) else entries[0].get("b_max_predicted"),
        oom_backoffs=sorted({b for e in entries for b in e.get("oom_backoffs", [])}, reverse=True),
        ranks=n,
        per_rank=[{"device": e["device"], "a": e["a"], "b": e["b"], "b_max": e["b_max"]} for e in entries],
    )
    if all("memory" in e for e in entries):
        memories = [e["memory"] for e in entries]
        result["memory"] = {
            "a": sum(m["a"] for m in memories) / n,
            "b": sum(m["b"] for m in memories) / n,
            "r2": sum(m["r2"] for m in memories) / n,
            "capacity": min(m["capacity"] for m in memories),
            "margin": memories[0].get("margin"),
            "method": "+".join(sorted({m.get("method", "?") for m in memories})),
        }
    samples: list[dict] = [e["samples"] for e in entries if e.get("samples") is not None]
    if len(samples) == n and all(s["batch"] == samples[0]["batch"] for s in samples):
        result["samples"] = {
            "batch": list(samples[0]["batch"]),
            "median_s": [sum(vals) / n for vals in zip(*(s["median_s"] for s in samples), strict=True)],
        }
    return result


def average_ranks(per_rank: list[list[dict]]) -> list[dict]:
    """One entry per resolution from every rank's entries (each rank's list in the same resolution order)."""
    return [average_entries(list(same)) for same in zip(*per_rank, strict=True)]
