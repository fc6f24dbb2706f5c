"""What stopping a long run costs: SIGUSR1 to mpirun part-way through the demo, the seconds until the job has
exited with its checkpoint (exit code 75), the size of checkpoint.pt and of each worker's rank file, and the resume
to the end.

    python bench/stop_resume.py --out /tmp/stopbench --after 20      # configs/demo.yaml, k = 1 and k = 16: the
                                                                     # run in docs/BENCHMARKS.md (signal after 20 s)
    python bench/stop_resume.py --out /tmp/stop --after 60 --k 4      # signal after 60 s of training, k = 4

Without --after the signal comes after 30 s of training.

The parameter server stops after the commits in flight, so the cost is about one commit: d_L/k samples per worker.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hdbl_mpi.launch.commands import hdbl_program, local_mpirun  # noqa: E402
from hdbl_mpi.run import rundir  # noqa: E402

CONFIG = ROOT / "configs" / "demo.yaml"


def launch(run_dir: Path, k: int, extra: list[str]) -> subprocess.Popen:
    args = ["train", str(CONFIG), "--run-dir", str(run_dir), "--resume", "auto",
            "--set", f"dual.commits_per_epoch={k}", *extra]
    argv, env = local_mpirun(5, hdbl_program() + args)
    return subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def one(out: Path, k: int, after: float, extra: list[str]) -> dict:
    run_dir = out / f"k{k}"
    proc = launch(run_dir, k, extra)
    log = run_dir / rundir.LOG
    while not (log.is_file() and "server," in log.read_text()):  # the server's start line: training under way
        if proc.poll() is not None:
            raise SystemExit(f"the run ended early:\n{proc.communicate()[0][-3000:]}")
        time.sleep(0.2)
    time.sleep(after)
    signalled = time.monotonic()
    proc.send_signal(signal.SIGUSR1)
    output, _ = proc.communicate()
    stop_s = time.monotonic() - signalled
    if proc.returncode != 75:
        raise SystemExit(f"expected exit code 75, got {proc.returncode}:\n{output[-3000:]}")
    state = rundir.load_checkpoint(run_dir / rundir.CHECKPOINT)[1]
    ranks = state["rank_states"]["ranks"]
    start = time.monotonic()
    resumed = launch(run_dir, k, extra)
    output, _ = resumed.communicate()
    if resumed.returncode != 0:
        raise SystemExit(f"the resume failed:\n{output[-3000:]}")
    summary = json.loads((run_dir / rundir.SUMMARY).read_text())
    return {"k": k, "stopped_at_commit": state["merged"], "signal_to_exit_s": round(stop_s, 2),
            "checkpoint_bytes": (run_dir / rundir.CHECKPOINT).stat().st_size,
            "rank_file_bytes": sorted({e["bytes"] for e in ranks.values()}),
            "resume_s": round(time.monotonic() - start, 1), "final_top1": summary["final_top1"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--k", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--after", type=float, default=30.0, help="seconds of training before the signal")
    parser.add_argument("--set", action="append", default=[], help="config overrides, as in hdbl train")
    args = parser.parse_args()
    extra = [item for s in args.set for item in ("--set", s)]
    for k in args.k:
        print(json.dumps(one(Path(args.out), k, args.after, extra)), flush=True)


if __name__ == "__main__":
    main()
