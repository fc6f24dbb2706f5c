"""The set-up every training mode shares, on every rank, before the first commit or step.

1. Before torch loads, rank 0 reads the config (or the run it resumes) and broadcasts it, so the files need to
   exist on one host only and a bad config ends the job on every rank within seconds (:func:`shared_config`).
2. :func:`set_up`: every rank makes its world, takes its device, opens its data, then all agree; the step-time
   model is measured or read, the plans and the model are made, rank 0 prepares the run directory (and loads
   the checkpoint when resuming), all agree again, and everyone starts from rank 0's weights.

Set-up errors are gathered with one allgather (:func:`hdbl_mpi.comm.agree.agree`), so every rank learns that the
job cannot start and exits with code 2: no rank is left waiting in a collective.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hdbl_mpi.comm.agree import agree
from hdbl_mpi.config import config_from_dict, dump_config, load_run_config
from hdbl_mpi.errors import AlreadyFinished, ConfigError, HdblError, SetupError
from hdbl_mpi.run import rundir
from hdbl_mpi.run.records import RunFacts
from hdbl_mpi.schema import Config, has_server

if TYPE_CHECKING:
    import torch
    from mpi4py import MPI
    from torch import nn

    from hdbl_mpi.comm.layout import Layout
    from hdbl_mpi.comm.wire import FlatState
    from hdbl_mpi.comm.world import World
    from hdbl_mpi.data.sources import BatchSource, DataInfo
    from hdbl_mpi.profiling.entry import ProfileEntry
    from hdbl_mpi.profiling.store import Profile
    from hdbl_mpi.rules.plan import Plan
    from hdbl_mpi.rules.schedule import Schedule
    from hdbl_mpi.run.rankstate import RankState
    from hdbl_mpi.throughput import CompileWarmup


@dataclass
class SharedConfig:
    config: Config
    run_dir: str
    checkpoint: str | None  # the checkpoint to resume from
    profile: Profile | None  # the stored profile the run uses (a file, or a resumed auto run's own)
    t_start: float


def read_config(config_path: str | None, overrides: list[str], resume: str | None,
                run_dir: str | None) -> tuple[dict, str, Path | None, Profile | None]:
    """Rank 0 only: the config tree, the run directory, the checkpoint to resume from (if any) and the stored
    profile the run uses (if any): a resumed `profile: auto` run reuses its own profile, so its plan stays put."""
    if resume == "auto":
        resume, run_dir = _resume_auto(config_path, overrides, run_dir)
    config = load_run_config(config_path, overrides, resume)
    checkpoint = None
    if resume:
        chosen, checkpoint = resume, Path(resume) / rundir.CHECKPOINT
    else:
        chosen = run_dir or config.run.dir or str(rundir.default_run_dir())
        config.run.dir = chosen
    profile = None
    source = config.dual.profile
    if source == "auto" and resume and (Path(chosen) / rundir.PROFILE).is_file():
        source = str(Path(chosen) / rundir.PROFILE)
    if source not in (None, "auto"):
        from hdbl_mpi.profiling.store import load_profile

        profile = load_profile(source)
    return config.to_dict(), chosen, checkpoint, profile


def _resume_auto(config_path: str | None, overrides: list[str], run_dir: str | None) -> tuple[str | None, str]:
    """`--resume auto`: continue the run directory if it holds a checkpoint, else start a new run there (what a
    requeued batch job runs); a run that already finished is nothing to do."""
    chosen = run_dir or load_run_config(config_path, overrides, None).run.dir
    if not chosen:
        raise ConfigError("--resume auto needs the run directory: pass --run-dir DIR (or set run.dir in the config).")
    if rundir.finished(Path(chosen)):
        raise AlreadyFinished(f"{chosen} already finished (its summary.json exists); nothing to resume.")
    if (Path(chosen) / rundir.CHECKPOINT).is_file():
        return chosen, chosen
    return None, chosen


def shared_config(comm: MPI.Intracomm, config_path: str | None, overrides: list[str], resume: str | None,
                  run_dir: str | None) -> SharedConfig:
    """Rank 0 reads, every rank receives; any error is raised as the same SetupError on every rank."""
    t_start = time.perf_counter()
    payload: tuple = (None, None, None, None, None)
    if comm.rank == 0:
        try:
            tree, chosen_dir, checkpoint, stored_profile = read_config(config_path, overrides, resume, run_dir)
            payload = (None, tree, chosen_dir, str(checkpoint) if checkpoint else None, stored_profile)
        except HdblError as err:
            payload = ((str(err), err.exit_code), None, None, None, None)
    error, tree, chosen_dir, checkpoint, stored_profile = comm.bcast(payload, root=0)
    if error:
        failure = SetupError(error[0])
        failure.exit_code = error[1]
        raise failure
    config = config_from_dict(tree)  # the tree is identical on every rank, and so is any error
    return SharedConfig(config, chosen_dir, checkpoint, stored_profile, t_start)


@dataclass(frozen=True)
class RankInfo:
    """What each rank found at set-up, agreed by all (and kept in summary.json)."""

    train_size: int
    native_resolution: int | None
    device: str  # host:device
    threads: int
    decoder: str  # in-memory, dali-cpu, dali-gpu, torchvision
    skipped: tuple[str, ...]  # damaged files left out
    local_rank_from: str  # the launcher variable, or the MPI shared-memory split
    gpu_sharing: int = 1  # ranks of its host on its GPU, itself included (B_max is planned for its share)


@dataclass
class RunSetup:
    """Everything a trainer starts from; the same shape for the parameter server and the data-parallel modes."""

    config: Config
    world: World
    device: torch.device
    data: DataInfo
    train_source: BatchSource | None  # workers
    test_source: BatchSource | None  # the evaluating rank (the server; rank 0 of a data-parallel run)
    ranks: list[RankInfo]
    dataset_size: int
    schedule: Schedule
    plans: dict[int, Plan]
    model: nn.Module
    flat: FlatState
    layout: Layout | None  # parameter server: who owns which slice of the vector (one part with one server)
    run_dir: Path
    restored: dict | None  # rank 0, resuming: the checkpoint's state (the weights are in `flat` already)
    t_start: float
    model_notes: list[str]  # rank 0: how dropout reaches the model, where its initial weights came from
    rank_state: RankState | None = None  # resuming: this rank's own state from the checkpoint (run/rankstate.py)
    warm_up: CompileWarmup | None = None  # train.compile: compiles each new input shape before it is timed

    @property
    def top(self) -> int:
        """The top resolution: the model's stem is chosen for it and the final evaluation happens there."""
        return self.schedule.resolutions[-1]


