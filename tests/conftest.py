"""Shared test helpers: run `hdbl train` under a real mpirun with a hard timeout; the `mpi` and `gpu` markers and
the fast lane's guard.

`gpu` tests need CUDA and are skipped where torch sees none; every other test pins the CPU (FAST below, or its
own `train.device=cpu` / `--device cpu`), so the suite asserts the same facts on a host with GPUs as without.

Every test under tests/mpi/ is marked `mpi` here, in one place (no per-file marks to forget), so
`pytest -m "not mpi"` is the fast lane. When the selected tests hold no `mpi` test, tests/no_mpi/sitecustomize.py
guards the run: any MPI launcher started for a job, by a test or by a Python process a test started, fails that
test and the session.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from hdbl_mpi.launch.commands import hdbl_program, local_mpirun

TESTS = Path(__file__).resolve().parent
MPI_TESTS = TESTS / "mpi"
GUARD = TESTS / "no_mpi"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    gpu_tests = [item for item in items if item.get_closest_marker("gpu")]
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device (torch sees none here)") if gpu_tests and \
        not _cuda_available() else None
    for item in items:
        if MPI_TESTS in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.mpi)
        if skip_gpu is not None and item in gpu_tests:
            item.add_marker(skip_gpu)


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.fixture(autouse=True)
def _own_profile_store(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test starts with an empty profile store of its own (profiling/reuse.py), so no test reuses another's
    start-up profile and none touches the user's ~/.cache."""
    monkeypatch.setenv("HDBL_PROFILE_STORE", str(tmp_path_factory.mktemp("profile-store")))


def pytest_collection_finish(session: pytest.Session) -> None:
    """No `mpi` test selected: install the guard here and, through PYTHONPATH, in every Python the tests start."""
    if any(item.get_closest_marker("mpi") for item in session.items):
        return
    log = Path(tempfile.gettempdir()) / f"hdbl-no-mpi-{os.getpid()}.log"
    log.unlink(missing_ok=True)
    os.environ["HDBL_NO_MPI_LOG"] = str(log)
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(GUARD), os.environ.get("PYTHONPATH")]))
    spec = importlib.util.spec_from_file_location("hdbl_no_mpi_guard", GUARD / "sitecustomize.py")
    spec.loader.exec_module(importlib.util.module_from_spec(spec))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    log = Path(os.environ.get("HDBL_NO_MPI_LOG", "/nonexistent"))
    if log.is_file() and log.read_text().strip():
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
        print(f"\nerror: the fast lane started MPI jobs (mark these tests `mpi`):\n{log.read_text()}")

# Small, fast, learnable: 1-channel 16 px synthetic images, the small ResNet at width 8, on the CPU (the tests
# assert CPU facts; a GPU host runs them the same way, and the `gpu` tests ask for CUDA themselves).
FAST = [
    "train.device=cpu",
    "data.name=synthetic",
    "data.synthetic={train_size: 1024, test_size: 256, channels: 1, size: 16, classes: 4}",
    "model.name=resnet_small",
    "model.width=8",
    "train.threads=1",
    "train.lr=0.05",
    "dual.batch_large=64",
    "ps.timeout_s=60",
]


@dataclass
class MpiRun:
    returncode: int
    output: str
    run_dir: Path
    seconds: float

    def summary(self) -> dict:
        return json.loads((self.run_dir / "summary.json").read_text())

    def commits(self) -> list[dict]:
        lines = (self.run_dir / "commits.jsonl").read_text().splitlines()
        return [json.loads(line) for line in lines if line.strip()]


def run_train(np_: int, run_dir: Path, overrides: list[str], *, timeout: float = 120.0,
              config: str | None = None, resume: bool = False, fast: bool = True,
              extra: list[str] | None = None, launch: bool = False, flags: list[str] | None = None) -> MpiRun:
    """`mpirun -np N hdbl train ...` (with `launch`: `hdbl launch --np N train ...`, as a user starts a ULFM job;
    `flags`: more `hdbl train` switches, e.g. --reprofile); a hang becomes a test failure after `timeout`
    seconds, never a stuck CI."""
    import time

    args = ["train", *(flags or [])]
    if resume:
        args += ["--resume", str(run_dir)]
    else:
        args += ([config] if config else []) + ["--run-dir", str(run_dir)]
    for item in (FAST if fast and not resume else []) + overrides:
        args += ["--set", item]
    if launch:
        argv, env = hdbl_program() + ["launch", "--np", str(np_), *(extra or []), *args], None
    else:
        argv, env = local_mpirun(np_, hdbl_program() + args, extra)
    start = time.monotonic()
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired as err:
        out = (err.stdout or b"").decode() if isinstance(err.stdout, bytes) else (err.stdout or "")
        pytest.fail(f"mpirun did not finish within {timeout} s (a hang):\n{out[-3000:]}")
    return MpiRun(proc.returncode, proc.stdout + proc.stderr, run_dir, time.monotonic() - start)
