"""The fast lane's guard: no MPI job may start while only tests not marked `mpi` run.

tests/conftest.py installs this in the pytest process and puts this folder first on PYTHONPATH, so every Python
the tests start (`python -m hdbl_mpi.cli ...`) imports it as `sitecustomize` and is guarded too. A launcher
started with anything but a version or help query is refused with an error and written to the log named by
$HDBL_NO_MPI_LOG, which the session checks at its end (an error a test swallowed still fails the run).
"""

from __future__ import annotations

import os
import shlex
import sys

LAUNCHERS = {"mpirun", "mpiexec", "orterun", "prterun", "prte", "srun", "horovodrun"}
QUERIES = {"--version", "-V", "--help", "-h"}


def launcher_job(args: object) -> str | None:
    """The command line when `args` starts an MPI launcher for a job (not a version or help query), else None."""
    if isinstance(args, (str, bytes)):
        try:
            argv = shlex.split(os.fsdecode(args))
        except ValueError:
            return None
    else:
        argv = [os.fsdecode(a) for a in args]
    if not argv or os.path.basename(argv[0]) not in LAUNCHERS or set(argv[1:]) <= QUERIES and argv[1:]:
        return None
    return " ".join(argv)


def _audit(event: str, args: tuple) -> None:
    if event == "subprocess.Popen":
        command = launcher_job(args[1] if args[1] is not None else [args[0]])
    elif event in ("os.exec", "os.posix_spawn"):
        command = launcher_job(args[1])
    else:
        return
    if command is None:
        return
    log = os.environ.get("HDBL_NO_MPI_LOG")
    if log:
        with open(log, "a", encoding="utf-8") as out:
            out.write(f"{os.getpid()}: {command}\n")
    raise RuntimeError(f"the fast lane starts no MPI job, but this test ran `{command}`: "
                       "move it under tests/mpi/ (marked `mpi` there)")


if not getattr(sys, "_hdbl_no_mpi_guard", False):
    sys._hdbl_no_mpi_guard = True
    sys.addaudithook(_audit)
