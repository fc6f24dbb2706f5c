"""Hostfiles, SLURM variables, world-size checks and the exact commands `hdbl launch --dry-run` prints."""

from __future__ import annotations

import argparse
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hdbl_mpi.comm.placement import gpu_slot, launcher_local_rank
from hdbl_mpi.comm.ulfm import EXIT_LINE, REPORT_ENV, UP_LINE
from hdbl_mpi.launch import commands
from hdbl_mpi.launch.commands import Launch, build_command
from hdbl_mpi.launch.hosts import (
    HostError,
    expand_nodelist,
    expand_tasks_per_node,
    hosts_from_slurm,
    parse_hostfile,
    parse_hosts_arg,
)
from hdbl_mpi.launch.job import add_arguments, prepare

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "demo.yaml"  # dual.workers = 4: 5 ranks
ROOT = CONFIG.parents[1]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "hosts"
    path.write_text(text)
    return path


# --- hostfiles -----------------------------------------------------------------------------------------------

def test_openmpi_hostfile_with_comments_and_max_slots(tmp_path):
    hosts = parse_hostfile(write(tmp_path, "# cluster\nnode01 slots=3 max_slots=4  # rank 0 here\n\nnode02 slots=2\n"))
    assert [(h.name, h.slots) for h in hosts.hosts] == [("node01", 3), ("node02", 2)]
    assert (hosts.form, hosts.slots, hosts.as_arg()) == ("openmpi", 5, "node01:3,node02:2")


def test_mpich_hostfile_and_repeated_hosts_add_up(tmp_path):
    hosts = parse_hostfile(write(tmp_path, "node01:2\nnode02:4\nnode01:1\n"))
    assert [(h.name, h.slots) for h in hosts.hosts] == [("node01", 3), ("node02", 4)]
    assert hosts.form == "mpich"


def test_bare_host_names_are_one_slot_each(tmp_path):
    hosts = parse_hostfile(write(tmp_path, "a\nb\nc slots=2\n"))
    assert (hosts.slots, hosts.form) == (4, "openmpi")


@pytest.mark.parametrize("text, fragment", [
    ("node01 slots=two\n", "hosts:1: slot count 'two'"),
    ("node01 slots=0\n", "is not a positive integer"),
    ("node01 cpus=4\n", "hosts:1: unknown field 'cpus=4'"),
    ("node01:x\n", "slot count 'x'"),
    ("node01 slots=\u00b2\n", "hosts:1: slot count '\u00b2'"),  # str.isdigit() takes a superscript; int() does not
    ("node01:\u0663\n", "slot count '\u0663'"),  # an Arabic-Indic three
    ("ok slots=1\nbad host name!\n", "hosts:2: "),
    ("a slots=1\nb:2\n", "mixes 'host slots=N' and 'host:N'"),
    ("# only a comment\n\n", "lists no hosts"),
])
def test_bad_hostfile_lines_name_file_line_and_forms(tmp_path, text, fragment):
    with pytest.raises(HostError) as err:
        parse_hostfile(write(tmp_path, text))
    assert fragment in str(err.value)
    if "mixes" not in fragment and "no hosts" not in fragment:
        assert "host slots=N" in str(err.value) and "host:N" in str(err.value)  # says what is accepted


def test_missing_hostfile(tmp_path):
    with pytest.raises(HostError, match="does not exist"):
        parse_hostfile(tmp_path / "nope")


def test_hosts_argument():
    hosts = parse_hosts_arg("gpu1:4,gpu2:4,gpu3")
    assert (hosts.slots, hosts.as_arg()) == (9, "gpu1:4,gpu2:4,gpu3:1")
    for bad in ("gpu1:4,,gpu2:4", "gpu1:-1", "gp u:2"):
        with pytest.raises(HostError):
            parse_hosts_arg(bad)


# --- SLURM -----------------------------------------------------------------------------------------------------

