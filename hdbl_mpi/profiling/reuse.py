"""`dual.profile: auto` measured once and reused: the profile store.

What a start-up profile times depends on the step (model and its options, classes, channels, precision,
optimizer, memory format, compile), on how it is timed (steps, batch range, memory budget) and on where (each
worker's host, device, threads and GPU sharing, torch's version: the workers measure at once, so the layout's
contention is in the figures). Those facts, hashed, name one profile file in the store; a later run with the same
facts takes its entries and measures only the resolutions it lacks, so a sweep profiles once, not once per run.
`hdbl train --reprofile` measures every resolution again (and replaces the stored ones).

The store is `$HDBL_PROFILE_STORE`, else `$XDG_CACHE_HOME/hdbl/profiles`, else `~/.cache/hdbl/profiles`; each
setting's facts are written beside its file (`<hash>.setting.json`), so the store can be read by a person.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hdbl_mpi.profiling.store import load_profile, save_profile

if TYPE_CHECKING:
    from hdbl_mpi.profiling.entry import ProfileEntry
    from hdbl_mpi.schema import Config


@dataclass
class ProfileSource:
    """Where a run's start-up profile came from, for summary.json (`startup.profile`) and the start-up line."""

    reused: list[int] = field(default_factory=list)  # resolutions taken from the store
    measured: list[int] = field(default_factory=list)  # resolutions measured now
    seconds: float = 0.0  # spent measuring
    store: str | None = None  # the store file of this setting
    note: str | None = None  # a store that could not be read or written (the run goes on, measuring)

    def to_dict(self) -> dict[str, Any]:
        return {"reused": self.reused, "measured": self.measured, "seconds": round(self.seconds, 3),
                "store": self.store, "note": self.note}


def store_dir() -> Path:
    explicit = os.environ.get("HDBL_PROFILE_STORE")
    if explicit:
        return Path(explicit)
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "hdbl" / "profiles"


def setting(config: Config, workers: list[tuple[str, int, int]], torch_version: str) -> dict[str, Any]:
    """The facts a start-up profile depends on; `workers`: (host:device, threads, GPU sharing) of each worker in
    rank order."""
    m, t, d = config.model, config.train, config.dual
    return {"model": {"name": m.name, "width": m.width, "stem": m.stem, "dropout": m.dropout, "options": m.options},
            "data": {"name": config.data.name, "synthetic": config.data.synthetic},  # classes and channels
            "precision": t.precision, "optimizer": t.optimizer, "channels_last": t.channels_last,
            "compile": t.compile, "steps": d.profile_steps, "max_batch": d.profile_max_batch,
            "batch_large": d.batch_large if not isinstance(d.batch_large, list) else None,
            "memory_budget": d.memory_budget, "torch": torch_version, "workers": [list(w) for w in workers]}


def store_path(facts: dict[str, Any]) -> Path:
    digest = hashlib.sha256(json.dumps(facts, sort_keys=True, default=str).encode()).hexdigest()[:20]
    return store_dir() / f"{digest}.json"


def stored(facts: dict[str, Any], resolutions: list[int]) -> tuple[dict[int, ProfileEntry], str | None]:
    """The store's entries of this setting at `resolutions` (those it has), and a note if it could not be read."""
    path = store_path(facts)
    if not path.is_file():
        return {}, None
    try:
        profile = load_profile(path)
    except Exception as err:  # a damaged store file is measured over, not fatal
        return {}, f"profile store {path} unreadable ({err}); measuring"
    found = {e.resolution: e for e in profile.entries.values()}
    return {r: found[r] for r in resolutions if r in found}, None


def remember(facts: dict[str, Any], entries: list[ProfileEntry]) -> str | None:
    """Add `entries` to this setting's store file; a note if the store cannot be written (the run goes on)."""
    path = store_path(facts)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_profile(path, entries)
        path.with_suffix(".setting.json").write_text(json.dumps(facts, indent=1, sort_keys=True, default=str))
    except OSError as err:
        return f"profile store {path} not written ({err})"
    return None
