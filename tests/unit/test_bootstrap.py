"""bootstrap.sh and launchers/install_horovod.sh: paths and errors, in seconds, with no real install.

A fresh machine once failed `./bootstrap.sh test` because the venv's python reached the Horovod installer as a
relative path that meant nothing in its build directory; these tests pin the path handling and the error text.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def dry_run(cwd: Path, *args: str, venv: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("HDBL_VENV", "PYTHON")}
    if venv is not None:
        env["HDBL_VENV"] = venv
    proc = subprocess.run(["bash", str(ROOT / "bootstrap.sh"), "--dry-run", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    return dict(line.split(": ", 1) for line in proc.stdout.splitlines())


@pytest.mark.parametrize("given", ["relative", "absolute"])
def test_a_venv_path_resolves_from_the_callers_directory(tmp_path, given):
    elsewhere = tmp_path / "somewhere"
    elsewhere.mkdir()
    venv = "envs/hdbl" if given == "relative" else str(tmp_path / "envs" / "hdbl")
    plan = dry_run(elsewhere, "test", venv=venv)
    expected = (elsewhere if given == "relative" else tmp_path) / "envs" / "hdbl"
    python = f"{expected}/bin/python"
    assert plan["dry-run"] == "test"
    assert plan["repo"] == str(ROOT)
    assert plan["venv"].startswith(f"{expected} (would be created")
    assert plan["install"].startswith(f"{python} -m pip install")
    assert plan["horovod"] == f"bash {ROOT}/launchers/install_horovod.sh {python}"
    assert plan["run"] == f"{python} -m pytest -q"


def test_the_default_venv_is_the_clones_whatever_the_directory(tmp_path):
    plan = dry_run(tmp_path, "demo")
    python = f"{ROOT}/.venv/bin/python"
    assert plan["venv"].startswith(f"{ROOT}/.venv ")
    assert plan["horovod"] == "skipped"  # only the test suite needs Horovod
    assert plan["run"] == f"{python} -m hdbl_mpi.cli launch train configs/demo.yaml --run-dir runs/demo"


def test_a_wrong_argument_prints_the_usage():
    proc = subprocess.run(["bash", str(ROOT / "bootstrap.sh"), "tests"], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert "usage:" in proc.stderr and "demo|test|setup" in proc.stderr


# --- the Horovod installer, up to a build that fails -----------------------------------------------------------

FAKE_PYTHON = """#!/usr/bin/env bash
# A venv's python whose pip builds fail like a broken CMake configure; everything else is the real interpreter.
case "$1 $2 $3" in
  "-m pip wheel")
    echo "-- Found MPI_CXX: /usr/lib/libmpi_cxx.so"
    echo "CMake Error at horovod/torch/CMakeLists.txt:23 (find_package):"
    echo "  Could NOT find CUDAToolkit (missing: CUDAToolkit_INCLUDE_DIR CUDA_CUDART)"
    echo "  error: subprocess-exited-with-error"
    echo "ERROR: Failed building wheel for horovod"
    exit 1 ;;
  "-m pip "*) exit 0 ;;
