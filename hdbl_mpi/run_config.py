"""A run's configuration: the YAML file with `--set` overrides, or, resuming, the resolved config its run
directory keeps; which run directory and checkpoint it uses (`--resume DIR`, `--resume auto`); the stored
profile it plans from; and `hdbl train`'s arguments, which the trainer and `hdbl launch` read alike.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from hdbl_mpi.config import load_config
from hdbl_mpi.errors import AlreadyFinished, ConfigError
from hdbl_mpi.profiling.store import Profile, load_profile
from hdbl_mpi.run import lock, rundir
from hdbl_mpi.schema import Config


@dataclass(frozen=True)
class ChosenRun:
    """What rank 0 read for a run, as it is broadcast: the resolved config tree, the run directory, the checkpoint
    to resume from and the stored profile the run plans from (if any)."""

    tree: dict
    run_dir: str
    checkpoint: str | None
    profile: Profile | None


ADVICE_NEW = "Wait for it to end (or stop it), or choose another --run-dir."
ADVICE_RESUME = ("It is still running: resume it once it has ended (SIGUSR1 to its mpirun stops it at a "
                 "checkpoint).")


def read_config(config_path: str | None, overrides: list[str], resume: str | None, run_dir: str | None) -> ChosenRun:
    """Rank 0 only: the run's config, directory, checkpoint and stored profile. A resumed `profile: auto` run
    reuses its own profile, so its plan stays put. The run directory is held for this process from here on
    (run/lock.py): a second run into it is refused while this one lives."""
    if resume == "auto":
        resume, run_dir = _resume_auto(config_path, overrides, run_dir)
    config = load_run_config(config_path, overrides, resume)
    checkpoint = None
    if resume:
        chosen, checkpoint = resume, Path(resume) / rundir.CHECKPOINT
    else:
        chosen = run_dir or config.run.dir or str(rundir.default_run_dir())
        config.run.dir = chosen
    lock.hold(Path(chosen), "hdbl train", ADVICE_RESUME if resume else ADVICE_NEW)
    profile = None
    source = config.dual.profile
    if source == "auto" and resume and (Path(chosen) / rundir.PROFILE).is_file():
        source = str(Path(chosen) / rundir.PROFILE)
    if source not in (None, "auto"):
        profile = load_profile(source)
    return ChosenRun(config.to_dict(), chosen, str(checkpoint) if checkpoint else None, profile)


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


def load_run_config(config_path: str | None, overrides: list[str], resume: str | None) -> Config:
    """The config of a run: the YAML file with overrides, or, with `resume`, the resolved config that run
    directory keeps (further overrides apply on top, e.g. more epochs)."""
    if not resume:
        return load_config(config_path, overrides)  # no file: the defaults plus --set overrides
    saved = Path(resume) / rundir.CONFIG
    if not saved.is_file():
        raise ConfigError(f"--resume {resume}: no {rundir.CONFIG} there; pass the run directory of an earlier run.")
    config = load_config(saved, overrides)
    _check_resumable(load_config(saved), config, resume)
    return config


# Keys whose value the checkpoint's state was made for: a resume that changes one would load state it cannot use
# (another optimizer's buffers, another mode's counters) and fail at the first step, or train something else.
RESUME_FIXED = ("train.optimizer", "ps.mode")


def _check_resumable(saved: Config, wanted: Config, resume: str) -> None:
    for dotted in RESUME_FIXED:
        section, key = dotted.split(".")
        before, after = getattr(getattr(saved, section), key), getattr(getattr(wanted, section), key)
        if before.lower() != after.lower():
            raise ConfigError(f"--resume {resume} with {dotted}={after}: the run trained with {dotted}={before} "
                              f"and its checkpoint holds that state, which {after} cannot continue from. Resume "
                              f"without changing {dotted}, or start a new run from its weights: --set "
                              f"train.init_from={resume}.")


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of `hdbl train`, read by the trainer and by `hdbl launch train` (to count the ranks the
    config needs) alike: the config and run directory, and the switches."""
    parser.add_argument("config", nargs="?", help="YAML config (e.g. configs/demo.yaml); omit with --resume")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set train.epochs=20 (repeatable)")
    parser.add_argument("--run-dir", help="run directory (default: run.dir, else runs/<date>-<time>)")
    parser.add_argument("--resume", metavar="RUN_DIR|auto",
                        help="continue the run in RUN_DIR from its last checkpoint; 'auto': continue --run-dir if it "
                             "holds a checkpoint, else start it (what a requeued batch job runs)")
    parser.add_argument("--verbose", action="store_true", help="workers print one line per commit")
    parser.add_argument("--plan-only", action="store_true",
                        help="set up (profile: auto included), write plan.json and print the plan, then stop")
    parser.add_argument("--reprofile", action="store_true",
                        help="dual.profile: auto measures every resolution again, even where the profile store "
                             "has this setting's entries (and replaces them)")
