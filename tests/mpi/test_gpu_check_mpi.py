"""bench/gpu_check.sh, the one prepared GPU check, run on the CPU as far as a CPU can (its figures say they are
CPU figures); without a GPU and without --device cpu it refuses, saying why."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "gpu_check.sh"


def _run(tmp_path: Path, *args: str, timeout: float) -> subprocess.CompletedProcess:
    env = {**os.environ, "HDBL_VENV": sys.prefix}
    return subprocess.run([str(SCRIPT), str(tmp_path / "out"), *args], capture_output=True, text=True, env=env,
                          timeout=timeout)


def test_the_gpu_check_runs_every_step_and_prints_its_table(tmp_path):
    done = _run(tmp_path, "--device", "cpu", "--model", "resnet_small", "--workers", "2", "--epochs", "1",
                "--images", "300", "--decode-images", "128", "--max-batch", "64", "--batch", "32",
                "--profile-steps", "3", timeout=280)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    table = (tmp_path / "out" / "gpu_check.md").read_text()
    assert "CPU check of the script: these are NOT GPU figures" in table
    for row in ("| profile fp32 |", "| profile bf16 |", "| bf16/fp32 step time at B = ", "| hybrid ÷ bare loop",
                "| commit round trip (median) / share of a commit |", "| allreduce images/s (2 ranks) |",
                "| torchvision DataLoader decode images/s"):
        assert row in table, table
    figures = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    hybrid = figures["hybrid"]
    assert hybrid["images_per_s"] > 0 and figures["bare"] > 0 and 0 < hybrid["roundtrip_share"] < 1
    assert hybrid["decoding"] == ["dali-cpu"] and figures["allreduce"]["images_per_s"] > 0
    assert set(figures["profile"]) == {"fp32", "bf16"}


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_without_a_gpu_the_check_refuses(tmp_path):
    done = _run(tmp_path, timeout=60)
    assert done.returncode == 1
    assert "torch sees no CUDA device here; this check needs one GPU" in done.stderr
