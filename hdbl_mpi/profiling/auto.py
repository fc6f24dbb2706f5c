"""The profile a run plans from at start-up (`dual.profile`): measured by every worker at once (`auto`) and
averaged, or the stored entries of a profile file; and the start-up line saying how much the workers disagreed.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from hdbl_mpi.comm.agree import agree
from hdbl_mpi.errors import PlanError
from hdbl_mpi.profiling.reuse import ProfileSource, remember, setting, store_path, stored
from hdbl_mpi.profiling.store import Profile, average_ranks, lookup
from hdbl_mpi.rules.backends import PEER_MODES
from hdbl_mpi.rules.plan import Plan, make_plan
from hdbl_mpi.rules.worker_plan import StepLine, plans_per_worker

if TYPE_CHECKING:
    import torch
    from mpi4py import MPI

    from hdbl_mpi.comm.world import World
    from hdbl_mpi.data.sources import DataInfo
    from hdbl_mpi.profiling.entry import ProfileEntry
    from hdbl_mpi.schema import Config


def measured_profile(comm: MPI.Intracomm, config: Config, world: World, device: torch.device, data: DataInfo,
                     workers: list[tuple[str, int, int]], gpu_sharing: int, resolutions: list[int],
                     reprofile: bool = False) -> tuple[list[ProfileEntry], ProfileSource] | None:
    """`profile: auto`: the step-time model per resolution, from the profile store where this setting was
    measured before (profiling/reuse.py), else measured now by every worker at once (so the timings include the
    contention of the real run on shared hosts) and averaged, then stored; None without `profile: auto`.
    `workers`: (host:device, threads, GPU sharing) of every worker in rank order, agreed by all ranks."""
    import time

    import torch

    if config.dual.profile != "auto":
        return None
    facts = setting(config, workers, torch.__version__)
    source = ProfileSource(store=str(store_path(facts)))
    found: dict[int, ProfileEntry] = {}
    if not reprofile and comm.rank == 0:
        found, source.note = stored(facts, resolutions)
    found, source.note = comm.bcast((found, source.note), root=0)
    missing = [r for r in resolutions if r not in found]
    start = time.perf_counter()
    measured = {e.resolution: e for e in _measure(comm, config, world, device, data, gpu_sharing, missing,
                                                   resolutions)}
    source.seconds = time.perf_counter() - start if missing else 0.0
    source.reused, source.measured = sorted(found), missing
    if measured and comm.rank == 0:
        source.note = remember(facts, list(measured.values())) or source.note
    return [found.get(r) or measured[r] for r in resolutions], source


def _measure(comm: MPI.Intracomm, config: Config, world: World, device: torch.device, data: DataInfo,
             gpu_sharing: int, missing: list[int], resolutions: list[int]) -> list[ProfileEntry]:
    """Every worker profiles the `missing` resolutions at once (the stem chosen for the run's top resolution);
    the entries averaged over the workers. The profile's models and batches draw from torch's random numbers,
    which are put back afterwards: a run trains the same whether its profile was measured or reused."""
    import torch

    if not missing:
        return []
    mine, failure = None, None
    if world.is_worker:
        try:
            with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
                mine = _auto_profile(config, world, device, data, gpu_sharing, missing, resolutions[-1])
        except Exception as err:
            failure = err
    return average_ranks([e for e in agree(comm, failure, mine) if e is not None])


def profile_spread(config: Config, dataset_size: int, entries: list[ProfileEntry], source: ProfileSource) -> str:
    """What `profile: auto` measured, and how much the workers disagreed: the plan's B_S from the average, and
    the B_S each worker's own a and b would have given (a wide range means a noisy plan)."""
    d = config.dual
    parts = []
    for e in entries:
        text = f"{e.resolution} px: a={1e3 * e.a:.3f} ms/sample, b={1e3 * e.b:.2f} ms/step"
        if d.small:
            own = []
            for rank in e.per_rank:
                try:
                    own.append(make_plan(dataset_size, d.workers, d.small, _scalar(d.batch_large) or e.b_max,
                                         rank.a, rank.b, d.extra_time, d.factor).batch_small)
                except PlanError:
                    own.append(None)
            found = [b for b in own if b is not None]
            text += f"; B_S from each worker's own profile: {', '.join(str(b) for b in own)}" if found else ""
        parts.append(text)
    origin = (f"reused from the profile store for {'/'.join(map(str, source.reused))} px, "
              if source.reused else "") + (f"measured in {source.seconds:.1f} s for "
                                           f"{'/'.join(map(str, source.measured))} px, " if source.measured else "")
    note = f"; {source.note}" if source.note else ""
    return (f"profile: auto ({entries[0].ranks} workers, averaged; {origin}{source.store}{note}): "
            + "; ".join(parts))


def worker_lines(config: Config, measured: list[ProfileEntry] | None,
                 plans: dict[int, Plan]) -> dict[int, dict[int, StepLine]] | None:
    """Each worker's own line per resolution, by rank, where `profile: auto` measured one per worker (the entries'
    per-rank lines, in rank order: ranks 1..n beside a server, 0..n-1 in the data-parallel modes) and
    dual.time_a/time_b do not override the profile, for dual.per_worker and ps.speed_weighted; None otherwise
    (every worker then starts from the plan's line, or an even split). With dual.per_worker every resolution's
    plan is made here once, so an impossible one stops the start-up (PlanError names the worker)."""
    d = config.dual
    if not (d.per_worker or config.ps.speed_weighted):
        return None
    first = 0 if config.ps.mode in PEER_MODES else 1
    lines: dict[int, dict[int, StepLine]] = {}
    for i, r in enumerate(plans):
        own = measured[i].per_rank if measured and d.time_a is None and d.time_b is None else ()
        if len(own) == d.workers:
            lines[r] = {w: StepLine(line.a, line.b) for w, line in enumerate(own, start=first)}
    if d.per_worker:
        plans_per_worker(plans, lines)
    return lines or None


def stored_entries(config: Config, resolutions: list[int], stored: Profile | None) -> list[ProfileEntry | None]:
    """The stored profile's entry per resolution (this torch version's where it has several), or no entries."""
    import torch

    if stored is None:
        return [None] * len(resolutions)
    return [lookup(stored, config.model.name, r, config.train.precision, config.dual.profile_device, torch.__version__)
            for r in resolutions]


def _auto_profile(config: Config, world: World, device: torch.device, data: DataInfo, gpu_sharing: int,
                  resolutions: list[int], top: int) -> list[ProfileEntry]:
    """`profile: auto`: this worker's device at `resolutions` (the model's stem is chosen for the run's top
    resolution `top`, as in training)."""
    from hdbl_mpi.models import build_model
    from hdbl_mpi.profiling.measure import profile_device
    from hdbl_mpi.profiling.memory import parse_bytes
    from hdbl_mpi.profiling.trained import training_settings

    d, m, t = config.dual, config.model, config.train
    budget = parse_bytes(d.memory_budget) if d.memory_budget else None
    if device.type == "cpu" and budget is None:
        budget = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // world.local_size
    settings = training_settings(t, steps=d.profile_steps, warmup=1, memory_budget=budget,
                                 device_share=gpu_sharing,
                                 max_batch=min(d.profile_max_batch, _scalar(d.batch_large) or 1 << 30))
    return profile_device(
        lambda _: build_model(m.name, data.num_classes, data.channels, top, m.stem, m.dropout, m.width, m.options),
        m.name, data.num_classes, data.channels, resolutions, device, settings)


def _scalar(value: Any) -> Any:
    """dual.batch_large as one number where it is one (a per-resolution list caps nothing here)."""
    return None if isinstance(value, list) else value
