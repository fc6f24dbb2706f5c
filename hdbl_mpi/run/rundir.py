"""The run directory: the documented set of files a training run leaves behind.

Only the server rank writes here, so a cluster needs no shared file system for training itself.

    config.yaml      resolved config (after --set overrides); --resume reads it back
    plan.json        the dual-batch plan (SPEC §4)
    commits.jsonl    one JSON record per merged commit
    epochs.csv       epoch, lr, train loss/acc, test loss/acc, wall seconds
    summary.json     final figures, counters, versions, restarts
    checkpoint.pt    last checkpoint (global weights, server counters, history); replaced atomically
    train.log        what the server printed
    profile.json     with `profile: auto`: the step-time and memory profile measured at start-up
    trace.json       Chrome-trace / Perfetto timeline of every commit (compute, exchange, wait per worker)
    tensorboard/     TensorBoard scalars per epoch, when the tensorboard extra is installed

Every whole-file write goes to a temporary file in the same directory and is renamed over the target, so a
crash never leaves a half-written file under the documented name.
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any

CONFIG, PLAN, COMMITS, EPOCHS, SUMMARY, CHECKPOINT, LOG, PROFILE, TRACE, TENSORBOARD = (
    "config.yaml", "plan.json", "commits.jsonl", "epochs.csv", "summary.json", "checkpoint.pt", "train.log",
    "profile.json", "trace.json", "tensorboard",
)
EPOCH_COLUMNS = ("epoch", "stage", "resolution", "lr", "train_loss", "train_acc", "test_loss", "test_acc", "wall_s",
                 "train_time_s")
CHECKPOINT_FORMAT = 1


def default_run_dir() -> Path:
    return Path("runs") / datetime.now().strftime("%Y%m%d-%H%M%S")


def atomic_write_bytes(path: Path, data: bytes, durable: bool = True) -> None:
    """Write via a temporary file (+ fsync when `durable`) + rename, so readers see the old or the new file,
    never a mix. `durable=False` skips the fsync for small files rewritten often on the server's path
    (epochs.csv): a process crash still leaves a whole file; only a power loss could lose the last rewrite."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: Path, text: str, durable: bool = True) -> None:
    atomic_write_bytes(path, text.encode(), durable)


def write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def write_epochs(path: Path, rows: list[dict]) -> None:
    """Rewrite epochs.csv from all known rows (a few hundred at most), sorted by epoch."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=EPOCH_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    for row in sorted(rows, key=lambda r: r["epoch"]):
        writer.writerow({k: ("" if row.get(k) is None else row[k]) for k in EPOCH_COLUMNS})
    atomic_write_text(path, buffer.getvalue(), durable=False)


def read_epochs(path: Path) -> list[dict]:
    """Read epochs.csv back, with numbers as numbers and empty cells as None."""
    rows = []
    with open(path, newline="") as handle:
        for raw in csv.DictReader(handle):
            rows.append({k: (None if v == "" else (int(v) if k in ("epoch", "stage", "resolution") else float(v)))
                         for k, v in raw.items()})
    return rows


class CommitLog:
    """Append-only commits.jsonl, flushed per record so a crash loses at most the record being written."""

    def __init__(self, path: Path, keep_up_to: int | None = None) -> None:
        if keep_up_to is not None and path.exists():
            kept = [line for line in path.read_text().splitlines()
                    if line.strip() and json.loads(line)["global_commit"] <= keep_up_to]
            atomic_write_text(path, "".join(line + "\n" for line in kept))
        self._handle = open(path, "a", buffering=1)

    def write(self, record: dict) -> None:
        self._handle.write(json.dumps(record, separators=(",", ":")) + "\n")

    def close(self) -> None:
        self._handle.close()


def read_commits(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def save_checkpoint(path: Path, vector, state: dict) -> None:
    """Global weights (a float32 tensor) and the server's state, written atomically."""
    import torch

    buffer = io.BytesIO()
    torch.save({"format": CHECKPOINT_FORMAT, "vector": vector, "state": state}, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: Path) -> tuple[Any, dict]:
    """Return (vector, state); refuses files of another format with a message that says so."""
    import torch

    from hdbl_mpi.errors import HdblError

    if not path.is_file():
        raise HdblError(
            f"no checkpoint at {path}: the run stopped before its first checkpoint (run.checkpoint_every epochs). "
            "Start it again without --resume."
        )
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated, damaged, or not written by hdbl (a pickle of other objects)
        raise HdblError(f"{path} cannot be read as an hdbl checkpoint ({type(err).__name__}: "
                        f"{str(err).splitlines()[0][:200]}); it is damaged or was not written by hdbl.") from None
    if not isinstance(blob, dict) or blob.get("format") != CHECKPOINT_FORMAT:
        raise HdblError(f"{path} is not an hdbl checkpoint of format {CHECKPOINT_FORMAT}; it cannot be resumed.")
    return blob["vector"], blob["state"]
