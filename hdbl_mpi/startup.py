"""The set-up every training mode shares, on every rank, before the first commit or step: a short orchestrator
of named steps that live where their concern does (the run's config: run_config.py; agreement and placement:
comm/; the start-up profile: profiling/auto.py; the run directory: run/prepare.py; summary facts: run/facts.py).

1. Before torch loads, rank 0 reads the config (or the run it resumes) and broadcasts it, so the files need to
   exist on one host only and a bad config ends the job on every rank within seconds (:func:`shared_config`).
2. :func:`set_up`: every rank makes its world, takes its device, opens its data, then all agree; the step-time
   model is measured or read, the plans and the model are made, rank 0 prepares the run directory (and loads
   the checkpoint when resuming), all agree again, and everyone starts from rank 0's weights.

Set-up errors are gathered with one allgather (:func:`hdbl_mpi.comm.agree.agree`), so every rank learns that the
job cannot start and exits with code 2: no rank is left waiting in a collective.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from hdbl_mpi.comm.agree import agree
from hdbl_mpi.config import config_from_dict, dump_config
from hdbl_mpi.errors import HdblError, SetupError
from hdbl_mpi.profiling.auto import measured_profile, profile_spread, stored_entries, worker_lines
from hdbl_mpi.rules.backends import PEER_MODES
from hdbl_mpi.run import rundir
from hdbl_mpi.run_config import ChosenRun, read_config
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
    from hdbl_mpi.rules.commit_interval import Interval
    from hdbl_mpi.rules.plan import Plan
    from hdbl_mpi.rules.schedule import Schedule
    from hdbl_mpi.rules.worker_plan import StepLine
    from hdbl_mpi.run.prepare import Prepared
    from hdbl_mpi.run.rankstate import RankState
    from hdbl_mpi.throughput import CompileWarmup


@dataclass
class SharedConfig:
    config: Config
    run_dir: str
    checkpoint: str | None  # the checkpoint to resume from
    profile: Profile | None  # the stored profile the run uses (a file, or a resumed auto run's own)
    t_start: float
    reprofile: bool = False  # --reprofile: measure the start-up profile even where the store has it


def shared_config(comm: MPI.Intracomm, config_path: str | None, overrides: list[str], resume: str | None,
                  run_dir: str | None, reprofile: bool = False) -> SharedConfig:
    """Rank 0 reads, every rank receives; any error is raised as the same SetupError on every rank."""
    t_start = time.perf_counter()
    chosen: ChosenRun | HdblError | None = None
    if comm.rank == 0:
        try:
            chosen = read_config(config_path, overrides, resume, run_dir)
        except HdblError as err:
            chosen = err
    chosen = comm.bcast(chosen, root=0)
    if isinstance(chosen, HdblError):
        failure = SetupError(str(chosen))
        failure.exit_code = chosen.exit_code
        raise failure
    assert chosen is not None
    config = config_from_dict(chosen.tree)  # the tree is identical on every rank, and so is any error
    return SharedConfig(config, chosen.run_dir, chosen.checkpoint, chosen.profile, t_start, reprofile)


@dataclass(frozen=True)
class Startup:
    """summary.json's `startup`: the seconds from reading the config to the first step, and the start-up
    profile's origin (`dual.profile: auto`: reused from the store or measured, and how long that took)."""

    seconds: float
    profile: dict | None
    commit_interval: dict | None = None  # dual.commit_interval: the k chosen and the figures it came from

    def to_dict(self) -> dict:
        return {"seconds": round(self.seconds, 3), "profile": self.profile, "commit_interval": self.commit_interval}


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
    worker_lines: dict[int, dict[int, StepLine]] | None = None  # dual.per_worker: resolution -> rank -> own line
    startup: Startup | None = None  # how long the set-up took, and where the start-up profile came from
    resumed: bool = False  # this start continues a run from its checkpoint (every rank knows it)

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
    from hdbl_mpi.comm.world import SPARE, make_peer_world, make_world, threads_per_rank
    from hdbl_mpi.data.sources import download_once, open_source

    comm = MPI.COMM_WORLD
    d, ps = config.dual, config.ps
    world = make_world(d.workers, d.small, comm, ps.servers, ps.spares) if has_server(config) \
        else make_peer_world(d.workers, comm)
    # An idle spare (ps.spares) takes no core: the cores go to the ranks at work, and a spare that takes over
    # a lost worker's role gets that worker's share.
    at_work = sum(world.local_comm.allgather(world.role != SPARE))
    torch.set_num_threads(threads_per_rank(at_work, config.train.threads))
    torch.manual_seed(config.train.seed)
    placement = place(world, config)
    device = placement.device
    torch.backends.cudnn.benchmark = config.train.cudnn_benchmark  # a CUDA setting; see hdbl_mpi/throughput.py
    if world.trains:  # the ranks that train (amp needs their CUDA device); every rank exits 2 with the message
        from hdbl_mpi.precision import check_precision

        check_precision(config.train.precision, device)
    seed = config.train.seed * 1_000_003 + comm.rank * 7919 + (1 if resume else 0) * 104_729
    download_once(config, world.local_rank == 0, world.local_comm)
    data, source = open_source(config, train=world.trains, device=device, seed=seed)
    test = source if not world.trains else None
    if world.is_worker and world.rank == 0:  # data-parallel: rank 0 evaluates
        test = open_source(config, train=False, device=device, seed=seed)[1]
    info = RankInfo(data.train_size, data.native_resolution, f"{socket.gethostname()}:{device}",
                    torch.get_num_threads(), data.decoder, tuple(data.skipped), placement.local_rank_from,
                    placement.sharing)
    return _Local(world, device, data, source if world.trains else None, test, info)


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

    from hdbl_mpi.rules.epoch_lengths import commits_by_resolution
    from hdbl_mpi.rules.schedule import from_config as schedule_from_config
    from hdbl_mpi.run.prepare import Prepared
    from hdbl_mpi.run.rankstate import RankState

    comm, config = MPI.COMM_WORLD, shared.config
    local, ranks, dataset_size = _agree_on_data(comm, config, resume)
    try:
        schedule = schedule_from_config(config, ranks[0].native_resolution)
        commits_by_resolution(config.dual.commits_per_epoch, schedule.resolutions)  # one k, or one per resolution
    except HdblError as err:  # identical on every rank
        raise SetupError(str(err)) from None
    first = 0 if config.ps.mode in PEER_MODES else 1
    workers = [(i.device, i.threads, i.gpu_sharing) for i in ranks[first:first + config.dual.workers]]
    auto = measured_profile(comm, config, local.world, local.device, local.data, workers, local.info.gpu_sharing,
                            schedule.resolutions, shared.reprofile) if shared.profile is None else None
    measured, source = auto if auto else (None, None)
    failure: BaseException | None = None
    built, prepared = None, Prepared()
    try:
        entries: list[ProfileEntry | None] = list(measured) if measured else stored_entries(
            config, schedule.resolutions, shared.profile)
        built = _build(config, local, schedule, dataset_size, entries, comm.rank == 0 and not shared.checkpoint,
                       measured)
    except Exception as err:
        failure = err
    agree(comm, failure, None)
    assert built is not None
    config, interval = _commit_interval(comm, config, built, shared.checkpoint is not None)
    try:
        if comm.rank == 0:
            prepared = _prepare(shared, config, schedule, built, measured, comm.size)
    except Exception as err:
        failure = err
    agree(comm, failure, None)
    if comm.rank == 0:
        for line in ([profile_spread(config, dataset_size, measured, source)] if measured and source else []) + \
                built.notes:
            print(f"hdbl train: {line}", flush=True)
    comm.Bcast(built.flat.to_host(), root=0)  # everyone starts from rank 0's weights (the checkpoint's if resuming)
    built.flat.from_host()
    mine = comm.scatter([prepared.states[r].to_bytes() if r in prepared.states else None for r in range(comm.size)]
                        if comm.rank == 0 else None, root=0)
    return RunSetup(config, local.world, local.device, local.data, local.train_source, local.test_source, ranks,
                    dataset_size, schedule, built.plans, built.model, built.flat, built.layout, Path(shared.run_dir),
                    prepared.restored, shared.t_start, built.notes, RankState.from_bytes(mine) if mine else None,
                    built.warm_up, built.worker_lines,
                    Startup(time.perf_counter() - shared.t_start, source.to_dict() if source else None,
                            interval.to_dict() if interval else None), shared.checkpoint is not None)