esac
exec {real} "$@"
"""

# The three places launchers/install_horovod.sh patches, as they stand in horovod 0.28.1's sdist.
SDIST = {
    "CMakeLists.txt": "set(CMAKE_CXX_STANDARD 14)\nset(CMAKE_CXX_STANDARD_REQUIRED ON)\n",
    "horovod/torch/CMakeLists.txt": "if(1)\n    set(CMAKE_CXX_STANDARD 14)\nendif()\n",
    "cmake/Modules/FindPytorch.cmake":
        '-c "import torch; from torch.utils.cpp_extension import CUDA_HOME; print(True if ((torch.version.cuda '
        'is not None) and (CUDA_HOME is not None)) else False)"\n',
}


def fake_venv(tmp_path: Path) -> Path:
    """A venv-shaped folder: the fake python beside the real MPI compiler wrappers."""
    found = {name: Path(sys.executable).parent / name for name in ("mpicc", "mpirun")}
    found = {name: (str(p) if p.exists() else shutil.which(name)) for name, p in found.items()}
    if not all(found.values()):
        pytest.skip("no mpicc/mpirun beside this Python or on PATH: the installer stops before its build")
    bin_dir = tmp_path / "venv" / "bin"
    bin_dir.mkdir(parents=True)
    python = bin_dir / "python"
    python.write_text(FAKE_PYTHON.format(real=sys.executable))
    python.chmod(0o755)
    for name, target in found.items():
        (bin_dir / name).symlink_to(target)
    return python


def fake_sdist(cache: Path) -> None:
    src = cache / "src" / "horovod-0.28.1"
    for rel, text in SDIST.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_text(text)
    (cache / "sdist").mkdir(parents=True)
    with tarfile.open(cache / "sdist" / "horovod-0.28.1.tar.gz", "w:gz") as tar:
        tar.add(src, arcname="horovod-0.28.1")


def test_the_installer_takes_a_relative_python_and_names_the_real_build_error(tmp_path):
    fake_venv(tmp_path)
    fake_sdist(tmp_path / "cache")
    env = {**os.environ, "HDBL_CACHE": str(tmp_path / "cache"), "HDBL_HOROVOD_GPU": "cpu", "TMPDIR": str(tmp_path)}
    proc = subprocess.run(["bash", str(ROOT / "launchers" / "install_horovod.sh"), "venv/bin/python"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert f"==> python {tmp_path}/venv/bin/python " in proc.stdout  # absolute from the start
    assert "patched horovod/torch/CMakeLists.txt" in proc.stdout  # the build step itself was reached
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: the horovod build failed: CMake Error at horovod/torch/CMakeLists.txt:23 "
                           "(find_package): Could NOT find CUDAToolkit"), last
    assert "Could NOT find CUDAToolkit" in proc.stderr
    assert "usual causes" not in proc.stderr and "No such file" not in proc.stderr
    assert "subprocess-exited-with-error" not in proc.stderr  # pip's summary is not an error line of its own


def test_the_installer_refuses_a_python_that_is_not_there(tmp_path):
    proc = subprocess.run(["bash", str(ROOT / "launchers" / "install_horovod.sh"), "nowhere/bin/python"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: no Python at nowhere/bin/python (no directory nowhere/bin under ")


# --- the installer on a GPU machine without a CUDA compiler (a pip-only node), simulated -------------------------

GPU_HOST_PYTHON = """#!/usr/bin/env bash
# A venv's python on a machine with {gpus} GPU(s) and a CUDA 13.0 torch: the probe's answers are canned, pip installs
# of the toolkit wheels lay out a fake toolkit, and the build fails, printing what it was given.
case "$1" in
  -) cat >/dev/null
     printf '%s\\n' cp311 {venv} {venv}/site 2.14.1+cu130 13.0 {gpus} {nccl}
     exit 0 ;;
esac
case "$1 $2 $3" in
  "-m pip install")
    target=""; prev=""
    for arg in "$@"; do [ "$prev" = --target ] && target="$arg"; prev="$arg"; done
    if [ -n "$target" ]; then
      echo "$@" > {venv}/toolkit-pip-args
      [ -n "{toolkit_fails}" ] && exit 1
      mkdir -p "$target/nvidia/cu13/bin" "$target/nvidia/cu13/include" "$target/nvidia/cu13/lib"
      printf '#!/bin/sh\\necho "Cuda compilation tools, release 13.0, V13.0.88"\\n' > "$target/nvidia/cu13/bin/nvcc"
      chmod +x "$target/nvidia/cu13/bin/nvcc"
      : > "$target/nvidia/cu13/include/cuda_runtime.h"; : > "$target/nvidia/cu13/lib/libcudart.so.13"
    fi
    exit 0 ;;
  "-m pip wheel")
    echo "CMake Error at CMakeLists.txt:1 (message): given CUDA_HOME=${{CUDA_HOME:-none}}" \\
         "GPU_OPERATIONS=${{HOROVOD_GPU_OPERATIONS:-none}}"
    exit 1 ;;
  "-m pip "*) exit 0 ;;