@dataclass
class _Local:
    world: World
    device: torch.device
    data: DataInfo
    train_source: BatchSource | None
    test_source: BatchSource | None
    info: RankInfo


def _local(config: Config, resume: bool) -> _Local:
    """This rank's part: world, threads, device, seed and data (a download by one rank per host)."""
    import socket

    import torch
    from mpi4py import MPI

    from hdbl_mpi.comm.placement import place
    from hdbl_mpi.comm.world import make_peer_world, make_world, threads_per_rank
    from hdbl_mpi.data.sources import download_once, open_source

    comm = MPI.COMM_WORLD
    world = make_world(config.dual.workers, config.dual.small, comm, config.ps.servers) if has_server(config) \
        else make_peer_world(config.dual.workers, comm)
    torch.set_num_threads(threads_per_rank(world.local_size, config.train.threads))
    torch.manual_seed(config.train.seed)
    placement = place(world, config)
    device = placement.device
    torch.backends.cudnn.benchmark = config.train.cudnn_benchmark  # a CUDA setting; see hdbl_mpi/throughput.py
    if world.is_worker:  # the ranks that train (amp needs their CUDA device); every rank exits 2 with the message
        from hdbl_mpi.precision import check_precision

        check_precision(config.train.precision, device)
    seed = config.train.seed * 1_000_003 + comm.rank * 7919 + (1 if resume else 0) * 104_729
    download_once(config, world.local_rank == 0, world.local_comm)
    data, source = open_source(config, train=world.is_worker, device=device, seed=seed)
    test = source if not world.is_worker else None
    if world.is_worker and world.rank == 0:  # data-parallel: rank 0 evaluates
        test = open_source(config, train=False, device=device, seed=seed)[1]
    info = RankInfo(data.train_size, data.native_resolution, f"{socket.gethostname()}:{device}",
                    torch.get_num_threads(), data.decoder, tuple(data.skipped), placement.local_rank_from,
                    placement.sharing)
    return _Local(world, device, data, source if world.is_worker else None, test, info)


