"""`hdbl launch`: from a config and a place to run, the one launcher command that starts the job.

The launch is checked before anything starts: the config says how many ranks it needs (1 server + n workers),
the hosts (-H, a hostfile or the SLURM allocation) say how many slots there are, and a mismatch is an error
that says what to change, instead of a job that fails minutes later on its first collective.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys
from pathlib import Path

from hdbl_mpi.comm.ulfm import REPORT_ENV
from hdbl_mpi.launch.commands import (
    LAUNCHERS,
    Launch,
    LaunchError,
    build_command,
    hdbl_program,
    local_cores,
    mpi_flavour,
    ulfm_args,
)
from hdbl_mpi.launch.hosts import Hosts, hosts_from_slurm, parse_hostfile, parse_hosts_arg
from hdbl_mpi.launch.relay import supervise
from hdbl_mpi.launch.restarts import run_with_restarts
from hdbl_mpi.run.rundir import default_run_dir
from hdbl_mpi.run_config import add_train_arguments, load_run_config
from hdbl_mpi.schema import Config, has_server, required_ranks


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--launcher", choices=LAUNCHERS, default="mpirun", help="mpirun (default), horovodrun or srun")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("-H", "--hosts", metavar="HOST:SLOTS,...", help="hosts and slots, e.g. node01:4,node02:4")
    where.add_argument("--hostfile", metavar="FILE", help="Open MPI ('host slots=N'), MPICH ('host:N') or Horovod")
    parser.add_argument("--np", type=int, help="ranks to start (default: what the config needs)")
    parser.add_argument("--oversubscribe", action="store_true", help="allow more ranks than slots on a host")
    parser.add_argument("--iface", metavar="IF|CIDR", help="network for MPI traffic, e.g. ib0 or 10.0.0.0/24")
    parser.add_argument("--rsh-agent", metavar="CMD", help="what starts remote daemons instead of ssh")
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="set for every rank")
    parser.add_argument("--launcher-args", default="", metavar="'ARGS'", help="more arguments for the launcher")
    parser.add_argument("--mpirun", metavar="PATH", help="the mpirun/mpiexec to use (default: the venv's, then PATH)")
    parser.add_argument("--python", metavar="PATH", help="the Python every rank runs (default: this one; the same "
                        "path must exist on every host)")
    parser.add_argument("--dry-run", action="store_true", help="print the command and the checks, start nothing")
    parser.add_argument("--max-restarts", type=int, default=0, metavar="N",
                        help="train: start a failed job again from its last checkpoint (--resume auto), at most N "
                        "times (not after a refusal, exit 2, or a stop on a signal, 75/76)")
    parser.add_argument("--restart-backoff", type=float, default=5.0, metavar="S",
                        help="seconds before restart k: k x S (default 5)")
    parser.add_argument("command", nargs=argparse.REMAINDER, metavar="COMMAND ...",
                        help="what every rank runs: train CONFIG [--set k=v ...], doctor, profile ..., evaluate ...")


def _hosts(args: argparse.Namespace, environ: dict[str, str]) -> Hosts | None:
    if args.hosts:
        return parse_hosts_arg(args.hosts)
    if args.hostfile:
        return parse_hostfile(args.hostfile)
    if environ.get("SLURM_JOB_NODELIST"):
        return hosts_from_slurm(environ)
    return None


def _train_args(args: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="hdbl train", add_help=False)
    add_train_arguments(parser)
    return parser.parse_args(args)


def _train_config(args: list[str]) -> Config:
    """The config `hdbl train ARGS` would run, read the way the trainer reads it (hdbl_mpi.config)."""
    train = _train_args(args)
    resume = train.resume
    if resume == "auto":  # the run directory's own config if there is a run to continue, else CONFIG
        from hdbl_mpi.run.rundir import CHECKPOINT

        resume = train.run_dir if train.run_dir and (Path(train.run_dir) / CHECKPOINT).is_file() else None
    return load_run_config(train.config, train.set, resume)


def ranks_for(command: list[str], np: int | None, hosts: Hosts | None) -> tuple[int, str, list[str]]:
    """(ranks, why) for the hdbl subcommand: `train` needs what its config says; `doctor` runs once per host;
    anything else needs --np. The third item is launcher flags the config asks for (ULFM)."""
    if np is not None and np < 1:
        raise LaunchError(f"--np {np}: give a positive number of ranks, or drop --np to start what the config needs.")
    if command[0] == "train":
        config = _train_config(command[1:])
        needed = required_ranks(config)
        servers = "1 server" if config.ps.servers == 1 else f"ps.servers={config.ps.servers} servers"
        spares = f" + ps.spares={config.ps.spares} spares" if config.ps.spares else ""
        why = (f"{servers} + dual.workers={config.dual.workers} workers{spares}" if has_server(config) else
               f"dual.workers={config.dual.workers} {config.ps.mode} workers, no server")
        if np is not None and np != needed:
            workers = np - needed + config.dual.workers
            change = f"change the workers with --set dual.workers={workers}" if workers >= 1 else \
                f"start at least {needed - config.dual.workers + 1} ranks (one worker)"
            raise LaunchError(f"--np {np} but the config needs {needed} ranks ({why}); drop --np, or {change}.")
        flags = ulfm_args(config.ps.ft_detector_timeout_s) if config.ps.fault_tolerance == "ulfm" else []
        return needed, why, flags
    if command[0] == "doctor" and np is None:
        count = len(hosts.hosts) if hosts is not None else 1
        return count, "one per host", []
    if np is None:
        raise LaunchError(f"`hdbl launch ... {command[0]}` needs --np N (how many ranks to start).")
    return np, "--np", []


def prepare(args: argparse.Namespace, environ: dict[str, str] | None = None) -> tuple[list[str], dict, list[str]]:
    """(argv, env, notes): the checked command for these `hdbl launch` arguments."""
    environ = dict(os.environ if environ is None else environ)
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise LaunchError("nothing to launch: add the hdbl command, e.g. `hdbl launch -H n1:4,n2:4 train cfg.yaml`.")
    restarts = getattr(args, "max_restarts", 0)
    if restarts and (command[0] != "train" or restarts < 0):
        raise LaunchError(f"--max-restarts {restarts}: restarts are for training jobs (`hdbl launch --max-restarts "
                          "N train CONFIG ...`), and N counts them (N >= 0).")
    hosts = _hosts(args, environ)
    np, why, config_flags = ranks_for(command, args.np, hosts)
    if config_flags and args.launcher != "mpirun":
        raise LaunchError(
            f"ps.fault_tolerance=ulfm needs Open MPI's mpirun (--with-ft ulfm and its failure detector): --launcher "
            f"{args.launcher} would start a job that ends at the first lost rank. Use --launcher mpirun (inside a "
            "SLURM allocation too: HDBL_LAUNCHER=mpirun sbatch ...), or ps.fault_tolerance=abort with "
            "--max-restarts N.")
    notes = []
    oversubscribe = args.oversubscribe
    if hosts is not None:
        if np > hosts.slots and not oversubscribe:
            raise LaunchError(
                f"the job needs {np} ranks ({why}) but {hosts.source} gives {hosts.slots} slot(s) "
                f"({hosts.as_arg()}). Add hosts or slots, lower the workers (--set dual.workers=N), or pass "
                "--oversubscribe to put several ranks on a slot."
            )
        notes.append(f"{np} ranks ({why}) on {len(hosts.hosts)} host(s) with {hosts.slots} slots from {hosts.source}")
    elif args.launcher != "srun":
        cores = local_cores()
        if np > cores and not oversubscribe:
            oversubscribe = True
            notes.append(f"{np} ranks ({why}) on this host's {cores} cores: adding --oversubscribe")
        else:
            notes.append(f"{np} ranks ({why}) on this host")
    env = {REPORT_ENV: "1"} if config_flags and args.launcher == "mpirun" else {}  # see hdbl_mpi.launch.relay
    for item in args.env:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise LaunchError(f"--env expects KEY=VALUE, got {item!r}.")
        env[key] = value
    spec = Launch(
        program=hdbl_program(args.python) + command,
        np=np,
        launcher=args.launcher,
        # Open MPI and srun read a SLURM allocation themselves; horovodrun needs the hosts spelt out.
        hosts=None if hosts is not None and hosts.form == "slurm" and args.launcher != "horovodrun" else hosts,
        oversubscribe=oversubscribe,
        iface=args.iface,
        rsh_agent=args.rsh_agent,
        map_by="node" if command[0] == "doctor" else "slot",
        env=env,
        extra=(config_flags if args.launcher == "mpirun" else []) + shlex.split(args.launcher_args),
        mpirun=args.mpirun,
    )
    argv, run_env = build_command(spec, environ, require_tools=not args.dry_run)
    return argv, run_env, notes


def launch(args: argparse.Namespace) -> int:
    """Print the command (and the checks behind it), then run it: Open MPI's mpirun as a child that gets a
    SIGTERM as SIGUSR1 (and, for a ULFM job, whose real exit code is rank 0's: hdbl_mpi.launch.relay); other
    launchers (srun, horovodrun, MPICH) replace this process, except under a restart budget (--max-restarts),
    where every launcher runs as a child that a failure starts again."""
    argv, env, notes = prepare(args)
    for note in notes:
        print(f"hdbl launch: {note}", file=sys.stderr)
    if args.dry_run:
        print(shlex.join(argv))
        return 0
    if args.max_restarts:
        return _with_restarts(args)
    print("+ " + shlex.join(argv), file=sys.stderr, flush=True)
    reports = env.get(REPORT_ENV) == "1"  # ULFM: mpirun's exit code cannot be trusted, rank 0's report is checked
    training = [c for c in args.command if c != "--"][:1] == ["train"]
    if reports or (training and args.launcher == "mpirun" and mpi_flavour(argv[0]) == "openmpi"):
        return supervise(argv, env, reports=reports, term_as=_term_as(args, argv))  # see hdbl_mpi.launch.relay
    os.execvpe(argv[0], argv, env)
    return 0  # not reached


def _term_as(args: argparse.Namespace, argv: list[str]) -> int | None:
    """What a SIGTERM to `hdbl launch` is passed on as: SIGUSR1 for Open MPI's mpirun (hdbl_mpi.launch.relay)."""
    return signal.SIGUSR1 if args.launcher == "mpirun" and mpi_flavour(argv[0]) == "openmpi" else None


def restart_target(command: list[str]) -> tuple[list[str], str]:
    """(command, run directory) of a train job with a restart budget: the directory its restarts continue,
    added to the command where the trainer would have chosen it (runs/<date>-<time>) only once started."""
    train = _train_args(command[1:])
    if train.resume and train.resume != "auto":
        return command, train.resume
    if train.run_dir:
        return command, train.run_dir
    chosen = _train_config(command[1:]).run.dir or str(default_run_dir())
    return [*command, "--run-dir", chosen], chosen


def _with_restarts(args: argparse.Namespace) -> int:
    """`--max-restarts N`: the job under hdbl launch (never exec'd), started again as launch/restarts.py says."""
    command, run_dir = restart_target([c for c in args.command if c != "--"])
    signalled: list[int] = []

    def start(cmd: list[str], extra: dict[str, str]) -> int:
        attempt = argparse.Namespace(**{**vars(args), "command": cmd,
                                        "env": [*args.env, *(f"{k}={v}" for k, v in extra.items())]})
        argv, env, _ = prepare(attempt)
        print("+ " + shlex.join(argv), file=sys.stderr, flush=True)
        return supervise(argv, env, reports=env.get(REPORT_ENV) == "1", term_as=_term_as(args, argv),
                         signalled=signalled)

    return run_with_restarts(start, command, run_dir, args.max_restarts, args.restart_backoff,
                             lambda: bool(signalled))
