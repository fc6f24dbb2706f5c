"""The GPU path in one go, in a few minutes on one GPU: run through bench/gpu_check.sh (it activates the README's
venv and caps the time). Prints one table and writes it, with every figure behind it, to OUT/gpu_check.md and
OUT/gpu_check.json.

1. `hdbl doctor`.
2. `hdbl profile` of the model at 32 px in fp32 and amp: a, b, R2 and B_max per precision, and the amp/fp32
   step-time ratio at the fp32 B_max (both fitted lines evaluated there).
3. A hybrid run: 1 server + N workers sharing the GPU (ps.device auto, so the server evaluates there too),
   E epochs on a generated JPEG folder decoded by DALI `mixed` (`--decoder torchvision` where DALI is not
   installed; `--data synthetic`: images held in memory, nothing decoded, so the figure is the exchange's and the
   GPU's sharing alone), amp, planned from the amp profile. Its
   images/s (epochs x training images / training time) is divided by a bare torch loop of the same model,
   batch (B_L) and precision on the same GPU (goal >= 0.95), and its commits give the commit round trip
   (push + merged reply, waiting for the server excluded) and its share of a commit.
4. The allreduce baseline (N ranks, mpi4py, the same data, epochs and precision) for comparison.
5. DALI `mixed` against the torchvision DataLoader on the same JPEGs, images/s (goal >= 3x).

`--device cpu` runs the same steps on the CPU (bf16 for amp, DALI's CPU operators for `mixed`): a check of the
script itself, whose figures are CPU figures and say so; the suite runs it that way (tests/mpi).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from data import images_per_second, make_folder  # noqa: E402  (bench/data.py)

RESOLUTION = 32
CLASSES = 10


def say(text: str) -> None:
    print(f"[gpu_check {time.strftime('%H:%M:%S')}] {text}", flush=True)


def hdbl(args: argparse.Namespace, *argv: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run an `hdbl` command of this venv, echoing its output; a failure stops the check with its output."""
    command = [sys.executable, "-c", "import sys; from hdbl_mpi.cli import main; sys.exit(main())", *argv]
    say("hdbl " + " ".join(argv))
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    (args.out / "logs").mkdir(exist_ok=True)
    log = args.out / "logs" / f"{argv[0]}-{len(list((args.out / 'logs').iterdir()))}.log"
    log.write_text(done.stdout + done.stderr)
    if done.returncode != 0 and argv[0] != "doctor":
        sys.exit(f"gpu_check: `hdbl {' '.join(argv)}` failed ({done.returncode}); its output is in {log}:\n"
                 f"{(done.stdout + done.stderr)[-3000:]}")
    return done


def profile(args: argparse.Namespace, precision: str) -> dict:
    path = args.out / "profile.json"
    hdbl(args, "profile", "--model", args.model, "--classes", str(CLASSES), "--resolutions", str(RESOLUTION),
         "--precision", precision, "--device", args.device, "--max-batch", str(args.max_batch), "--steps",
         str(args.profile_steps), "--output", str(path), *(["--memory-budget", "8GiB"] if args.cpu else []))
    entries = json.loads(path.read_text())["entries"].values()
    return next(e for e in entries if e["precision"] == precision and e["resolution"] == RESOLUTION)


def write_config(args: argparse.Namespace, mode: str) -> Path:
    """The run's config (JSON, which is YAML): the generated folder decoded as asked (DALI unless --decoder
    torchvision), the check's precision."""
    if args.data == "synthetic":  # in memory, nothing decoded: the exchange and the device's sharing alone
        data: dict = {"name": "synthetic", "synthetic": {"train_size": args.images, "test_size": args.images // 10,
                                                         "channels": 3, "size": RESOLUTION, "classes": CLASSES}}
    else:
        data = {"name": "folder", "dir": str(args.out / "jpegs"), "decoder": args.decoder, "resolution": RESOLUTION,
                "threads": 2}
    config: dict = {
        "data": data,
        "model": {"name": args.model}, "eval": {"every": args.epochs},
        "train": {"epochs": args.epochs, "lr": 0.1, "precision": args.amp, "device": args.device},
    }
    if mode == "hybrid":  # planned from the profile just measured; the server evaluates on the GPU too
        config["dual"] = {"workers": args.workers, "small": args.workers // 2,
                          "profile": str(args.out / "profile.json")}
        config["ps"] = {"mode": "asp", "device": "cpu" if args.cpu else "auto"}
    else:
        config["dual"] = {"workers": args.workers, "batch_large": args.batch}
        config["ps"] = {"mode": "allreduce", "backend": "mpi4py"}
    path = args.out / f"{mode}.yaml"
    path.write_text(json.dumps(config, indent=1))
    return path