def _agree_on_data(comm: MPI.Intracomm, config: Config, resume: bool) -> tuple[_Local, list[RankInfo], int]:
    failure: BaseException | None = None
    local = None
    try:
        local = _local(config, resume)
    except Exception as err:  # reported on every rank by agree
        failure = err
    ranks = agree(comm, failure, None if local is None else local.info)
    assert local is not None
    workers = ranks[1:config.dual.workers + 1] if has_server(config) else ranks  # the server opens the test split
    sizes = sorted({r.train_size for r in workers})
    if len(sizes) != 1:
        raise SetupError(f"the workers see training sets of different sizes {sizes}; point data.dir at the same "
                         "files on every host.")
    return local, ranks, sizes[0]


def set_up(shared: SharedConfig, resume: bool) -> RunSetup:
    """Set up this rank for the run of `shared`, agreeing with every other rank at each step that can fail."""
    from mpi4py import MPI

    from hdbl_mpi.rules.schedule import from_config as schedule_from_config

    comm, config = MPI.COMM_WORLD, shared.config
    local, ranks, dataset_size = _agree_on_data(comm, config, resume)
    try:
        schedule = schedule_from_config(config, ranks[0].native_resolution)
    except HdblError as err:  # identical on every rank
        raise SetupError(str(err)) from None
    measured = _measured_profile(comm, config, local, schedule) if shared.profile is None else None
    failure: BaseException | None = None
    built, restored = None, None
    states: dict[int, RankState] = {}
    try:
        entries: list[ProfileEntry | None] = list(measured) if measured else _stored_entries(config, schedule,
                                                                                            shared.profile)
        built = _build(config, local, schedule, dataset_size, entries, comm.rank == 0 and not shared.checkpoint)
        if comm.rank == 0:
            restored, states = _prepare_run_dir(shared, schedule, built, measured or [], comm.size)
    except Exception as err:
        failure = err
    agree(comm, failure, None)
    assert built is not None
    flat = built.flat
    if comm.rank == 0:
        for line in ([profile_spread(config, dataset_size, measured)] if measured else []) + built.notes:
            print(f"hdbl train: {line}", flush=True)
    comm.Bcast(flat.to_host(), root=0)  # everyone starts from rank 0's weights (the checkpoint's when resuming)
    flat.from_host()
    from hdbl_mpi.run.rankstate import RankState

    mine = comm.scatter([states[r].to_bytes() if r in states else None for r in range(comm.size)]
                        if comm.rank == 0 else None, root=0)
    return RunSetup(config, local.world, local.device, local.data, local.train_source, local.test_source, ranks,
                    dataset_size, schedule, built.plans, built.model, flat, built.layout, Path(shared.run_dir),
                    restored, shared.t_start, built.notes, RankState.from_bytes(mine) if mine else None,
                    built.warm_up)


def _measured_profile(comm: MPI.Intracomm, config: Config, local: _Local,
                      schedule: Schedule) -> list[ProfileEntry] | None:
    """`profile: auto`: the step-time model per resolution, measured now by every worker at once (so the timings
    include the contention of the real run on shared hosts) and averaged; None without `profile: auto`."""
    from hdbl_mpi.profiling.store import average_ranks

    if config.dual.profile != "auto":
        return None
    mine, failure = None, None
    if local.world.is_worker:
        try:
            mine = _auto_profile(config, local, schedule.resolutions)
        except Exception as err:
            failure = err
    return average_ranks([e for e in agree(comm, failure, mine) if e is not None])


def profile_spread(config: Config, dataset_size: int, entries: list[ProfileEntry]) -> str:
    """What `profile: auto` measured, and how much the workers disagreed: the plan's B_S from the average, and
    the B_S each worker's own a and b would have given (a wide range means a noisy plan)."""
    from hdbl_mpi.errors import PlanError
    from hdbl_mpi.rules.plan import make_plan

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
    return f"profile: auto ({entries[0].ranks} workers, averaged): " + "; ".join(parts)


def _stored_entries(config: Config, schedule: Schedule, stored: Profile | None) -> list[ProfileEntry | None]:
    """The stored profile's entry per resolution (this torch version's where it has several), or no entries."""
    import torch

    from hdbl_mpi.profiling.store import lookup

    if stored is None:
        return [None] * len(schedule.resolutions)
    return [lookup(stored, config.model.name, r, config.train.precision, config.dual.profile_device, torch.__version__)
            for r in schedule.resolutions]


