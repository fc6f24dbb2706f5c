"""The checks of a loaded configuration (hdbl_mpi/config.py loads it): ranges and consistency that need no data
and no MPI, one section at a time, each error naming the key and what to set instead. What a value may be is
asked of the part that implements it (its choice list: the rules in hdbl_mpi/rules/, the optimizers, the
precisions, the data sets), none of which loads torch or MPI to answer."""

from __future__ import annotations

import math

from hdbl_mpi.datasets import DECODERS
from hdbl_mpi.errors import ConfigError
from hdbl_mpi.precision import PRECISIONS
from hdbl_mpi.rules.policy import KVSTORE_MODES
from hdbl_mpi.schema import Config, DualConfig, LocalConfig, ModelConfig, TrainConfig, has_server, required_ranks


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _one_of(value: str, choices: tuple[str, ...] | list[str], key: str) -> None:
    _check(value in choices, f"{key} is {value!r}; use one of {', '.join(choices)}.")


def validate(c: Config) -> None:
    """Range and consistency checks that need no data and no MPI (the plan is checked separately), one section
    at a time. The choice lists come from the modules that own them, none of which imports torch or MPI."""
    _validate_train(c.train)
    _validate_model(c.model)
    _validate_dual(c.dual)
    _validate_ps(c)
    if c.ps.mode == "localsgd":
        _validate_local(c.local, c.train.epochs)
    _validate_rest(c)


def _validate_train(t: TrainConfig) -> None:
    from hdbl_mpi.optim import LR_SCHEDULES, OPTIMIZERS
    from hdbl_mpi.rules.plan import LR_SCALINGS

    _check(t.epochs >= 1, f"train.epochs is {t.epochs}; it must be >= 1.")
    _check(t.lr > 0, f"train.lr is {t.lr}; it must be > 0.")
    _check(0 <= t.momentum < 1, f"train.momentum is {t.momentum}; it must be in [0, 1).")
    _check(t.weight_decay >= 0, f"train.weight_decay is {t.weight_decay}; it must be >= 0.")
    _check(t.lr_gamma > 0, f"train.lr_gamma is {t.lr_gamma}; it must be > 0.")
    _check(  # milestones at or past train.epochs are allowed (a shortened run simply never reaches them)
        all(m >= 1 for m in t.lr_milestones) and t.lr_milestones == sorted(set(t.lr_milestones)),
        f"train.lr_milestones is {t.lr_milestones}; it must list increasing epochs >= 1.",
    )
    _one_of(t.lr_scaling, LR_SCALINGS, "train.lr_scaling")
    _check(t.threads >= 0, f"train.threads is {t.threads}; use 0 for automatic or a positive count.")
    _check_device(t.device, "train.device")
    _one_of(t.optimizer.lower(), OPTIMIZERS, "train.optimizer")
    _one_of(t.lr_schedule, LR_SCHEDULES, "train.lr_schedule")
    _one_of(t.precision, PRECISIONS, "train.precision")  # amp without CUDA: refused once the device is known
    _check(len(t.betas) == 2 and all(0 <= b < 1 for b in t.betas),
           f"train.betas is {t.betas}; give two numbers in [0, 1), e.g. [0.9, 0.999].")
    _check(t.trust_coefficient > 0, f"train.trust_coefficient is {t.trust_coefficient}; it must be > 0.")
    _check(0 <= t.min_lr <= t.lr, f"train.min_lr is {t.min_lr}; it must be in [0, train.lr].")
    _check(t.warmup_epochs >= 0, f"train.warmup_epochs is {t.warmup_epochs}; it must be >= 0.")
    _check(0 <= t.warmup_start <= 1, f"train.warmup_start is {t.warmup_start}; it must be in [0, 1].")
    _check(t.early_stop_patience >= 0,
           f"train.early_stop_patience is {t.early_stop_patience}; use 0 (off) or a number of evaluations.")
    _check(t.early_stop_min_delta >= 0, f"train.early_stop_min_delta is {t.early_stop_min_delta}; it must be >= 0.")


def _check_device(device: str, key: str) -> None:
    index = device[5:] if device.startswith("cuda:") else ""
    _check(device in ("auto", "cpu", "cuda") or (index.isascii() and index.isdigit()),
           f"{key} is {device!r}; use auto, cpu, cuda or cuda:N.")


