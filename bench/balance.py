"""Do the two worker groups really take the same time per commit? Predicted vs measured, per group.

Runs a short dual-batch training job under mpirun and prints, from its summary.json, the plan's predicted
compute time per commit of each group, the measured mean compute and whole-commit times, and the imbalance
(slowest group / fastest group; the target is <= 1.05 with a fresh profile).

    python bench/balance.py                                   # demo config, 2 epochs, a and b from the config
    python bench/balance.py --set dual.profile=auto           # profile every worker at start-up first
    python bench/balance.py --set dual.replan=true            # let the server re-balance B_S while training
    python bench/balance.py --config configs/demo.yaml --epochs 3 --set model.width=8

Record results in docs/BENCHMARKS.md with the command line used.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hdbl_mpi.launch.commands import hdbl_program, local_mpirun  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"))
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config overrides")
    parser.add_argument("--run-dir", help="keep the run here (default: a temporary directory)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(args.run_dir or Path(tmp) / "run")
        overrides = [f"train.epochs={args.epochs}", "eval.every=0", *args.set]
        import yaml

        from hdbl_mpi.config import load_config

        config = load_config(args.config, overrides)
        program = hdbl_program() + ["train", args.config, "--run-dir", str(run_dir)]
        for item in overrides:
            program += ["--set", item]
        argv, env = local_mpirun(config.dual.workers + 1, program)
        print("+ " + " ".join(argv), flush=True)
        result = subprocess.run(argv, env=env)
        if result.returncode != 0:
            print(f"training failed with exit code {result.returncode}", file=sys.stderr)
            return result.returncode
        summary = json.loads((run_dir / "summary.json").read_text())
        plan = summary["plan"]
        print(yaml.safe_dump({"plan": {k: plan[k] for k in ("batch_large", "batch_small", "d_large", "d_small",
                                                            "time_a", "time_b")}}, sort_keys=False).strip())
        for report in summary["balance"]:
            print(f"resolution {report['resolution']}:")
            print(f"  {'group':<6} {'predicted compute':>18} {'measured compute':>17} {'measured commit':>16}")
            for group in ("small", "large"):
                if group not in report["measured_compute_s"]:
                    continue
                predicted = report["predicted_compute_s"][group]
                print(f"  {group:<6} {'-' if predicted is None else f'{predicted:.2f} s':>18} "
                      f"{report['measured_compute_s'][group]:>15.2f} s {report['measured_commit_s'][group]:>14.2f} s")
            for kind in ("compute", "commit"):
                value = report[f"imbalance_{kind}"]
                print(f"  imbalance ({kind}): {'-' if value is None else f'{value:.3f}'}")
        for change in summary["replans"]:
            print(f"  replan at commit {change['at_commit']}: B_S {change['previous_batch_small']} -> "
                  f"{change['batch_small']} (imbalance {change['imbalance']:.3f})")
        print(f"final B_S {summary['batch_small_final']}, train time {summary['train_time_s']:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