def _auto_profile(config: Config, local: _Local, resolutions: list[int]) -> list[ProfileEntry]:
    """`profile: auto`: this worker's device at every resolution of the run (the model's stem is chosen for
    the top resolution, as in training)."""
    import os

    from hdbl_mpi.models import build_model
    from hdbl_mpi.profiling.measure import profile_device
    from hdbl_mpi.profiling.memory import parse_bytes
    from hdbl_mpi.profiling.trained import training_settings

    d, m, t, data = config.dual, config.model, config.train, local.data
    budget = parse_bytes(d.memory_budget) if d.memory_budget else None
    if local.device.type == "cpu" and budget is None:
        budget = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // local.world.local_size
    settings = training_settings(t, steps=d.profile_steps, warmup=1, memory_budget=budget,
                                 device_share=local.info.gpu_sharing,
                                 max_batch=min(d.profile_max_batch, _scalar(d.batch_large) or 1 << 30))
    top = resolutions[-1]
    return profile_device(
        lambda _: build_model(m.name, data.num_classes, data.channels, top, m.stem, m.dropout, m.width, m.options),
        m.name, data.num_classes, data.channels, resolutions, local.device, settings)


def _scalar(value: Any) -> Any:
    """dual.batch_large as one number where it is one (a per-resolution list caps nothing here)."""
    return None if isinstance(value, list) else value


@dataclass
class _Built:
    plans: dict[int, Plan]
    model: nn.Module
    flat: FlatState
    layout: Layout | None
    notes: list[str]  # how dropout reaches the model, where its initial weights came from
    warm_up: CompileWarmup | None  # train.compile on a training rank


def _build(config: Config, local: _Local, schedule: Schedule, dataset_size: int, entries: list[ProfileEntry | None],
           initial_weights: bool) -> _Built:
    """The plan at every resolution and the model (on this rank's device, as one flat vector), with
    train.init_from's weights when `initial_weights` (rank 0 of a new run: the others receive them)."""
    from hdbl_mpi.models import build_model, model_notes
    from hdbl_mpi.rules.plan import plan_for_config

    resolutions = schedule.resolutions
    plans = {r: plan_for_config(config, dataset_size, entries[i], i, len(resolutions))
             for i, r in enumerate(resolutions)}
    m, data = config.model, local.data
    model = build_model(m.name, data.num_classes, data.channels, resolutions[-1], m.stem, m.dropout, m.width,
                        m.options)
    notes = model_notes(model)
    if initial_weights and config.train.init_from:
        from hdbl_mpi.models.init import load_initial_weights

        notes.append(load_initial_weights(model, config.train.init_from, config.train.init_skip).line())
    model = model.to(local.device)
    flat, warm_up = _trained_form(config, model, local)
    layout = None
    if has_server(config):
        from hdbl_mpi.comm.layout import Layout

        # refuses a model too small to shard
        layout = Layout.make(flat.numel, config.dual.workers, config.ps.servers, flat.params_numel)
    return _Built(plans, model, flat, layout, notes, warm_up)


def _trained_form(config: Config, model: nn.Module, local: _Local) -> tuple[FlatState, CompileWarmup | None]:
    """The model as one flat vector, in the memory format and compiled form it trains in: train.channels_last
    and train.compile apply to the ranks that train (the server only merges and evaluates)."""
    from hdbl_mpi.comm.wire import FlatState
    from hdbl_mpi.throughput import CompileWarmup, compile_model, use_channels_last

    trains = local.world.is_worker
    channels_last = trains and config.train.channels_last and use_channels_last(model)
    flat = FlatState(model, channels_last)
    if not (trains and config.train.compile):
        return flat, None
    compile_model(model)
    return flat, CompileWarmup(model, local.data.channels)


def _prepare_run_dir(shared: SharedConfig, schedule: Schedule, built: _Built, measured: list[ProfileEntry],
                     size: int) -> tuple[dict | None, dict[int, RankState]]:
    """Rank 0: create the run directory, load the checkpoint and the training ranks' states when resuming
    (refusing a finished run), write the resolved config, the plan and the profile measured at start-up."""
    from hdbl_mpi.profiling.store import save_profile
    from hdbl_mpi.rules.plan import plan_summary

    config, run_path = shared.config, Path(shared.run_dir)
    plans, flat = built.plans, built.flat
    run_path.mkdir(parents=True, exist_ok=True)
    if measured:
        save_profile(run_path / rundir.PROFILE, measured)
    restored, states = None, {}
    if shared.checkpoint:
        restored = rundir.restore_checkpoint(Path(shared.checkpoint), flat)
        restored["restarts"] = [*restored.get("restarts", []), _restart(restored, run_path, schedule, config)]
        states = _rank_states(config, run_path, restored, size)
    rundir.atomic_write_text(run_path / rundir.CONFIG, dump_config(config))
    resolutions = sorted(plans)
    rundir.write_json(run_path / rundir.PLAN, plan_summary([plans[r] for r in resolutions], resolutions))
    return restored, states


