"""The run directory: the documented set of files a training run leaves behind.

Only the server rank writes here, so a cluster needs no shared file system for training itself.

    config.yaml      resolved config (after --set overrides); --resume reads it back
    plan.json        the dual-batch plan (method §4)
    commits.jsonl    one JSON record per merged commit
    epochs.csv       epoch, stage, resolution, lr, train loss/acc, test loss/acc, wall and train seconds, commits
    summary.json     final figures, counters, versions, restarts
    checkpoint.pt    last checkpoint (weights, counters, history; format version + SHA-256); replaced atomically
    checkpoint-ranks/  each training rank's optimizer, RNG and data-stream state for checkpoint.pt (run/rankstate.py)
    train.log        what the server printed
    profile.json     with `profile: auto`: the step-time and memory profile measured at start-up
    trace.json       Chrome-trace / Perfetto timeline of every commit (compute, exchange, wait per worker)
    tensorboard/     TensorBoard scalars per epoch, when the tensorboard extra is installed
    .hdbl.lock       locked while the run lives, so a second run into the directory is refused (run/lock.py)

The records (a commit, an epoch row, the summary) are the dataclasses of run/records.py, written and read here.
Every whole-file write goes to a temporary file in the same directory and is renamed over the target, so a
crash never leaves a half-written file under the documented name.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any

from hdbl_mpi.run.records import EPOCH_COLUMNS, CommitRecord, EpochRow, Summary, from_mapping

CONFIG, PLAN, COMMITS, EPOCHS, SUMMARY, CHECKPOINT, LOG, PROFILE, TRACE, TENSORBOARD = (
    "config.yaml", "plan.json", "commits.jsonl", "epochs.csv", "summary.json", "checkpoint.pt", "train.log",
    "profile.json", "trace.json", "tensorboard",
)
CHECKPOINT_FORMAT = 2  # 1: a bare torch.save file (no checksum); 2: header with SHA-256 and length
CHECKPOINT_MAGIC = "HDBLCKPT"


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


def write_summary(path: Path, summary: Summary) -> None:
    write_json(path, summary.to_dict())


INCOMPLETE = "incomplete"  # summary.json key of a run that ended early and can be resumed (every worker lost)


def finished(run_dir: Path) -> bool:
    """Whether the run in `run_dir` has ended for good: a summary.json without INCOMPLETE. A run whose every
    worker was lost writes a summary with its checkpoint, and is still to be resumed (--resume auto, sweeps)."""
    path = Path(run_dir) / SUMMARY
    if not path.is_file():
        return False
    try:
        return not json.loads(path.read_text()).get(INCOMPLETE)
    except ValueError:
        return False  # a summary being written or damaged: not a finished run


def read_summary(path: Path) -> Summary:
    """summary.json as a :class:`Summary`; an unreadable or incomplete file is an HdblError naming it."""
    from hdbl_mpi.errors import HdblError

    try:
        return Summary.from_dict(json.loads(Path(path).read_text()))
    except ValueError as err:
        raise HdblError(f"{path} is not valid JSON ({err}).") from None
    except KeyError as err:
        raise HdblError(f"{path} is not a finished run's summary: {err.args[0]}.") from None


def write_epochs(path: Path, rows: list[EpochRow]) -> None:
    """Rewrite epochs.csv from all known rows (a few hundred at most), sorted by epoch."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=EPOCH_COLUMNS)
    writer.writeheader()
    for row in sorted(rows, key=lambda r: r.epoch):
        writer.writerow({k: ("" if v is None else v) for k, v in row.to_dict().items()})
    atomic_write_text(path, buffer.getvalue(), durable=False)


def read_epochs(path: Path) -> list[EpochRow]:
    """Read epochs.csv back, with numbers as numbers and empty cells as None."""
    with open(path, newline="") as handle:
        return [from_mapping(EpochRow, {k: (None if v == "" else (int(v) if k in _INT_COLUMNS else float(v)))
                                        for k, v in raw.items()})
                for raw in csv.DictReader(handle)]


_INT_COLUMNS = ("epoch", "stage", "resolution", "commits")


class CommitLog:
    """Append-only commits.jsonl, flushed per record so a crash loses at most the record being written. A
    resumed run first drops the records of commits after its checkpoint (`keep_up_to`; a new run: 0), a record
    the crash cut short among them (the checkpoint is written after the records it covers)."""

    def __init__(self, path: Path, keep_up_to: int | None = None) -> None:
        if keep_up_to is not None and path.exists():
            kept = [line for line in path.read_text().splitlines() if _global_commit(line) <= keep_up_to]
            atomic_write_text(path, "".join(line + "\n" for line in kept))
        self._handle = open(path, "a", buffering=1)

    def write(self, record: CommitRecord) -> None:
        self._handle.write(json.dumps(record.to_dict(), separators=(",", ":")) + "\n")

    def close(self) -> None:
        self._handle.close()


