"""Terminal output of the server: one progress bar and one stable line per epoch.

Workers print nothing unless --verbose; the server owns the terminal. On a terminal the bar shows epoch,
commits/s, samples/s, ETA and the last test accuracy; in a log file (no TTY) the bar is replaced by the
per-epoch lines alone, so CI logs and SLURM output stay readable.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from tqdm import tqdm


class Progress:
    def __init__(self, total_commits: int, done: int, commits_per_epoch: int, log_path: Path | None) -> None:
        self.commits_per_epoch = commits_per_epoch
        self.total = total_commits
        self._log = open(log_path, "a", buffering=1) if log_path else None
        self._bar = tqdm(
            total=total_commits, initial=done, unit="commit", dynamic_ncols=True, mininterval=0.5,
            disable=not sys.stderr.isatty(), file=sys.stderr,
        )
        self._start = time.monotonic()
        self._samples = 0
        self._last_acc: float | None = None

    def commit(self, merged: int, samples: int) -> None:
        self._samples += samples
        elapsed = max(time.monotonic() - self._start, 1e-9)
        epoch = merged // self.commits_per_epoch
        post = {"epoch": f"{epoch}/{self.total // self.commits_per_epoch}", "img/s": f"{self._samples / elapsed:.0f}"}
        if self._last_acc is not None:
            post["test"] = f"{self._last_acc:.4f}"
        self._bar.set_postfix(post, refresh=False)
        self._bar.update(1)

    def line(self, text: str) -> None:
        """A line for the terminal and train.log (through tqdm so the bar is not torn)."""
        if self._bar.disable:
            print(text, flush=True)
        else:
            self._bar.write(text)
        if self._log:
            self._log.write(text + "\n")

    def epoch(self, epoch: int, train_acc: float, test_acc: float | None, wall_s: float, train_loss: float) -> None:
        if test_acc is not None:
            self._last_acc = test_acc
        valid = f" Valid-accuracy={test_acc:.4f}" if test_acc is not None else ""
        self.line(f"Epoch[{epoch}] Train-loss={train_loss:.4f} Train-accuracy={train_acc:.4f}{valid} Time={wall_s:.2f}")

    def close(self) -> None:
        self._bar.close()
        if self._log:
            self._log.close()