def test_slurm_nodelist_expansion_keeps_padding():
    assert expand_nodelist("gpu[01-03,07],login1") == ["gpu01", "gpu02", "gpu03", "gpu07", "login1"]
    assert expand_nodelist("n[8-11]-ib") == ["n8-ib", "n9-ib", "n10-ib", "n11-ib"]
    assert expand_tasks_per_node("2(x3),1") == [2, 2, 2, 1]
    with pytest.raises(HostError):
        expand_nodelist("gpu[01-x]")
    with pytest.raises(HostError, match=r"the range '05-01' runs backwards; write it low to high \(01-05\)"):
        expand_nodelist("gpu[05-01]")  # not silently no hosts


def test_hosts_from_a_faked_slurm_allocation():
    env = {"SLURM_JOB_NODELIST": "c[1-2]", "SLURM_TASKS_PER_NODE": "3,2", "SLURM_NTASKS": "5"}
    hosts = hosts_from_slurm(env)
    assert (hosts.as_arg(), hosts.form) == ("c1:3,c2:2", "slurm")
    spread = hosts_from_slurm({"SLURM_JOB_NODELIST": "c[1-3]", "SLURM_NTASKS": "5"})
    assert spread.as_arg() == "c1:2,c2:2,c3:1"
    with pytest.raises(HostError, match="gives 1 counts for 2 nodes"):
        hosts_from_slurm({"SLURM_JOB_NODELIST": "c[1-2]", "SLURM_TASKS_PER_NODE": "4"})
    with pytest.raises(HostError, match="no SLURM allocation"):
        hosts_from_slurm({})


# --- GPU placement ---------------------------------------------------------------------------------------------

def test_local_rank_comes_from_whichever_launcher_started_the_rank():
    assert launcher_local_rank({"OMPI_COMM_WORLD_LOCAL_RANK": "3"}) == (3, "OMPI_COMM_WORLD_LOCAL_RANK")
    assert launcher_local_rank({"MPI_LOCALRANKID": "1"}) == (1, "MPI_LOCALRANKID")  # MPICH / Hydra
    assert launcher_local_rank({"SLURM_LOCALID": "2", "SLURM_PROCID": "9"}) == (2, "SLURM_LOCALID")
    assert launcher_local_rank({"PATH": "/bin"}) is None


def test_a_cpu_server_does_not_take_a_gpu_turn():
    # Host 0: server (local rank 0, CPU) and workers at local ranks 1..4 share 4 GPUs: GPUs 0,1,2,3.
    peers = [(0, False), (1, True), (2, True), (3, True), (4, True)]
    assert [gpu_slot(r, peers) for r in range(1, 5)] == [0, 1, 2, 3]
    # A GPU server takes GPU 0 and the workers follow.
    peers = [(0, True), (1, True), (2, True)]
    assert [gpu_slot(r, peers) for r in range(3)] == [0, 1, 2]


# --- commands --------------------------------------------------------------------------------------------------

OPENMPI = "/opt/ompi/bin/mpirun"
HYDRA = "/opt/mpich/bin/mpiexec"


@pytest.fixture
def fake_mpis(monkeypatch, tmp_path):
    """Two fake MPIs (their --version decides the flags) and fake horovodrun/srun, so the commands for
    other machines can be checked here."""
    versions = {OPENMPI: "mpirun (Open MPI) 5.0.11", HYDRA: "HYDRA build details:\n    Version: 4.2.0"}
    monkeypatch.setattr(commands, "mpi_version_text", lambda m: versions[m].splitlines()[0])
    monkeypatch.setattr(commands, "mpi_flavour", lambda m: "openmpi" if "ompi" in m else "mpich")
    monkeypatch.setattr(commands, "find_mpirun", lambda: OPENMPI)
    monkeypatch.setattr(commands, "find_tool", lambda name, required=True: f"/usr/bin/{name}")
    monkeypatch.setattr(commands.sys, "executable", "/venv/bin/python")


