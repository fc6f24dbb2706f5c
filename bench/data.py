"""How fast do ImageNet-style folders decode? DALI vs the torchvision/PIL DataLoader, images per second.

Generates a folder of JPEGs (smooth colour gradients plus noise, so they compress like photographs rather than
flat colours), then times training batches (random resized crop, flip, normalise) from both loaders at the
same thread counts: DALI's num_threads against the same number of DataLoader worker processes. Each loader
gets one warm-up commit first (pipeline build, worker start-up, page cache); the median of the timed commits
is printed.

    python bench/data.py                          # 600 images 200x200, resolution 128, batch 64, threads 1 and 2
    python bench/data.py --threads 1 2 4 --images 2000
    python bench/data.py --gpu                    # DALI decodes with 'mixed' on GPU 0 (when a GPU exists)

Record results in docs/BENCHMARKS.md with the command line used.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from hdbl_mpi.data.dali import DaliFolderLoader, dali_available  # noqa: E402
from hdbl_mpi.data.folder import TorchvisionFolderLoader  # noqa: E402
from hdbl_mpi.data.images import index_folder  # noqa: E402

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def make_folder(root: Path, images: int, size: int, classes: int = 10, split: str = "train") -> None:
    """`images` JPEGs of `size` px in root/split/classNNN: each class a colour gradient of its own (so a model
    can learn them), varied per image and with noise, so they compress like photographs rather than flat
    colours."""
    palette = np.random.default_rng(12345).uniform(0, 255, (classes, 2, 3)).astype(np.float32)
    rng = np.random.default_rng(0 if split == "train" else 1)
    ramp = np.linspace(0.0, 1.0, size, dtype=np.float32)
    for i in range(images):
        folder = root / split / f"class{i % classes:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        low, high = palette[i % classes] + rng.normal(0, 30, (2, 3)).astype(np.float32)
        gradient = low + (high - low) * (ramp[:, None, None] + ramp[None, :, None]) / 2
        noisy = gradient + rng.normal(0, 12, (size, size, 3)).astype(np.float32)
        Image.fromarray(noisy.clip(0, 255).astype(np.uint8)).save(folder / f"{i:05d}.JPEG", quality=90)


def images_per_second(loader, steps: int, batch: int, resolution: int, device: str, repeats: int) -> float:
    """Median rate over ``repeats`` timed commits, after a warm-up commit of the same size (every worker
    process must have started and imported its transforms before timing, or the first commit measures that)."""
    rates = []
    for repeat in range(repeats + 1):
        start = time.perf_counter()
        for inputs, _ in loader.batches(steps, batch, resolution):
            if device != "cpu":
                inputs.sum().item()  # wait for the GPU, so the time includes the work
        if repeat:
            rates.append(steps * batch / (time.perf_counter() - start))
    return float(np.median(rates))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=600)
    parser.add_argument("--size", type=int, default=200, help="side of the generated JPEGs in pixels")
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=6, help="timed batches per loader")
    parser.add_argument("--repeats", type=int, default=3, help="timed commits per loader; the median is shown")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--gpu", action="store_true", help="DALI decodes on GPU 0 ('mixed') and outputs there")
    args = parser.parse_args()
    if args.gpu and not torch.cuda.is_available():
        print("--gpu: no CUDA device here; DALI runs on the CPU", file=sys.stderr)
        args.gpu = False
    device = "cuda:0" if args.gpu else "cpu"
    with tempfile.TemporaryDirectory() as tmp:
        make_folder(Path(tmp), args.images, args.size)
        index = index_folder(tmp, "train")
        print(f"{len(index)} JPEGs {args.size}x{args.size}, resolution {args.resolution}, batch {args.batch}, "
              f"median of {args.repeats} timed commits of {args.steps * args.batch} images after one warm-up commit")
        print(f"{'loader':<22}{'threads':>8}{'images/s':>12}")
        for threads in args.threads:
            common = dict(train=True, mean=MEAN, std=STD, num_threads=threads, device=device)
            rows = [("torchvision DataLoader", TorchvisionFolderLoader(index, **common))]
            if dali_available():
                name = "DALI mixed (GPU)" if args.gpu else "DALI cpu"
                rows.append((name, DaliFolderLoader(index, **common, device_id=0 if args.gpu else None)))
            for name, loader in rows:
                rate = images_per_second(loader, args.steps, args.batch, args.resolution, device, args.repeats)
                print(f"{name:<22}{threads:>8}{rate:>12.0f}")
        if not dali_available():
            print("NVIDIA DALI is not installed (pip install .[dali]); only the torchvision path was timed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