esac
exec {real} "$@"
"""


def gpu_host(tmp_path: Path, gpus: int = 1, toolkit_fails: bool = False) -> tuple[Path, dict]:
    """A fake venv on a GPU machine (torch's nvidia-nccl headers present), and an environment with no CUDA
    toolkit the installer could find on its own."""
    python = fake_venv(tmp_path)
    venv = python.parents[1]
    nccl = venv / "site" / "nvidia" / "nccl"
    (nccl / "include").mkdir(parents=True)
    (nccl / "lib").mkdir()
    (nccl / "include" / "nccl.h").write_text("")
    (nccl / "lib" / "libnccl.so.2").write_text("")
    python.write_text(GPU_HOST_PYTHON.format(gpus=gpus, venv=venv, nccl=nccl, real=sys.executable,
                                             toolkit_fails="yes" if toolkit_fails else ""))
    fake_sdist(tmp_path / "cache")
    env = {**os.environ, "HDBL_CACHE": str(tmp_path / "cache"), "TMPDIR": str(tmp_path),
           "HDBL_HOROVOD_TOOLKIT": "pypi"}  # as if there were no /usr/local/cuda and no nvcc on PATH
    env.pop("CUDA_HOME", None)
    env.pop("HDBL_HOROVOD_GPU", None)
    return python, env


def run_installer(python: Path, env: dict, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(ROOT / "launchers" / "install_horovod.sh"), str(python)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def test_without_nvcc_a_gpu_machine_gets_the_cuda_toolkit_from_pypi_and_builds_nccl(tmp_path):
    """Before, no nvcc on PATH meant a CPU-only build, whose first GPU tensor fails under ps.backend auto."""
    python, env = gpu_host(tmp_path)
    proc = run_installer(python, env, tmp_path)
    toolkit = tmp_path / "cache" / "cuda-toolkit" / "13.0"
    assert re.search(r"cache key: horovod-0\.28\.1-cp311-torch2\.14\.1\+cu130-\S+-nccl\n", proc.stdout), proc.stdout
    assert f"installing the CUDA 13.0 compiler and headers from PyPI (nvidia-cuda-nvcc and its kin) into {toolkit}" \
        in proc.stdout, proc.stdout + proc.stderr
    pip_args = (python.parents[1] / "toolkit-pip-args").read_text()
    assert "nvidia-cuda-nvcc==13.0.* nvidia-cuda-runtime==13.0.* nvidia-cuda-cccl==13.0.*" in pip_args
    assert f"CUDA toolkit: {toolkit} (release 13.0, from PyPI)" in proc.stdout
    # laid out where nvcc.profile and CMake look
    assert (toolkit / "lib" / "libcudart.so").is_symlink() and (toolkit / "lib64").is_symlink()
    assert (toolkit / "targets" / f"{'sbsa' if os.uname().machine == 'aarch64' else os.uname().machine}-linux" /
            "include" / "cuda_runtime.h").exists()
    assert proc.returncode == 1 and f"given CUDA_HOME={toolkit} GPU_OPERATIONS=NCCL" in proc.stderr


def test_a_cpu_only_build_on_a_gpu_machine_is_said_plainly(tmp_path):
    python, env = gpu_host(tmp_path, gpus=2, toolkit_fails=True)
    proc = run_installer(python, env, tmp_path)
    assert "warning: pip could not install the CUDA 13.0 toolkit wheels" in proc.stderr
    assert ("warning: this machine has 2 GPU(s) but Horovod is built WITHOUT GPU operations (no CUDA toolkit: none "
            "usable here, and PyPI's could not be installed)") in proc.stderr, proc.stderr
    keys = re.findall(r"cache key: \S+-(cpu|nccl)\n", proc.stdout)
    assert keys == ["nccl", "cpu"], proc.stdout  # meant for GPUs, then built for the CPU, under its own key
    assert "given CUDA_HOME=none GPU_OPERATIONS=none" in proc.stderr
    proc = run_installer(python, {**env, "HDBL_HOROVOD_GPU": "cpu"}, tmp_path)
    assert "warning: this machine has 2 GPU(s) but Horovod is built WITHOUT GPU operations (HDBL_HOROVOD_GPU=cpu)" \
        in proc.stderr
    proc = run_installer(python, {**env, "HDBL_HOROVOD_GPU": "nccl"}, tmp_path)
    assert proc.returncode == 1 and proc.stderr.strip().splitlines()[-1] == (
        "error: HDBL_HOROVOD_GPU=nccl but no CUDA toolkit could be had (see above); set CUDA_HOME")