ENV = {"PATH": "/venv/bin:/usr/bin", "HDBL_PROGRESS": "lines", "NCCL_DEBUG": "WARN", "HOME": "/root"}


def test_openmpi_command_on_two_hosts(fake_mpis, tmp_path):
    hosts = parse_hosts_arg("n1:3,n2:2")
    argv, env = build_command(Launch(program=["python", "-m", "hdbl_mpi.cli", "train", "c.yaml"], np=5,
                                     hosts=hosts, iface="ib0", mpirun=OPENMPI), ENV, root=False)
    assert shlex.join(argv) == (
        "/opt/ompi/bin/mpirun -np 5 -H n1:3,n2:2 --map-by slot --bind-to none --mca btl_tcp_if_include ib0 "
        "--prtemca oob_tcp_if_include ib0 -x PATH -x HDBL_PROGRESS -x NCCL_DEBUG python -m hdbl_mpi.cli train c.yaml"
    )
    assert "HOME" not in argv and env["HOME"] == "/root"


def test_openmpi_root_flag_only_as_root_and_hostfile_passed_through(fake_mpis, tmp_path):
    hostfile = write(tmp_path, "n1 slots=4\n")
    spec = Launch(program=["p"], np=4, hosts=parse_hostfile(hostfile), mpirun=OPENMPI)
    as_user, _ = build_command(spec, {}, root=False)
    as_root, _ = build_command(spec, {}, root=True)
    assert "--allow-run-as-root" not in as_user and "--allow-run-as-root" in as_root
    assert as_user[3:5] == ["--hostfile", str(hostfile)]


def test_mpich_hostfile_goes_to_hydra_as_is(fake_mpis, tmp_path):
    hostfile = write(tmp_path, "n1:3\nn2:2\n")
    argv, _ = build_command(Launch(program=["p"], np=5, hosts=parse_hostfile(hostfile), mpirun=HYDRA,
                                   iface="eth1"), ENV, root=True)
    assert shlex.join(argv) == (f"/opt/mpich/bin/mpiexec -n 5 -f {hostfile} -iface eth1 "
                                "-genvlist PATH,HDBL_PROGRESS,NCCL_DEBUG p")


def test_horovodrun_command_carries_open_mpi_5_binding(fake_mpis):
    argv, env = build_command(Launch(program=["p"], np=2, launcher="horovodrun"), {"PATH": "/bin"}, root=True)
    assert argv == ["/usr/bin/horovodrun", "-np", "2", "--mpi", "-H", "localhost:2",
                    "--binding-args=--bind-to none --map-by slot", "--mpi-args=-x PATH", "p"]
    assert env["OMPI_ALLOW_RUN_AS_ROOT"] == "1"


def test_srun_command(fake_mpis):
    argv, _ = build_command(Launch(program=["p"], np=5, launcher="srun"), {}, root=False)
    assert argv == ["/usr/bin/srun", "--mpi=pmix", "-n", "5", "--kill-on-bad-exit=1", "--export=ALL", "p"]


# --- hdbl launch: checks and dry runs ----------------------------------------------------------------------------

def launch_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


def test_world_size_comes_from_the_config(fake_mpis):
    argv, _, notes = prepare(launch_args("-H", "n1:3,n2:2", "train", str(CONFIG)), {"PATH": "/bin"})
    assert argv[:5] == [OPENMPI, "-np", "5", "-H", "n1:3,n2:2"]
    assert argv[-5:] == ["/venv/bin/python", "-m", "hdbl_mpi.cli", "train", str(CONFIG)]
    assert "5 ranks (1 server + dual.workers=4 workers) on 2 host(s) with 5 slots" in notes[0]
    argv, _, _ = prepare(launch_args("-H", "n1:8", "train", str(CONFIG), "--set", "dual.workers=7",
                                     "--set", "dual.small=0"), {})
    assert argv[1:3] == ["-np", "8"]