def _global_commit(line: str) -> float:
    """The record's global commit; infinity for a blank line or one cut short (never kept)."""
    try:
        return float(json.loads(line)["global_commit"])
    except (ValueError, KeyError, TypeError):
        return float("inf")


def read_commits(path: Path) -> list[CommitRecord]:
    return [from_mapping(CommitRecord, json.loads(line)) for line in Path(path).read_text().splitlines()
            if line.strip()]


def save_blob(path: Path, obj: dict) -> str:
    """Write `obj` (plain types and tensors) atomically with a format version and a SHA-256 of the payload, so a
    damaged or truncated file is refused instead of used; returns the SHA-256. Checkpoints and the rank files
    beside them (run/rankstate.py) share this format.

    Layout: one ASCII header line ``HDBLCKPT <format> <sha256> <payload bytes>``, then the payload,
    ``torch.save(obj)`` (it loads with weights_only)."""
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    payload = buffer.getvalue()
    digest = hashlib.sha256(payload).hexdigest()
    header = f"{CHECKPOINT_MAGIC} {CHECKPOINT_FORMAT} {digest} {len(payload)}\n"
    atomic_write_bytes(path, header.encode() + payload)
    return digest


def load_blob(path: Path) -> tuple[Any, str]:
    """(object, SHA-256) of a file written by :func:`save_blob`. A missing file, another format version, a checksum
    or length mismatch and an unreadable payload are each refused with an HdblError that says which and what to
    do."""
    import torch

    from hdbl_mpi.errors import HdblError

    if not path.is_file():
        raise HdblError(f"{path} is missing; resume from a complete copy of the run directory, or start again.")
    data = path.read_bytes()
    newline = data.find(b"\n", 0, 200)
    fields = data[:newline].decode("ascii", "replace").split() if newline > 0 else []
    if len(fields) != 4 or fields[0] != CHECKPOINT_MAGIC:
        old = " It looks like a checkpoint of an older hdbl (format 1, a bare torch file)." if data[:2] == b"PK" else ""
        raise HdblError(f"{path} is not an hdbl checkpoint (no {CHECKPOINT_MAGIC} header).{old} It cannot be "
                        "resumed; start the run again, or resume it with the hdbl version that wrote it.")
    version, digest, length = fields[1], fields[2], fields[3]
    if version != str(CHECKPOINT_FORMAT):
        raise HdblError(f"{path} has checkpoint format {version}, this hdbl reads format {CHECKPOINT_FORMAT}; "
                        "resume it with the hdbl version that wrote it.")
    payload = data[newline + 1:]
    if not length.isdigit() or len(payload) != int(length):
        raise HdblError(f"{path} is truncated or damaged: {len(payload)} payload bytes, the header says {length}. "
                        "Resume from an earlier copy, or start again.")
    if hashlib.sha256(payload).hexdigest() != digest:
        raise HdblError(f"{path} is damaged: its SHA-256 does not match the one written with it. Resume from an "
                        "earlier copy, or start again.")
    try:
        blob = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except Exception as err:  # a payload that hashes correctly but is not ours
        raise HdblError(f"{path} cannot be read as an hdbl checkpoint ({type(err).__name__}: "
                        f"{str(err).splitlines()[0][:200]}).") from None
    return blob, digest


def save_checkpoint(path: Path, vector, state: dict) -> None:
    """Global weights (a float32 tensor) and the run's state, in the :func:`save_blob` format."""
    save_blob(path, {"vector": vector, "state": state})


def load_checkpoint(path: Path) -> tuple[Any, dict]:
    """Return (vector, state) of a checkpoint (see :func:`load_blob` for what is refused)."""
    from hdbl_mpi.errors import HdblError

    if not path.is_file():
        raise HdblError(
            f"no checkpoint at {path}: the run stopped before its first checkpoint (run.checkpoint_every epochs). "
            "Start it again without --resume."
        )
    blob, _ = load_blob(path)
    if not isinstance(blob, dict) or "vector" not in blob or "state" not in blob:
        what = " It is one rank's own state (optimizer, random generators, data stream) from checkpoint-ranks/, " \
               "not the run's weights." if isinstance(blob, dict) and "rank" in blob else ""
        raise HdblError(f"{path} holds no global weights.{what} Use the run directory, or the {CHECKPOINT} in it.")
    return blob["vector"], blob["state"]


def restore_checkpoint(path: Path, target, config_name: str = "the run's own config") -> dict:
    """Load the checkpoint's weights into `target` (the configured model's FlatState) and return the saved
    state; a checkpoint of another model size is refused, naming both sizes."""
    from hdbl_mpi.errors import HdblError

    vector, state = load_checkpoint(path)
    if vector.numel() != target.numel:
        raise HdblError(f"{path} holds {vector.numel()} weights but the configured model has {target.numel}; "
                        f"use {config_name}.")
    target.load(vector)
    return state
