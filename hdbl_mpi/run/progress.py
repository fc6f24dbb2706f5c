"""Terminal output of the server: a progress bar line and one stable line per epoch.

Workers print nothing unless --verbose; the server owns the terminal. mpirun forwards a rank's output line by
line (Open MPI/PRRTE buffers until a newline), so a bar redrawn in place with carriage returns would stay
invisible until the end. Instead a complete bar line - epoch, commits, commits/s, samples/s, ETA, last test
accuracy - is printed at most every `interval_s` seconds when the server's stdout is a terminal. Open MPI
gives ranks a pseudo-terminal even when mpirun's own output goes to a file, so set HDBL_PROGRESS=lines for
epoch lines only (HDBL_PROGRESS=bar forces the bar lines). Without a terminal (srun, MPICH, a plain pipe)
only the per-epoch lines are written, so logs stay short and parse-friendly.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from tqdm import tqdm

from hdbl_mpi.rules.epoch_lengths import EpochLengths


class Progress:
    def __init__(self, total_commits: int, done: int, lengths: EpochLengths, log_path: Path | None,
                 interval_s: float = 10.0, interactive: bool | None = None) -> None:
        self.lengths = lengths  # the commits of each epoch
        self.total = total_commits
        self.done = done
        if interactive is None:
            mode = os.environ.get("HDBL_PROGRESS", "auto")
            interactive = mode == "bar" or (mode == "auto" and sys.stdout.isatty())
        self.interactive = interactive
        self.interval_s = interval_s
        self._log = open(log_path, "a", buffering=1) if log_path else None
        self._start = self._last_status = time.monotonic()
        self._start_done = done
        self._samples = 0
        self._last_acc: float | None = None

    def status(self) -> str:
        """The bar as one line: `epoch 3/8  37%|███▋  | 12/32 [01:40<02:47, 8.33s/commit, 2100 img/s]`."""
        elapsed = max(time.monotonic() - self._start, 1e-9)
        rate = (self.done - self._start_done) / elapsed
        epochs = self.lengths.done(self.total)
        post = f"{self._samples / elapsed:.0f} img/s"
        if self._last_acc is not None:
            post += f", test {self._last_acc:.4f}"
        bar = tqdm.format_meter(self.done, self.total, elapsed, ncols=90, unit="commit", rate=rate or None,
                                postfix=post)
        return f"epoch {self.lengths.done(self.done)}/{epochs} {bar}"

    def commit(self, merged: int, samples: int) -> None:
        self.done = merged
        self._samples += samples
        now = time.monotonic()
        if self.interactive and now - self._last_status >= self.interval_s:
            self._last_status = now
            print(self.status(), flush=True)

    def line(self, text: str) -> None:
        """A line for the terminal and train.log."""
        print(text, flush=True)
        if self._log:
            self._log.write(text + "\n")

    def epoch(self, epoch: int, train_acc: float, test_acc: float | None, wall_s: float, train_loss: float) -> None:
        if test_acc is not None:
            self._last_acc = test_acc
        valid = f" Valid-accuracy={test_acc:.4f}" if test_acc is not None else ""
        self.line(f"Epoch[{epoch}] Train-loss={train_loss:.4f} Train-accuracy={train_acc:.4f}{valid} Time={wall_s:.2f}")

    def close(self) -> None:
        if self._log:
            self._log.close()
