"""The `hdbl` command. Subcommands import torch and mpi4py only when they need them, so cheap ones answer
instantly on a login node."""

from __future__ import annotations

import argparse
import sys
import traceback

from hdbl_mpi.errors import SetupError


def _train(args: argparse.Namespace) -> int:
    from mpi4py import MPI

    from hdbl_mpi.train import train

    comm = MPI.COMM_WORLD
    try:
        return train(args.config, args.set, args.resume, args.run_dir, args.verbose)
    except SetupError as err:  # every rank raised it: each exits, rank 0 says why
        if comm.rank == 0:
            print(f"hdbl train: error: {err}", file=sys.stderr, flush=True)
        return err.exit_code
    except BaseException as err:  # known to this rank only (a bug, a lost peer): abort the whole job, never hang
        kind = "interrupted" if isinstance(err, KeyboardInterrupt) else "failed"
        print(f"hdbl train: rank {comm.rank}/{comm.size} {kind}: {type(err).__name__}: {err}\n"
              f"{traceback.format_exc()}", file=sys.stderr, flush=True)
        comm.Abort(1)
        return 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hdbl", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train under mpirun: rank 0 serves, the other ranks are workers")
    train.add_argument("config", nargs="?", help="YAML config (e.g. configs/demo.yaml); omit with --resume")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config key, e.g. --set train.epochs=20 (repeatable)")
    train.add_argument("--run-dir", help="run directory (default: run.dir, else runs/<date>-<time>)")
    train.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last checkpoint")
    train.add_argument("--verbose", action="store_true", help="workers print one line per commit")
    train.set_defaults(func=_train)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