def test_too_few_slots_and_a_wrong_np_are_refused(fake_mpis):
    with pytest.raises(commands.LaunchError, match=r"needs 5 ranks .* gives 4 slot\(s\) \(n1:2,n2:2\)"):
        prepare(launch_args("-H", "n1:2,n2:2", "train", str(CONFIG)), {})
    with pytest.raises(commands.LaunchError, match="--np 4 but the config needs 5 ranks"):
        prepare(launch_args("--np", "4", "train", str(CONFIG)), {})
    with pytest.raises(commands.LaunchError, match="--np 0: give a positive number of ranks"):
        prepare(launch_args("--np", "0", "train", str(CONFIG)), {})
    with pytest.raises(commands.LaunchError, match=r"--np 1 but the config needs 5 ranks .* start at least 2 ranks") \
            as err:
        prepare(launch_args("--np", "1", "train", str(CONFIG)), {})
    assert "--set dual.workers" not in str(err.value)  # never --set dual.workers=0 or -1
    argv, _, _ = prepare(launch_args("-H", "n1:2,n2:2", "--oversubscribe", "train", str(CONFIG)), {})
    assert "--oversubscribe" in argv


def test_slurm_allocation_is_checked_and_left_to_srun(fake_mpis):
    env = {"SLURM_JOB_NODELIST": "g[1-2]", "SLURM_TASKS_PER_NODE": "3(x2)"}
    argv, _, notes = prepare(launch_args("--launcher", "srun", "train", str(CONFIG)), env)
    assert argv[:4] == ["/usr/bin/srun", "--mpi=pmix", "-n", "5"] and "--nodelist" not in argv
    assert "6 slots from SLURM_JOB_NODELIST" in notes[0]
    with pytest.raises(commands.LaunchError, match="gives 4 slot"):
        prepare(launch_args("--launcher", "srun", "train", str(CONFIG)),
                {"SLURM_JOB_NODELIST": "g[1-2]", "SLURM_TASKS_PER_NODE": "2(x2)"})


def test_doctor_runs_once_per_host(fake_mpis):
    argv, _, _ = prepare(launch_args("-H", "a:4,b:4,c:4", "doctor", "--json"), {})
    assert argv[1:3] == ["-np", "3"] and argv[argv.index("--map-by") + 1] == "node"