def _validate_dual(d: DualConfig) -> None:
    from hdbl_mpi.rules.plan import FACTOR_RULES

    _check(d.workers >= 1, f"dual.workers is {d.workers}; at least 1 worker is needed.")
    _check(0 <= d.small <= d.workers, f"dual.small is {d.small}; it must be between 0 and dual.workers={d.workers}.")
    for key in ("batch_large", "time_a", "time_b"):
        _check(getattr(d, key) != [], f"dual.{key} is an empty list; give one value, or one per resolution.")
    _check(d.batch_large is None or min(_as_list(d.batch_large)) >= 1,
           f"dual.batch_large is {d.batch_large}; it must be >= 1.")
    _check(d.batch_large is not None or d.profile is not None,
           "dual.batch_large is not set: give the large batch B_L, or set dual.profile (a profile file or auto) so "
           "that B_L is the profiled B_max.")
    _check(d.profile_steps >= 1, f"dual.profile_steps is {d.profile_steps}; it must be >= 1.")
    _check(d.profile_max_batch >= 1, f"dual.profile_max_batch is {d.profile_max_batch}; it must be >= 1.")
    _check(d.replan_threshold > 1.0, f"dual.replan_threshold is {d.replan_threshold}; it must be > 1 (e.g. 1.05).")
    _check(_as_list(d.commits_per_epoch) != [] and min(_as_list(d.commits_per_epoch)) >= 1,
           f"dual.commits_per_epoch is {d.commits_per_epoch}; it must be >= 1 (one, or one per resolution).")
    _check(0 < d.commit_share < 1, f"dual.commit_share is {d.commit_share}; it must be in (0, 1) (e.g. 0.05).")
    if d.commit_interval is not None:
        from hdbl_mpi.rules.commit_interval import parse

        parse(d.commit_interval)  # the accepted forms, named when it is none of them
    _one_of(d.factor, FACTOR_RULES, "dual.factor")
    if d.small > 0 or d.per_worker:
        _check((d.time_a is not None and d.time_b is not None) or d.profile is not None,
               f"dual.{'small > 0' if d.small else 'per_worker'} needs the step-time model: set dual.profile (a "
               "file from `hdbl profile`, or auto to measure at start-up), or dual.time_a and dual.time_b "
               "(seconds per sample and per step on the workers' device), or set dual.small=0 and "
               "dual.per_worker=false.")


def _validate_ps(c: Config) -> None:
    from hdbl_mpi.rules.backends import BACKENDS, PEER_MODES
    from hdbl_mpi.rules.policy import PS_MODES

    ps = c.ps
    _check(ps.mode in PS_MODES + PEER_MODES,
           f"ps.mode is {ps.mode!r}; use asp, bsp, ssp (parameter server), allreduce or localsgd (no server), "
           f"or a kvstore name: {', '.join(KVSTORE_MODES)}.")
    _one_of(ps.backend, ("auto", *BACKENDS), "ps.backend")
    _check(ps.bucket_mb > 0, f"ps.bucket_mb is {ps.bucket_mb}; it must be > 0 (e.g. 25).")
    if ps.mode in PEER_MODES:
        _check(c.dual.small == 0,
               f"dual.small is {c.dual.small} but ps.mode={ps.mode} has no server to merge two batch sizes; "
               "set dual.small=0 (every worker trains with B_L), or use ps.mode=asp/bsp/ssp.")
        _check(not c.dual.per_worker,
               f"dual.per_worker needs a server to hand out the shares; ps.mode={ps.mode} has none. Set "
               "dual.per_worker=false, or use ps.mode=asp/bsp/ssp.")
        _check(c.dual.commit_interval is None,
               f"dual.commit_interval is set but ps.mode={ps.mode} has no commits; drop it, or use "
               "ps.mode=asp/bsp/ssp.")
        _check(set(_as_list(c.dual.commits_per_epoch)) == {1},
               f"dual.commits_per_epoch is {c.dual.commits_per_epoch} but ps.mode={ps.mode} has no commits (it "
               "synchronises every step, or every local.h steps); set it to 1, or use ps.mode=asp/bsp/ssp.")
    _validate_merge(c)
    _validate_servers(c)
    _check(ps.timeout_s >= 0, f"ps.timeout_s is {ps.timeout_s}; use 0 for automatic or a positive number.")
    _check_device(ps.device, "ps.device")


