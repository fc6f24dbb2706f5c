"""How stable is the plan that `dual.profile: auto` makes? The same config, set up N times on the same machine.

Each repeat is a real `hdbl launch train CONFIG --plan-only` job: every worker profiles its device at once (as
at the start of a real run, contention included), the profiles are averaged, and the plan is made; nothing is
trained. The benchmark prints, per setting, B_S of each repeat at every resolution and its spread (max/min and
the coefficient of variation), with the fitted a and b behind it.

    python bench/plan_stability.py configs/demo-hybrid.yaml --repeats 5 \\
        --setting "steps 5=dual.profile_steps=5" --setting "steps 20=dual.profile_steps=20"
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hdbl_mpi.launch.commands import hdbl_program  # noqa: E402
from hdbl_mpi.run import rundir  # noqa: E402


def one_plan(config: str, overrides: list[str], run_dir: Path) -> tuple[dict, dict, float]:
    """(plan.json, profile.json, seconds) of one `--plan-only` set-up."""
    argv = hdbl_program() + ["launch", "train", config, "--plan-only", "--run-dir", str(run_dir)]
    argv += [a for item in ["dual.profile=auto", *overrides] for a in ("--set", item)]
    start = time.monotonic()
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        sys.exit(f"set-up failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    plan = json.loads((run_dir / rundir.PLAN).read_text())
    profile = json.loads((run_dir / rundir.PROFILE).read_text())
    return plan, profile, time.monotonic() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--setting", action="append", default=[], metavar="LABEL=KEY=VALUE[;KEY=VALUE]",
                        help="a labelled set of overrides to compare (repeatable); default: the config as it is")
    args = parser.parse_args()
    settings = [(s.split("=", 1)[0], s.split("=", 1)[1].split(";")) for s in args.setting] or [("as is", [])]
    print(f"{args.config}: {args.repeats} set-ups per setting, dual.profile=auto\n")
    print("| setting | resolution | B_S per repeat | max/min | CV | a (ms/sample) | b (ms/step) | set-up s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for label, overrides in settings:
        results = []
        for i in range(args.repeats):
            with tempfile.TemporaryDirectory() as tmp:
                results.append(one_plan(args.config, overrides, Path(tmp) / f"r{i}"))
        for index, resolution in enumerate(results[0][0]["resolutions"]):
            batches = [r[0]["batch_small"][index] for r in results]
            entries = [next(e for e in r[1]["entries"].values() if e["resolution"] == resolution) for r in results]
            a = [1e3 * e["a"] for e in entries]
            b = [1e3 * e["b"] for e in entries]
            cv = statistics.stdev(batches) / statistics.fmean(batches) if len(batches) > 1 else 0.0
            print(f"| {label} | {resolution} | {', '.join(map(str, batches))} | {max(batches) / min(batches):.2f} "
                  f"| {cv:.1%} | {statistics.fmean(a):.3f} ± {statistics.pstdev(a):.3f} "
                  f"| {statistics.fmean(b):.2f} ± {statistics.pstdev(b):.2f} "
                  f"| {statistics.fmean(r[2] for r in results):.0f} |", flush=True)


if __name__ == "__main__":
    main()