def train(args: argparse.Namespace, mode: str, ranks: int) -> dict:
    run_dir = args.out / f"run-{mode}"
    hdbl(args, "launch", "--np", str(ranks), *(["--oversubscribe"] if args.cpu else []), "train",
         str(write_config(args, mode)), "--run-dir", str(run_dir), timeout=args.run_timeout)
    summary = json.loads((run_dir / "summary.json").read_text())
    rate = summary["epochs_completed"] * summary["dataset"]["train_size"] / summary["train_time_s"]
    result = {"images_per_s": rate, "train_time_s": summary["train_time_s"], "top1": summary["final_top1"],
              "decoding": sorted(set(summary["decoding"].values())), "summary": summary}
    commits_path = run_dir / "commits.jsonl"
    if mode == "hybrid" and commits_path.is_file():
        commits = [json.loads(line) for line in commits_path.read_text().splitlines() if line.strip()]
        result["roundtrip_ms"] = 1000 * statistics.median(c["exchange_s"] for c in commits)
        result["roundtrip_share"] = sum(c["exchange_s"] for c in commits) / sum(c["commit_s"] for c in commits)
        result["batch_large"] = max(c["batch"] for c in commits)
    return result


def bare_loop(args: argparse.Namespace, batch: int, steps: int = 30) -> float:
    """Images/s of the model alone: a preallocated batch on the device, forward, backward, step; no input
    pipeline, no exchange, nothing else on the device."""
    from hdbl_mpi.models import build_model
    from hdbl_mpi.precision import Precision

    device = torch.device(args.device if args.device != "auto" else "cuda")
    model = build_model(args.model, CLASSES, 3, RESOLUTION).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    mixed = Precision(args.amp, device)
    inputs = torch.randn(batch, 3, RESOLUTION, RESOLUTION, device=device)
    labels = torch.randint(0, CLASSES, (batch,), device=device)

    def step() -> None:
        optimizer.zero_grad()
        with mixed.autocast():
            loss = torch.nn.functional.cross_entropy(model(inputs), labels)
        mixed.backward(loss)
        mixed.step(optimizer)

    for _ in range(5):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return steps * batch / (time.perf_counter() - start)


def decode_rates(args: argparse.Namespace) -> dict:
    from hdbl_mpi.data.dali import DaliFolderLoader, dali_available
    from hdbl_mpi.data.folder import TorchvisionFolderLoader
    from hdbl_mpi.data.images import index_folder

    root = args.out / "decode-jpegs"
    make_folder(root, args.decode_images, 200)
    index = index_folder(str(root), "train")
    device = "cpu" if args.cpu else "cuda:0"
    common = dict(train=True, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), num_threads=4, device=device)
    rates = {"torchvision": images_per_second(TorchvisionFolderLoader(index, **common), 8, 64, 128, device, 3)}
    if dali_available():
        loader = DaliFolderLoader(index, **common, device_id=None if args.cpu else 0)
        rates["dali"] = images_per_second(loader, 8, 64, 128, device, 3)
    return rates