def _validate_merge(c: Config) -> None:
    """What a push does: the merge rule, the outer step's options, staleness, the speed-weighted split."""
    from hdbl_mpi.rules.merge import MERGE_RULES

    ps = c.ps
    _check(ps.staleness >= 1,
           f"ps.staleness is {ps.staleness}; the SSP bound must be >= 1 (the spread of commit counts between the "
           "fastest and the slowest worker); use ps.mode=bsp for lock-step rounds.")
    _one_of(ps.merge, MERGE_RULES, "ps.merge")
    _check(ps.merge != "delta" or ps.mode in ("asp", "ssp"),
           f"ps.merge=delta needs ps.mode=asp or ssp (got {ps.mode}): a BSP round averages models that all started "
           "from the same W, which is already the delta step with outer_lr 1.")
    _check(ps.outer_lr >= 0, f"ps.outer_lr is {ps.outer_lr}; use 0 (1/dual.workers) or a positive step size.")
    _check(0 <= ps.outer_momentum < 1, f"ps.outer_momentum is {ps.outer_momentum}; it must be in [0, 1).")
    _check(not ps.outer_delayed or (ps.merge == "delta" and ps.outer_momentum > 0),
           f"ps.outer_delayed delays the delta rule's momentum; it needs ps.merge=delta and ps.outer_momentum > 0 "
           f"(got merge {ps.merge}, momentum {ps.outer_momentum}).")
    _check(not ps.speed_weighted or ps.mode == "allreduce",
           f"ps.speed_weighted splits a synchronous step's samples by speed; it needs ps.mode=allreduce (got "
           f"{ps.mode}). The parameter server's counterpart is dual.per_worker.")
    _check(ps.rebalance_steps >= 0, f"ps.rebalance_steps is {ps.rebalance_steps}; use 0 (each epoch) or a step "
           "count.")
    _check(ps.speed_batch_max >= 0, f"ps.speed_batch_max is {ps.speed_batch_max}; use 0 (2 x B_L) or a batch size.")
    _check(ps.staleness_decay >= 0, f"ps.staleness_decay is {ps.staleness_decay}; use 0 (off) or a positive power "
           "(0.5 as in FedAsync).")
    _check(ps.staleness_decay == 0 or ps.mode in ("asp", "ssp"),
           f"ps.staleness_decay needs ps.mode=asp or ssp (got {ps.mode}): a BSP round merges pushes that all "
           "started from the same weights (staleness 0).")


def _validate_servers(c: Config) -> None:
    """Who serves and what happens when a rank is lost: fault tolerance, sharded servers, the detectors."""
    from hdbl_mpi.rules.policy import FAULT_TOLERANCE, PS_MODES

    ps = c.ps
    _one_of(ps.fault_tolerance, FAULT_TOLERANCE, "ps.fault_tolerance")
    _check(ps.fault_tolerance != "ulfm" or ps.mode == "asp",
           f"ps.fault_tolerance=ulfm needs ps.mode=asp (got {ps.mode}): BSP rounds and SSP bounds cannot go on "
           "without a worker. Use abort (and --resume) there.")
    _check(ps.servers >= 1, f"ps.servers is {ps.servers}; it must be >= 1 (1: one server, the default).")
    _check(ps.servers == 1 or ps.mode in PS_MODES,
           f"ps.servers is {ps.servers} but ps.mode={ps.mode} has no server; set ps.servers=1, or use "
           "ps.mode=asp/bsp/ssp.")
    _check(ps.servers == 1 or ps.fault_tolerance == "abort",
           f"ps.servers={ps.servers} with ps.fault_tolerance=ulfm is not supported: a lost shard server would lose "
           "its part of the weights. Use one server with ulfm, or abort (and --resume) with sharded servers.")
    _check(ps.spares >= 0, f"ps.spares is {ps.spares}; use 0 (none) or the number of idle worker ranks to start.")
    _check(ps.spares == 0 or ps.fault_tolerance == "ulfm",
           f"ps.spares={ps.spares} needs ps.fault_tolerance=ulfm (and ps.mode=asp): only then does the run go on "
           "when a worker dies, so that a spare can take its place. With abort, use hdbl launch --max-restarts.")
    _check(ps.ft_detector_timeout_s > 0, f"ps.ft_detector_timeout_s is {ps.ft_detector_timeout_s}; it must be > 0.")
    _check(ps.max_nonfinite >= 1,
           f"ps.max_nonfinite is {ps.max_nonfinite}; it must be >= 1 (non-finite pushes in a row before stopping).")


def _validate_local(local: LocalConfig, epochs: int) -> None:
    from hdbl_mpi.rules.local_steps import make_local_steps

    make_local_steps(local.strategy, local.h, local.h_min, local.h_max, max(epochs, 1),
                     **local.options)  # raises ConfigError naming the local.* key
    _check(0 <= local.slowmo_beta < 1, f"local.slowmo_beta is {local.slowmo_beta}; it must be in [0, 1).")
    _check(local.slowmo_alpha > 0, f"local.slowmo_alpha is {local.slowmo_alpha}; it must be > 0.")


