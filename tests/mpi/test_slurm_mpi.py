"""launchers/slurm/hdbl.sbatch under a real single-node SLURM (started here by launchers/slurm/local_slurm.sh, which
installs Debian's slurm-wlm, munge and libpmix-dev when they are missing): the demo config, shortened, runs to the
end through `srun --mpi=pmix`; a synthetic run through mpirun inside the allocation; and a job with a short time
limit gets SLURM's warning signal, checkpoints, requeues itself, resumes and finishes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from hdbl_mpi.run import rundir

ROOT = Path(__file__).resolve().parents[2]
LOCAL_SLURM = ROOT / "launchers" / "slurm" / "local_slurm.sh"
SBATCH = ROOT / "launchers" / "slurm" / "hdbl.sbatch"
ONE_NODE = ["--nodes=1", "--ntasks=5", "--ntasks-per-node=5", "--cpus-per-task=1", "--gpus-per-node=0"]
SYNTHETIC = ["--set", "train.device=cpu", "--set", "data.name=synthetic", "--set",
             "data.synthetic={train_size: 1024, test_size: 256, channels: 1, size: 16, classes: 4}",
             "--set", "model.width=4", "--set", "train.threads=1", "--set", "dual.small=0",
             "--set", "dual.profile=null", "--set", "dual.batch_large=64"]


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """SLURM_CONF of a controller and node daemon started for these tests (stopped afterwards)."""
    if os.geteuid() != 0:
        pytest.skip("a local SLURM needs root (it starts slurmctld, slurmd and munged)")
    if not shutil.which("slurmctld") and not shutil.which("apt-get"):
        pytest.skip("SLURM is not installed and there is no apt-get to install slurm-wlm, munge and libpmix-dev")
    env = {**os.environ, "HDBL_SLURM_DIR": str(tmp_path_factory.mktemp("slurm")), "HDBL_SLURM_PORT": "6917"}
    for step in ("install", "start"):
        proc = subprocess.run(["bash", str(LOCAL_SLURM), step], env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, f"local_slurm.sh {step}:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    env["SLURM_CONF"] = str(Path(env["HDBL_SLURM_DIR"]) / "slurm.conf")
    yield env
    subprocess.run(["bash", str(LOCAL_SLURM), "stop"], env=env, capture_output=True, timeout=60)


def sbatch(env: dict, out: Path, options: list[str], args: list[str], extra_env: dict | None = None) -> str:
    job_env = {**env, **(extra_env or {})}
    proc = subprocess.run(["sbatch", "--parsable", *ONE_NODE, f"--output={out}", *options, str(SBATCH), *args],
                          cwd=ROOT, env=job_env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip().split(";")[0]


def job_field(env: dict, job: str, field: str) -> str | None:
    proc = subprocess.run(["scontrol", "show", "job", job], env=env, capture_output=True, text=True, timeout=30)
    for item in proc.stdout.split():
        if item.startswith(field + "="):
            return item.split("=", 1)[1]
    return None


def controller_log(env: dict) -> str:
    """The end of slurmctld's log: why SLURM failed or held a job, which the job's own output cannot say."""
    log = Path(env["HDBL_SLURM_DIR"]) / "log" / "slurmctld.log"
    return "slurmctld.log:\n" + ("\n".join(log.read_text().splitlines()[-15:]) if log.is_file() else "(none)")


def wait_state(env: dict, job: str, states: set[str], out: Path, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = job_field(env, job, "JobState")
        if state in states:
            return state
        time.sleep(1)
    log = out.read_text()[-4000:] if out.is_file() else "(no output yet)"
    subprocess.run(["scancel", job], env=env, timeout=30)
    pytest.fail(f"job {job} did not reach {states} within {timeout} s (now {job_field(env, job, 'JobState')}):\n{log}"
                f"\n{controller_log(env)}")


def test_the_sbatch_script_runs_the_demo_through_srun_pmix(slurm, tmp_path):
    run, out = tmp_path / "run", tmp_path / "job.out"
    job = sbatch(slurm, out, ["--time=10"], ["configs/demo.yaml", "--set", "train.epochs=1", "--set", "model.width=4",
                                                    "--set", "train.device=cpu"],
                 {"HDBL_RUN_DIR": str(run)})
    assert wait_state(slurm, job, {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"}, out, 600) == "COMPLETED", \
        out.read_text()[-4000:] + controller_log(slurm)
    log = out.read_text()
    assert "srun --mpi=pmix -n 5" in log and "hdbl train: done: final top-1" in log
    assert "find-available:not-valid" not in log  # mpi.conf's PMIxEnv keeps the wheel's PMIx quiet
    summary = json.loads((run / rundir.SUMMARY).read_text())
    assert summary["world_size"] == 5 and summary["epochs_completed"] == 1 and not summary["restarts"]


def test_the_sbatch_script_runs_mpirun_inside_the_allocation(slurm, tmp_path):
    run, out = tmp_path / "run", tmp_path / "job.out"
    job = sbatch(slurm, out, ["--time=10"], ["configs/demo.yaml", *SYNTHETIC, "--set", "train.epochs=1"],
                 {"HDBL_RUN_DIR": str(run), "HDBL_LAUNCHER": "mpirun"})
    assert wait_state(slurm, job, {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"}, out, 300) == "COMPLETED", \
        out.read_text()[-4000:] + controller_log(slurm)
    assert "mpirun" in out.read_text() and (run / rundir.SUMMARY).is_file()


def test_a_job_near_its_time_limit_checkpoints_requeues_resumes_and_finishes(slurm, tmp_path):
    """Two minutes of time limit and the warning 45 s before it (SLURM may send it up to 60 s early, so 15-75 s
    after the start): the run (longer than that, its worker rank 1 sleeping 1 s per commit) stops with a
    checkpoint and the script requeues the job. SLURM holds a requeued job
    back for about two minutes before it may start again; the test lifts that hold and the time limit once the
    job is back in the queue, so the second start runs to the end without waiting or a second warning."""
    run, out = tmp_path / "run", tmp_path / "job.out"
    args = ["configs/demo.yaml", *SYNTHETIC, "--set", "ps.mode=bsp", "--set", "train.epochs=24",
            "--set", "dual.commits_per_epoch=4",
            "--set", "dual.workers=4", "--set", "debug.slow.delay_s={1: 1}",
            "--set", "run.checkpoint_every=0"]
    started = time.monotonic()
    job = sbatch(slurm, out, ["--time=2", "--signal=B:USR1@45"], args, {"HDBL_RUN_DIR": str(run)})
    wait_state(slurm, job, {"RUNNING"}, out, 120)
    wait_state(slurm, job, {"PENDING", "REQUEUED", "COMPLETED", "FAILED", "TIMEOUT"}, out, 180)
    assert job_field(slurm, job, "Restarts") == "1", out.read_text()[-4000:]
    log = out.read_text()
    assert "USR1 (time limit near)" in log and "stopped on SIGUSR1 at commit" in log and "requeueing job" in log
    stopped_at = rundir.load_checkpoint(run / rundir.CHECKPOINT)[1]["merged"]
    assert 0 < stopped_at < 24 * 16
    # Wait until it is back in the queue (not still REQUEUED), then 3 s more: a node refuses a start within the same
    # second as the requeue that revoked the job's credential ("Job credential revoked": SLURM's own hold avoids it).
    wait_state(slurm, job, {"PENDING"}, out, 60)
    time.sleep(3)
    subprocess.run(["scontrol", "update", f"JobId={job}", "TimeLimit=10", "StartTime=now"], env=slurm, check=True,
                   timeout=30)
    assert wait_state(slurm, job, {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"}, out, 600) == "COMPLETED", \
        out.read_text()[-4000:] + controller_log(slurm)
    summary = json.loads((run / rundir.SUMMARY).read_text())
    restart = summary["restarts"][0]
    assert len(summary["restarts"]) == 1 and restart["at_commit"] == stopped_at and restart["rank_states"] == 4
    assert restart["slurm_job"] == job and restart["slurm_restart_count"] == 1
    assert summary["commits_total"] == 24 * 16
    print(f"requeue test: {time.monotonic() - started:.0f} s, stopped at commit {stopped_at}")