def table(args: argparse.Namespace, results: dict) -> str:
    fp32, amp = results["profile"]["fp32"], results["profile"][args.amp]
    b = fp32["b_max"]
    ratio = (amp["a"] * b + amp["b"]) / (fp32["a"] * b + fp32["b"])
    hybrid, allreduce, decode = results["hybrid"], results["allreduce"], results["decode"]
    rows = [f"| profile {p} | a {e['a']:.3g} s/img, b {e['b']:.3g} s, R² {e['r2']:.3f}, B_max {e['b_max']} |"
            for p, e in results["profile"].items()]
    rows += [
        f"| {args.amp}/fp32 step time at B = {b} | {ratio:.2f} |",
        f"| hybrid images/s ({args.workers} workers, {args.images} images, {', '.join(hybrid['decoding'])}) | "
        f"{hybrid['images_per_s']:.0f} |",
        f"| bare torch loop images/s (B_L = {hybrid['batch_large']}, {args.amp}) | {results['bare']:.0f} |",
        f"| hybrid ÷ bare loop (goal ≥ 0.95) | {hybrid['images_per_s'] / results['bare']:.2f} |",
        f"| commit round trip (median) / share of a commit | {hybrid['roundtrip_ms']:.1f} ms / "
        f"{100 * hybrid['roundtrip_share']:.1f} % |",
        f"| allreduce images/s ({args.workers} ranks) | {allreduce['images_per_s']:.0f} |",
        f"| top-1 after {args.epochs} epochs: hybrid / allreduce | {hybrid['top1']:.3f} / {allreduce['top1']:.3f} |",
        f"| torchvision DataLoader decode images/s (4 processes) | {decode['torchvision']:.0f} |",
    ]
    if "dali" in decode:
        rows.append(f"| DALI {'cpu' if args.cpu else 'mixed'} decode images/s | {decode['dali']:.0f} "
                    f"({decode['dali'] / decode['torchvision']:.1f}x; goal ≥ 3x) |")
    else:
        rows.append("| DALI decode images/s | not measured: NVIDIA DALI is not installed here |")
    head = (f"{results['device']}, torch {torch.__version__}, {results['date']}, model {args.model}, "
            f"{RESOLUTION} px" + (" — CPU check of the script: these are NOT GPU figures" if args.cpu else ""))
    return "\n".join([head, "", "| check | figure |", "|---|---|", *rows])


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="where the JPEGs, runs and the table go")
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--images", type=int, default=20000, help="training JPEGs for the runs (40x40 px)")
    parser.add_argument("--decode-images", type=int, default=2000, help="JPEGs (200x200) for the decode check")
    parser.add_argument("--data", default="jpegs", choices=("jpegs", "synthetic"),
                        help="the runs' data: generated JPEGs (decoded), or synthetic images held in memory (no "
                             "decoding: what the exchange and the GPU's sharing cost alone)")
    parser.add_argument("--decoder", default="dali", choices=("dali", "torchvision"),
                        help="the runs' JPEG decoder; torchvision where DALI is not installed (the table says which)")
    parser.add_argument("--max-batch", type=int, default=512, help="cap on B_max, hence on B_L")
    parser.add_argument("--batch", type=int, default=512, help="allreduce batch per rank")
    parser.add_argument("--profile-steps", type=int, default=10)
    parser.add_argument("--run-timeout", type=float, default=240)
    args = parser.parse_args()
    args.cpu = args.device == "cpu"
    args.amp = "bf16" if args.cpu else "amp"
    if args.decoder == "dali" and args.data == "jpegs":
        from hdbl_mpi.data.dali import dali_available

        if not dali_available():
            sys.exit("gpu_check: NVIDIA DALI is not installed here (pip install .[dali]); install it, or check the "
                     "rest with --decoder torchvision (the table then has no DALI figure).")
    if not args.cpu and not torch.cuda.is_available():
        sys.exit("gpu_check: torch sees no CUDA device here; this check needs one GPU (--device cpu checks the "
                 "script itself on the CPU).")
    return args


def main() -> int:
    args = parse()
    args.out.mkdir(parents=True, exist_ok=True)
    device = "cpu" if args.cpu else torch.cuda.get_device_name(0)
    results: dict = {"device": device, "date": time.strftime("%Y-%m-%d"), "args": {
        k: str(v) for k, v in vars(args).items()}}
    doctor = hdbl(args, "doctor")
    results["doctor_exit"] = doctor.returncode
    results["profile"] = {p: profile(args, p) for p in ("fp32", args.amp)}
    if args.data == "jpegs":
        say(f"{args.images} JPEGs for the runs")
        make_folder(args.out / "jpegs", args.images, 40, CLASSES)
        make_folder(args.out / "jpegs", max(args.images // 10, CLASSES * 2), 40, CLASSES, split="val")
    results["hybrid"] = train(args, "hybrid", args.workers + 1)
    results["bare"] = bare_loop(args, results["hybrid"]["batch_large"])
    results["allreduce"] = train(args, "allreduce", args.workers)
    results["decode"] = decode_rates(args)
    text = table(args, results)
    print(text)
    (args.out / "gpu_check.md").write_text(text + "\n")
    for run in ("hybrid", "allreduce"):
        results[run].pop("summary")
    (args.out / "gpu_check.json").write_text(json.dumps(results, indent=1, default=str))
    say(f"table: {args.out / 'gpu_check.md'}; figures: {args.out / 'gpu_check.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