def _validate_model(m: ModelConfig) -> None:
    """The name's form only: whether torchvision has it, or the factory imports, is known when the model is built
    (at set-up, on every rank, and reported like any set-up error)."""
    if ":" in m.name and not m.name.startswith("torchvision:"):
        module, _, function = m.name.rpartition(":")
        _check(bool(module) and function.isidentifier(),
               f"model.name is {m.name!r}; a factory is named package.module:function, e.g. my_project.nets:build.")
    _check(m.name.strip() != "" and m.name != "torchvision:",
           f"model.name is {m.name!r}; use resnet18, resnet_small, lenet5, mlp, torchvision:<name> or "
           "package.module:function.")


def _validate_rest(c: Config) -> None:
    """debug, eval, run and data."""
    from hdbl_mpi.run.faults import CRASH_MODES

    _one_of(c.debug.crash, CRASH_MODES, "debug.crash")
    _check(c.eval.every >= 0, f"eval.every is {c.eval.every}; use 0 (end only) or a number of epochs.")
    _check(c.eval.batch_size >= 1, f"eval.batch_size is {c.eval.batch_size}; it must be >= 1.")
    _check(c.run.checkpoint_every >= 0, f"run.checkpoint_every is {c.run.checkpoint_every}; it must be >= 0.")
    _check(c.run.checkpoint_minutes >= 0,
           f"run.checkpoint_minutes is {c.run.checkpoint_minutes}; use 0 (off) or a number of minutes, e.g. 30.")
    _one_of(c.data.decoder, DECODERS, "data.decoder")
    _check(c.data.threads >= 0, f"data.threads is {c.data.threads}; use 0 or more decoding threads.")
    _check(c.data.resolution is None or c.data.resolution >= 8,
           f"data.resolution is {c.data.resolution}; use at least 8 px, or leave it unset for the native size.")
    _validate_slow(c)
    _validate_chaos(c)


def _validate_chaos(c: Config) -> None:
    """debug.chaos: workers killed on purpose, which only a run that goes on without them can survive."""
    ch = c.debug.chaos
    _check(ch.kills >= 0, f"debug.chaos.kills is {ch.kills}; use 0 (off) or the number of workers to kill.")
    _check(ch.kills == 0 or c.ps.fault_tolerance == "ulfm",
           f"debug.chaos.kills={ch.kills} needs ps.fault_tolerance=ulfm: with abort the first kill ends the job.")
    _check(0.0 <= ch.start <= ch.end <= 1.0,
           f"debug.chaos.start and end are {ch.start} and {ch.end}: the fractions of the run's commits the kills "
           "fall between, with 0 <= start <= end <= 1 (e.g. 0.15 and 0.75).")


def _validate_slow(c: Config) -> None:
    """debug.slow: ranks that exist and train, factors that slow down, a changing pattern that can happen, and a
    step-time model for the paced mode."""
    s, world = c.debug.slow, required_ranks(c)
    first = 1 if has_server(c) else 0  # with a server, rank 0 merges and trains nothing
    for key, table, least in (("ranks", s.ranks, 1.0), ("delay_s", s.delay_s, 0.0)):
        for rank, value in table.items():
            _check(isinstance(rank, int) and first <= rank < world,
                   f"debug.slow.{key} names rank {rank!r}; the training ranks of this config are {first}..{world - 1}"
                   + (" (rank 0 is the server)." if first else "."))
            _check(isinstance(value, (int, float)) and math.isfinite(value) and value >= least,
                   f"debug.slow.{key}[{rank}] is {value!r}; it must be a number >= {least:g}"
                   + (" (a factor: 2 makes each step take twice its time)." if key == "ranks" else " (seconds)."))
    _check(math.isfinite(s.from_s) and s.from_s >= 0,
           f"debug.slow.from_s is {s.from_s}; give the seconds after the run's start from which debug.slow.ranks "
           "applies (0: from the start).")
    ch = s.changing
    _check(ch.factor >= 1.0, f"debug.slow.changing.factor is {ch.factor}; it must be >= 1 (1: no slowdown).")
    _check(0.0 <= ch.p <= 1.0, f"debug.slow.changing.p is {ch.p}; it must be a probability in [0, 1].")
    _check(ch.period_s >= 0 and (ch.p == 0 or ch.period_s > 0),
           f"debug.slow.changing.period_s is {ch.period_s}; give the seconds between draws (> 0) with p > 0.")
    _check(s.pace >= 0, f"debug.slow.pace is {s.pace}; use 0 (off) or the margin over tau(B), e.g. 1.3.")
    _check(s.pace == 0 or c.dual.profile is not None or (c.dual.time_a is not None and c.dual.time_b is not None),
           "debug.slow.pace pads each step to the step-time model tau(B) = a*B + b: set dual.profile (a file, or "
           "auto) or dual.time_a and dual.time_b.")




def _as_list(value) -> list:
    return value if isinstance(value, list) else [value]
