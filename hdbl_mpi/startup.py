"""The first step of `hdbl train` on every rank, before torch is imported: rank 0 reads the config (or the run
it resumes) and broadcasts it, so the files need to exist on one host only, and a bad config ends the job on
every rank within seconds, with one message and exit code 2.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from hdbl_mpi.config import Config, config_from_dict, load_config
from hdbl_mpi.errors import HdblError, SetupError
from hdbl_mpi.run import rundir


@dataclass
class SharedConfig:
    config: Config
    run_dir: str
    checkpoint: str | None  # the checkpoint to resume from
    profile: list | None  # the stored profile the run uses (a file, or a resumed auto run's own)
    t_start: float


def read_config(config_path: str | None, overrides: list[str], resume: str | None, run_dir: str | None):
    """Rank 0 only: the config tree, the run directory, the checkpoint to resume from (if any) and the stored
    profile the run uses (if any): a resumed `profile: auto` run reuses its own profile, so its plan stays put."""
    checkpoint = None
    if resume:
        resume_dir = Path(resume)
        saved = resume_dir / rundir.CONFIG
        if not saved.is_file():
            raise HdblError(f"--resume {resume}: no {rundir.CONFIG} there; pass the run directory of an earlier run.")
        config = load_config(saved, overrides)
        chosen, checkpoint = str(resume_dir), resume_dir / rundir.CHECKPOINT
    else:
        config = load_config(config_path, overrides)  # no file: the defaults plus --set overrides
        chosen = run_dir or config.run.dir or str(rundir.default_run_dir())
        config.run.dir = chosen
    profile = None
    source = config.dual.profile
    if source == "auto" and resume and (Path(chosen) / rundir.PROFILE).is_file():
        source = str(Path(chosen) / rundir.PROFILE)
    if source not in (None, "auto"):
        from hdbl_mpi.profiles import load_profile

        profile = load_profile(source)
    return config.to_dict(), chosen, checkpoint, profile



def shared_config(comm, config_path: str | None, overrides: list[str], resume: str | None,
                  run_dir: str | None) -> SharedConfig:
    """Rank 0 reads, every rank receives; any error is raised as the same SetupError on every rank."""
    t_start = time.perf_counter()
    payload: tuple = (None, None, None, None, None)
    if comm.rank == 0:
        try:
            tree, chosen_dir, checkpoint, stored_profile = read_config(config_path, overrides, resume, run_dir)
            payload = (None, tree, chosen_dir, str(checkpoint) if checkpoint else None, stored_profile)
        except HdblError as err:
            payload = (str(err), None, None, None, None)
    error, tree, chosen_dir, checkpoint, stored_profile = comm.bcast(payload, root=0)
    if error:
        raise SetupError(error)
    config = config_from_dict(tree)  # the tree is identical on every rank, and so is any error
    return SharedConfig(config, chosen_dir, checkpoint, stored_profile, t_start)