def _rank_states(config: Config, run_path: Path, restored: dict, size: int) -> dict[int, RankState]:
    """The training ranks' states the checkpoint names (none for a checkpoint written before they existed)."""
    from hdbl_mpi.run.rankstate import load_rank_states

    if has_server(config):  # the workers, ranks 1..n; the point is the merged commit
        ranks, at = list(range(1, config.dual.workers + 1)), int(restored.get("merged", 0))
    else:  # every rank trains; the point is the epoch
        ranks, at = list(range(size)), int(restored.get("epoch", 0))
    states = load_rank_states(run_path, restored.get("rank_states"), ranks, at)
    missing = [r for r in ranks if r not in states]
    restored["restarts"][-1]["rank_states"] = len(states)
    if missing:
        print(f"hdbl train: resuming without the own state of rank(s) {missing} (an older checkpoint, or lost "
              "workers): they start with fresh momentum and reseeded random numbers", flush=True)
    return states


def _restart(state: dict, run_path: Path, schedule: Schedule, config: Config) -> dict:
    """The restart record of a resumed run; a run that already ended is refused, saying what to do."""
    from hdbl_mpi.run.book import completed_epochs

    done = completed_epochs(state, config.dual.workers * config.dual.commits_per_epoch)
    if state.get("early_stopped_at") is not None:
        raise HdblError(f"{run_path} stopped early after epoch {state['early_stopped_at']} "
                        "(train.early_stop_patience); there is nothing to resume.")
    if done >= schedule.epochs:
        raise HdblError(f"{run_path} already finished its {done} epochs; to train longer, resume with "
                        f"--set train.epochs=N (N > {schedule.epochs}).")
    record = {"epoch": done, "time": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    if os.environ.get("SLURM_JOB_ID"):  # a requeued batch job (launchers/slurm/hdbl.sbatch) says which start it is
        record["slurm_job"] = os.environ["SLURM_JOB_ID"]
        record["slurm_restart_count"] = int(os.environ.get("SLURM_RESTART_COUNT") or 0)
    if "merged" in state:
        record["at_commit"] = state["merged"]
    return record


def run_facts(setup: RunSetup) -> RunFacts:
    """The part of summary.json every mode shares: what ran, on what, where."""
    import platform
    import socket
    from dataclasses import asdict

    import mpi4py
    import numpy as np
    import torch
    from mpi4py import MPI

    from hdbl_mpi import __version__
    from hdbl_mpi.comm.cuda_aware import cuda_aware_mpi
    from hdbl_mpi.rules.plan import plan_summary
    from hdbl_mpi.throughput import throughput_of

    resolutions = sorted(setup.plans)
    data, ranks = setup.data, setup.ranks
    versions = {"hdbl_mpi": __version__, "python": platform.python_version(), "torch": torch.__version__,
                "numpy": np.__version__, "mpi4py": mpi4py.__version__,
                "mpi_library": MPI.Get_library_version().splitlines()[0].strip(" \x00"),
                "mpi_standard": "{}.{}".format(*MPI.Get_version())}
    return RunFacts(
        world_size=setup.world.size, resolutions=resolutions, schedule=[asdict(s) for s in setup.schedule.stages],
        dataset={"name": data.name, "train_size": setup.dataset_size, "test_size": data.test_size,
                 "source": data.source, "classes": data.num_classes},
        decoding={str(rank): info.decoder for rank, info in enumerate(ranks)},
        skipped_files=sorted({f for info in ranks for f in info.skipped}),
        model={"name": setup.config.model.name, "parameters_and_buffers": setup.flat.numel,
               "bytes": setup.flat.nbytes, "notes": setup.model_notes, "precision": setup.config.train.precision,
               "throughput": throughput_of(setup.config.train, ranks, setup.flat.shapes).to_dict()},
        plan=setup.plans[resolutions[-1]].to_dict(),
        plans=plan_summary([setup.plans[r] for r in resolutions], resolutions),
        devices={str(rank): {"device": info.device, "threads": info.threads, "local_rank_from": info.local_rank_from,
                             "gpu_sharing": info.gpu_sharing} for rank, info in enumerate(ranks)},
        host=socket.gethostname(), versions=versions,
        finished=datetime.now(timezone.utc).isoformat(timespec="seconds"), cuda_aware_mpi=cuda_aware_mpi().to_dict())
