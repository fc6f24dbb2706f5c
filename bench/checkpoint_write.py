"""What a checkpoint costs the training loop now that its files are written in the background (run/writer.py):
the time `EpochBook.save` takes in the caller (copying the counters and queueing) against the time the writer
thread spends on the files, for a model of N parameters with W workers' rank files (momentum: one more vector).

    python bench/checkpoint_write.py                       # ResNet-18 (11,689,512 parameters), 4 workers, 3 times
    python bench/checkpoint_write.py --params 1000000 --workers 8 --dir /scratch/tmp

The caller's time is what a reply waits; before the writer it also waited for every file.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from hdbl_mpi.run.book import BookPolicy, BookState, EpochBook  # noqa: E402
from hdbl_mpi.run.progress import Progress  # noqa: E402
from hdbl_mpi.run.rankstate import RankState  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=int, default=11_689_512)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dir", default=None, help="where to write (default: a new temporary directory)")
    args = parser.parse_args()
    run_dir = Path(args.dir or tempfile.mkdtemp(prefix="hdbl-ckpt-"))
    book = EpochBook(BookState(), BookPolicy(1, 1, 0, 0.0), run_dir, Progress(1, 0, 1, None, interactive=False),
                     None)
    weights = torch.randn(args.params)
    ranks = {r: RankState(r, 0, optimizer={"state": {0: {"momentum_buffer": torch.randn(args.params)}},
                                           "param_groups": [{"lr": 0.1, "params": [0]}]})
             for r in range(1, args.workers + 1)}
    print(f"{args.params:,} parameters, {args.workers} rank files, in {run_dir}")
    for at in range(1, args.repeat + 1):
        snapshot = weights.clone()  # what the server hands over (its snapshot is taken for evaluation anyway)
        start = time.perf_counter()
        book.save(snapshot, {"merged": at}, ranks, at)
        caller = time.perf_counter() - start
        book.close()  # waits for the files
        print(f"checkpoint {at}: caller {caller * 1e3:.1f} ms, files written in {book.write_seconds[-1]:.2f} s")


if __name__ == "__main__":
    main()