def test_dry_run_from_the_command_line_prints_one_command_and_imports_no_torch():
    proc = subprocess.run(
        [sys.executable, "-c", "import sys; from hdbl_mpi.cli import main; rc = main(sys.argv[1:]); "
         "assert 'torch' not in sys.modules and 'mpi4py.MPI' not in sys.modules; sys.exit(rc)",
         "launch", "--dry-run", "-H", "localhost:5", "train", str(CONFIG), "--set", "train.epochs=1"],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    argv = shlex.split(proc.stdout)
    assert argv[1:5] == ["-np", "5", "-H", "localhost:5"] and argv[-2:] == ["--set", "train.epochs=1"]
    bad = subprocess.run([sys.executable, "-m", "hdbl_mpi.cli", "launch", "--dry-run", "-H", "localhost:2", "train",
                          str(CONFIG)], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "hdbl launch: error: the job needs 5 ranks" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_the_example_hostfiles_parse():
    root = CONFIG.parents[1] / "hostfiles"
    forms = {path.name: parse_hostfile(path).form for path in sorted(root.glob("*.hosts"))}
    assert forms == {"horovod.hosts": "openmpi", "mpich.hosts": "mpich", "openmpi.hosts": "openmpi"}
    assert {parse_hostfile(root / name).as_arg() for name in forms} == {"node01:3,node02:2"}


def test_a_ulfm_config_gets_the_fault_tolerance_flags(fake_mpis):
    argv, _, _ = prepare(launch_args("train", str(CONFIG), "--set", "ps.fault_tolerance=ulfm", "--set",
                                     "ps.ft_detector_timeout_s=8"), {})
    text = shlex.join(argv)
    assert "--with-ft ulfm --mca mpi_ft_detector true --mca mpi_ft_detector_thread true " in text
    assert "--mca mpi_ft_detector_period 2 " in text
    assert "--mca mpi_ft_detector_timeout 8 --mca async_mpi_finalize true" in text
    plain, plain_env, _ = prepare(launch_args("train", str(CONFIG)), {})
    assert "--with-ft" not in plain and REPORT_ENV not in plain_env
    _, env, _ = prepare(launch_args("train", str(CONFIG), "--set", "ps.fault_tolerance=ulfm"), {})
    assert env[REPORT_ENV] == "1" and f"-x {REPORT_ENV}" in text  # rank 0 reports its exit code to hdbl launch


def test_a_ulfm_config_is_refused_by_launchers_that_cannot_start_it(fake_mpis):
    """srun and horovodrun have no --with-ft ulfm: dropping the flags would start a job that dies with its first
    lost rank, against what the config asks."""
    for launcher in ("srun", "horovodrun"):
        with pytest.raises(commands.LaunchError, match=f"needs Open MPI's mpirun .* --launcher {launcher} would"):
            prepare(launch_args("--launcher", launcher, "--np", "7", "train", str(CONFIG), "--set",
                                "ps.fault_tolerance=ulfm", "--set", "ps.spares=2"), {"SLURM_JOB_ID": "1"})
    with pytest.raises(commands.LaunchError, match=r"--np 5 but the config needs 7 ranks \(1 server \+ "
                                                   r"dual.workers=4 workers \+ ps.spares=2 spares\)"):
        prepare(launch_args("--np", "5", "train", str(CONFIG), "--set", "ps.fault_tolerance=ulfm", "--set",
                            "ps.spares=2"), {})


RELAY = ("import sys; from hdbl_mpi.launch.relay import supervise; "
         "sys.exit(supervise(sys.argv[1:], {}, reports=True))")


def relayed(script: str, **kwargs) -> subprocess.CompletedProcess:
    """`hdbl launch`'s ULFM relay running `sh -c script` in place of mpirun, in a process of its own."""
    return subprocess.run([sys.executable, "-c", RELAY, "sh", "-c", script], capture_output=True, timeout=30,
                          cwd=ROOT, **kwargs)


UP = f"echo '{UP_LINE} (5 ranks)'"


@pytest.mark.parametrize("script, code, unreported", [
    (f"{UP}; printf 'epoch 1\\r50%%\\n{EXIT_LINE} 0\\n'", 0, False),  # rank 0 said 0, mpirun said 0
    (f"{UP}; echo '{EXIT_LINE} 75'", 75, False),  # stopped with a checkpoint (mpirun: 0 for ranks gone without it)
    (f"{UP}; echo '{EXIT_LINE} 0'; exit 3", 0, False),  # a worker lost with exit(3): the run ended well
    (f"{UP}; echo 'hdbl train: 5 ranks'", 1, True),  # mpirun 0 but rank 0 never reported: killed
    ("exit 2", 2, False),  # mpirun failed to start the job: not started again
    (f"{UP}; exit 1", 1, False),  # aborted (MPI_Abort): mpirun's code
    ("kill -KILL $$", 137, False),  # mpirun itself killed: the shell's 128 + signal
])
def test_the_ulfm_relay_ends_with_rank_0s_code_not_mpiruns_zero(script, code, unreported):
    proc = relayed(script)
    assert proc.returncode == code, proc.stderr
    assert ("never reported its exit code" in proc.stderr.decode()) == unreported
    assert b"starting it again" not in proc.stderr


def test_a_ulfm_job_that_died_inside_mpi_init_is_started_again(tmp_path):
    """mpirun ended with 0 before rank 0 said every rank was up (Open MPI's detector thread crashed the ranks
    inside MPI_Init): started again, said on stderr, at most START_ATTEMPTS (5) times in all."""
    count = tmp_path / "starts"
    second_time_lucky = (f"echo x >> {count}; [ $(wc -l < {count}) -ge 2 ] || exit 0; "
                         f"{UP}; echo '{EXIT_LINE} 0'")
    proc = relayed(second_time_lucky)
    assert proc.returncode == 0 and count.read_text().count("x") == 2, proc.stderr
    assert proc.stderr.decode().count("starting it again, attempt 2 of 5") == 1
    count.unlink()
    proc = relayed(f"echo x >> {count}; exit 0")  # never comes up: five starts, then the failure
    assert proc.returncode == 1 and count.read_text().count("x") == 5
    assert "never reported its exit code" in proc.stderr.decode()


def signalled(relay: str, script: str, ready, sig: int) -> tuple[int, bytes, bytes]:
    """Run `relay` over `sh -c script`, send `sig` to the relay once the script has touched `ready`."""
    proc = subprocess.Popen([sys.executable, "-c", relay, "sh", "-c", script], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=ROOT)
    deadline = time.monotonic() + 20
    while not ready.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=20)
    return proc.returncode, out, err


def test_the_ulfm_relay_copies_output_byte_for_byte_and_passes_signals_on(tmp_path):
    """What mpirun writes reaches the user unchanged (carriage returns of a progress bar included), and SIGUSR1
    sent to `hdbl launch` (SLURM's warning, via hdbl.sbatch) reaches mpirun."""
    ready = tmp_path / "ready"
    script = (f"trap 'echo got USR1; echo \"{EXIT_LINE} 75\"; exit 0' USR1; printf 'a\\rb\\n'; touch {ready}; "
              "while :; do sleep 0.1; done")
    code, out, err = signalled(RELAY, script, ready, signal.SIGUSR1)
    assert code == 75, err
    assert out == f"a\rb\ngot USR1\n{EXIT_LINE} 75\n".encode()


def test_the_ulfm_relay_kills_an_mpirun_left_without_ranks():
    """prterun can deadlock after a failure under ULFM (every rank gone, deaf to SIGTERM): once the launcher has
    had no child process for the grace time, it is killed and the launch fails instead of hanging."""
    relay = ("import sys; from hdbl_mpi.launch.relay import supervise; "
             "sys.exit(supervise(sys.argv[1:], {}, reports=True, orphan_grace_s=2))")
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", relay, "sh", "-c", f"{UP}; trap '' TERM; exec sleep 60"],
                          capture_output=True, timeout=30, cwd=ROOT)
    assert proc.returncode == 137 and "mpirun has not (an Open MPI hang" in proc.stderr.decode(), proc.stderr
    assert time.monotonic() - started < 15


def test_a_sigterm_to_hdbl_launch_reaches_open_mpis_mpirun_as_sigusr1(tmp_path):
    """Open MPI's mpirun kills the ranks 0.5 s after forwarding a SIGTERM; SIGUSR1 it forwards and leaves alone,
    so `hdbl launch` passes a SIGTERM on as SIGUSR1 (the run checkpoints and exits 75), saying so; its exit code
    is mpirun's (no rank 0 report outside ULFM)."""
    ready = tmp_path / "ready"
    script = (f"trap 'echo got USR1; exit 75' USR1; trap 'echo got TERM; exit 1' TERM; touch {ready}; "
              "while :; do sleep 0.1; done")
    relay = ("import signal, sys; from hdbl_mpi.launch.relay import supervise; "
             "sys.exit(supervise(sys.argv[1:], {}, reports=False, term_as=signal.SIGUSR1))")
    code, out, err = signalled(relay, script, ready, signal.SIGTERM)
    assert code == 75 and out == b"got USR1\n", (out, err)
    assert b"SIGTERM passed on to mpirun as SIGUSR1" in err