def _commit_interval(comm: MPI.Intracomm, config: Config, built: _Built,
                     resumed: bool) -> tuple[Config, Interval | None]:
    """dual.commit_interval: k chosen now at each resolution (auto: from the exchange measured between the server
    and worker 1) and written into the config, whose resolved form the run directory keeps, so a resumed run goes
    on with the same k instead of choosing again."""
    asked = config.dual.commit_interval
    if asked is None or resumed or not has_server(config):
        return config, None
    from dataclasses import replace

    from hdbl_mpi.comm.probe import exchange_seconds
    from hdbl_mpi.rules.commit_interval import choose

    exchange = exchange_seconds(comm, built.flat.to_host()) if asked.strip().lower() == "auto" else None
    try:
        interval = choose(asked, built.plans, exchange, config.dual.commit_share)
    except HdblError as err:  # the same figures on every rank, so the same error
        raise SetupError(str(err)) from None
    return replace(config, dual=replace(config.dual, commits_per_epoch=interval.k)), interval


def _prepare(shared: SharedConfig, config: Config, schedule: Schedule, built: _Built,
             measured: list[ProfileEntry] | None, size: int) -> Prepared:
    """Rank 0: the run directory (run/prepare.py), with the profile measured at start-up beside the plan."""
    from hdbl_mpi.profiling.store import save_profile
    from hdbl_mpi.run.prepare import prepare_run_dir

    run_path = Path(shared.run_dir)
    prepared = prepare_run_dir(run_path, config, dump_config(config), schedule, built.plans,
                               built.flat, shared.checkpoint, size)
    if measured:
        save_profile(run_path / rundir.PROFILE, measured)
    return prepared


