"""The installed wheel behaves like the clone: built from the package's own files, installed into a scratch venv
with nothing of the clone on its path, it answers the cheap commands and renders a sweep's SLURM array from the
batch script it ships (before, the script was read from launchers/ beside the package, which a wheel does not
have, and the array silently lost its time limit, warning signal and requeue)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run(argv: list[str], cwd: Path, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{argv}:\n{proc.stdout}\n{proc.stderr}"
    return proc


def test_the_wheel_runs_the_cheap_commands_and_renders_the_slurm_array(tmp_path):
    source = tmp_path / "source"  # a copy, so building leaves nothing in the clone
    source.mkdir()
    for name in ("setup.py", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "hdbl_mpi", source / "hdbl_mpi", ignore=shutil.ignore_patterns("__pycache__"))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path / "dist"),
         str(source)], tmp_path, env)
    (wheel,) = (tmp_path / "dist").glob("hdbl_mpi-*.whl")
    venv.create(tmp_path / "venv", with_pip=True)
    python = tmp_path / "venv" / "bin" / "python"
    # The cheap commands need PyYAML alone; torch, MPI and the rest are not installed (and must not be needed).
    run([str(python), "-m", "pip", "install", "-q", "--no-deps", str(wheel), "PyYAML"], tmp_path, env)
    work = tmp_path / "elsewhere"  # not the clone: nothing of it on the path
    work.mkdir()
    hdbl = str(tmp_path / "venv" / "bin" / "hdbl")
    assert "usage: hdbl" in run([hdbl, "--help"], work, env).stdout
    plan = run([hdbl, "plan", "--dataset-size", "50000", "--workers", "4", "--small", "3", "--resolutions", "32",
                "--batch-large", "500", "--time-a", "5.6607e-4", "--time-b", "0.014041", "--json"], work, env).stdout
    assert '"batch_small": [\n    205\n  ]' in plan  # method §4's worked example
    assert "130-140" in run([hdbl, "schedule", "cifar-paper"], work, env).stdout
    (work / "run.yaml").write_text("dual: {workers: 2, small: 0, batch_large: 64}\ndata: {name: synthetic}\n")
    run([hdbl, "sweep", "run.yaml", "--grid", "train.epochs=1,2", "--slurm", "--dry-run", "--out", "sweep"], work, env)
    script = (work / "sweep" / "sweep.sbatch").read_text()
    assert "#SBATCH --array=1-2" in script and "#SBATCH --ntasks=3" in script
    assert "#SBATCH --signal=B:USR1@300" in script and "#SBATCH --requeue" in script and "#SBATCH --time=" in script
    template = next(line.split()[2] for line in script.splitlines() if line.startswith("exec bash "))
    assert Path(template).is_file() and str(tmp_path / "venv") in template  # the installed package's own copy
    assert subprocess.run(["bash", "-n", str(work / "sweep" / "sweep.sbatch")]).returncode == 0
