"""`hdbl profile`: measure tau(B) = a*B + b and B_max per resolution on this device (or, under mpirun, on every
rank's device, averaged), store them in a profile file, print the table and optionally plot it.

The command line is parsed in hdbl_mpi/cli.py into a :class:`ProfileRequest`; everything after that lives here.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from hdbl_mpi.errors import HdblError

if TYPE_CHECKING:
    import torch

    from hdbl_mpi.profiling.entry import ProfileEntry
    from hdbl_mpi.schema import Config


@dataclass(frozen=True)
class ProfileRequest:
    """What `hdbl profile` was asked to measure, and where to put it."""

    device: str = "auto"
    resolutions: list[int] | None = None  # with config: default its schedule's
    config: Config | None = None  # profile the step this config (loaded, with its overrides) trains, on its data
    model: str | None = None  # without config (resnet18 when unset)
    precision: str | None = None
    classes: int | None = None
    channels: int | None = None
    stem: str | None = None
    batches: list[int] | None = None
    steps: int = 20
    warmup: int = 2
    memory_budget: str | None = None
    margin: float = 0.9
    max_batch: int = 4096
    threads: int = 0
    output: str = "profile.json"
    plot: str | None = None


def run_profile(request: ProfileRequest, comm: Any | None) -> int:
    """Profile on this rank (every rank under mpirun: `comm`), then on rank 0 average, save, print, plot."""
    entries, error = _profile_here(request, comm)
    mine = (entries, str(error) if error else None)
    gathered = comm.gather(mine, root=0) if comm else [mine]
    if gathered is None:  # not rank 0
        return 2 if error else 0
    failures = [f"(rank {i}) {msg}" if len(gathered) > 1 else msg for i, (_, msg) in enumerate(gathered) if msg]
    if failures:
        print("hdbl profile: error: " + "\n".join(failures), file=sys.stderr)
        return 2
    from hdbl_mpi.profiling.store import average_ranks, save_profile

    averaged = average_ranks([ranks_entries for ranks_entries, _ in gathered])
    profile = save_profile(request.output, averaged)
    print(format_profile(averaged))
    print(f"profile written to {request.output}")
    if request.plot:
        from hdbl_mpi.report.plots import plot_profile

        plot_profile(replace(profile, entries={str(i): e for i, e in enumerate(averaged)}), request.plot)
        print(f"plot written to {request.plot}")
    return 0


def format_profile(averaged: list[ProfileEntry]) -> str:
    """The profile as a table; with --config also how much of each timed step waited for the input."""
    lines = [f"{'res':>4} {'a (s/sample)':>13} {'b (s/step)':>11} {'R2':>6} {'B_max':>6} {'predicted':>9}  "
             f"memory  device ({averaged[0].ranks} rank(s))"]
    for e in averaged:
        method = e.memory.method if e.memory else "-"
        lines.append(f"{e.resolution:>4} {e.a:>13.4g} {e.b:>11.4g} {e.r2:>6.3f} {e.b_max:>6} "
                     f"{e.b_max_predicted if e.b_max_predicted is not None else '-':>9}  {method:<6}  {e.device}")
    for e in averaged:
        if e.input is not None and e.samples is not None:  # --config: the input pipeline was in every timed step
            shares = ", ".join(f"B={b}: {100 * share:.0f}%" for b, share in zip(e.samples.batch, e.input.share,
                                                                                  strict=True))
            lines.append(f"{e.resolution:>4} input ({e.input.data}, {e.input.decoder}): {shares} of the step")
    return "\n".join(lines)


def _profile_here(request: ProfileRequest, comm: Any | None) -> tuple[list[ProfileEntry], HdblError | None]:
    """This rank's profile entries (its own GPU by local rank, or the CPU), or the error that stopped it."""
    import torch

    from hdbl_mpi.comm.placement import take_device
    from hdbl_mpi.comm.world import threads_per_rank
    from hdbl_mpi.models import build_model
    from hdbl_mpi.profiling.measure import ProfileSettings, profile_device
    from hdbl_mpi.profiling.memory import parse_bytes

    local_rank, local_size, local = 0, 1, None
    if comm is not None:
        from mpi4py import MPI

        local = comm.Split_type(MPI.COMM_TYPE_SHARED, key=comm.rank)
        local_rank, local_size = local.rank, local.size
    try:
        torch.set_num_threads(threads_per_rank(local_size, request.threads))
        placement = take_device(request.device, local, local_rank, "MPI shared-memory split")
        fields: dict[str, Any] = {"steps": request.steps, "warmup": request.warmup, "margin": request.margin,
                  "max_batch": request.max_batch, "batches": request.batches, "device_share": placement.sharing,
                  "memory_budget": parse_bytes(request.memory_budget) if request.memory_budget else None}
        if request.config:
            return _profile_config(request, placement.device, fields), None
        if not request.resolutions:
            raise HdblError("hdbl profile needs --resolutions r1,r2,... (or --config CONFIG: its schedule's).")
        settings = ProfileSettings(request.precision or "fp32", **fields)
        model, classes, channels = request.model or "resnet18", request.classes or 100, request.channels or 3
        return profile_device(lambda r: build_model(model, classes, channels, r, request.stem or "auto"),
                              model, classes, channels, request.resolutions, placement.device, settings), None
    except Exception as err:  # every rank reports; rank 0 prints
        return [], err if isinstance(err, HdblError) else HdblError(f"{type(err).__name__}: {err}")


def _profile_config(request: ProfileRequest, device: torch.device, fields: dict[str, Any]) -> list[ProfileEntry]:
    """`hdbl profile --config`: the model, classes, channels, precision and training options are the config's;
    flags that would say otherwise are refused rather than silently ignored."""
    from hdbl_mpi.profiling.trained import profile_config

    given = [flag for flag, value in (("--precision", request.precision), ("--model", request.model),
                                      ("--classes", request.classes), ("--channels", request.channels),
                                      ("--stem", request.stem)) if value is not None]
    if given:
        raise HdblError(f"hdbl profile --config takes the model and training options from the config; drop "
                        f"{', '.join(given)} (change them with --set, e.g. --set train.precision=bf16).")
    assert request.config is not None
    return profile_config(request.config, device, request.resolutions, **fields)
