"""Shared test helpers: run `hdbl train` under a real mpirun with a hard timeout."""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from hdbl_mpi.launch.commands import hdbl_program, local_mpirun

# Small, fast, learnable: 1-channel 16 px synthetic images, the small ResNet at width 8.
FAST = [
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
              extra: list[str] | None = None) -> MpiRun:
    """`mpirun -np N hdbl train ...`; a hang becomes a test failure after `timeout` seconds, never a stuck CI."""
    import time

    args = ["train"]
    if resume:
        args += ["--resume", str(run_dir)]
    else:
        args += ([config] if config else []) + ["--run-dir", str(run_dir)]
    for item in (FAST if fast and not resume else []) + overrides:
        args += ["--set", item]
    argv, env = local_mpirun(np_, hdbl_program() + args, extra)
    start = time.monotonic()
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired as err:
        out = (err.stdout or b"").decode() if isinstance(err.stdout, bytes) else (err.stdout or "")
        pytest.fail(f"mpirun did not finish within {timeout} s (a hang):\n{out[-3000:]}")
    return MpiRun(proc.returncode, proc.stdout + proc.stderr, run_dir, time.monotonic() - start)
