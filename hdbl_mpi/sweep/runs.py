"""A sweep's runs on a workstation: which combinations the config refuses, the `hdbl launch train` command of each,
running one with a hard timeout, and the manifest an array job reads.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import time
from pathlib import Path

from hdbl_mpi.config import load_config
from hdbl_mpi.errors import HdblError
from hdbl_mpi.launch.commands import hdbl_program
from hdbl_mpi.run import lock, rundir
from hdbl_mpi.sweep.grid import RunSpec


def refusal(config: str | None, spec: RunSpec, common: list[str]) -> str | None:
    """Why the config refuses this run's overrides, or None when it takes them."""
    try:
        load_config(config, [*common, *spec.overrides])
    except HdblError as err:
        return str(err)
    return None


def launch_argv(config: str | None, spec: RunSpec, out: Path, common: list[str], launch_args: list[str]) -> list[str]:
    argv = hdbl_program() + ["launch", *launch_args, "train", *([config] if config else []), "--run-dir",
                             str(out / "runs" / spec.name)]
    for item in [*common, *spec.overrides]:
        argv += ["--set", item]
    return argv


def run_one(config: str | None, spec: RunSpec, out: Path, common: list[str], launch_args: list[str],
            timeout_s: float = 0.0) -> str:
    """Run `spec` unless its summary exists (timeout_s 0: no limit); "done ...", "skipped (finished)" or
    "failed (...)". A run directory a live `hdbl train` holds (one started by hand) is left alone."""
    run_dir = out / "runs" / spec.name
    if rundir.finished(run_dir):
        return "skipped (finished)"
    live = lock.holder(run_dir)
    if live is not None:
        return f"failed ({run_dir} is in use by {live.describe()}; it was left as it is)"
    if run_dir.exists():
        shutil.rmtree(run_dir)  # an interrupted run: start it again
    argv = launch_argv(config, spec, out, common, launch_args)
    print(f"[sweep] {spec.name}: {shlex.join(argv[3:])}", flush=True)
    start = time.monotonic()
    log = out / "logs" / f"{spec.name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s or None)
    except subprocess.TimeoutExpired as err:
        log.write_text(f"{err.stdout or ''}{err.stderr or ''}" if isinstance(err.stdout, str) else "")
        return f"failed (no end within {timeout_s:.0f} s; log {log})"
    log.write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0 or not (run_dir / rundir.SUMMARY).is_file():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [""]
        return f"failed (exit {proc.returncode}: {tail[0][:200]}; log {log})"
    return f"done in {time.monotonic() - start:.0f} s"


def manifest_lines(specs: list[RunSpec], out: Path, common: list[str]) -> list[str]:
    """One line per run for the array: its run directory, then its --set arguments (shell words)."""
    return [shlex.join([str(out / "runs" / s.name), *[a for item in [*common, *s.overrides] for a in ("--set", item)]])
            for s in specs]