@dataclass
class _Built:
    plans: dict[int, Plan]
    model: nn.Module
    flat: FlatState
    layout: Layout | None
    notes: list[str]  # how dropout reaches the model, where its initial weights came from
    warm_up: CompileWarmup | None  # train.compile on a training rank
    worker_lines: dict[int, dict[int, StepLine]] | None  # dual.per_worker with per-worker profiles


def _build(config: Config, local: _Local, schedule: Schedule, dataset_size: int, entries: list[ProfileEntry | None],
           initial_weights: bool, measured: list[ProfileEntry] | None) -> _Built:
    """The plan at every resolution and the model (on this rank's device, as one flat vector), with
    train.init_from's weights when `initial_weights` (rank 0 of a new run: the others receive them)."""
    from hdbl_mpi.models import build_model, model_notes
    from hdbl_mpi.rules.plan import plan_for_config

    resolutions = schedule.resolutions
    plans = {r: plan_for_config(config, dataset_size, entries[i], i, len(resolutions))
             for i, r in enumerate(resolutions)}
    lines = worker_lines(config, measured, plans)
    m, data = config.model, local.data
    model = build_model(m.name, data.num_classes, data.channels, resolutions[-1], m.stem, m.dropout, m.width,
                        m.options)
    notes = model_notes(model)
    if initial_weights and config.train.init_from:
        from hdbl_mpi.run.init_weights import load_initial_weights

        notes.append(load_initial_weights(model, config.train.init_from, config.train.init_skip).line())
    model = model.to(local.device)
    flat, warm_up = _trained_form(config, model, local)
    layout = None
    if has_server(config):
        from hdbl_mpi.comm.layout import Layout

        # refuses a model too small to shard
        layout = Layout.make(flat.numel, config.dual.workers, config.ps.servers, flat.params_numel)
    return _Built(plans, model, flat, layout, notes, warm_up, lines)


def _trained_form(config: Config, model: nn.Module, local: _Local) -> tuple[FlatState, CompileWarmup | None]:
    """The model as one flat vector, in the memory format and compiled form it trains in: train.channels_last
    and train.compile apply to the ranks that train (the server only merges and evaluates)."""
    from hdbl_mpi.comm.wire import FlatState
    from hdbl_mpi.throughput import CompileWarmup, compile_model, use_channels_last

    trains = local.world.trains
    channels_last = trains and config.train.channels_last and use_channels_last(model)
    flat = FlatState(model, channels_last)
    if not (trains and config.train.compile):
        return flat, None
    compile_model(model)
    return flat, CompileWarmup(model, local.data.channels)
