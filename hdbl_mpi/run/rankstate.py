"""What one training rank needs to continue exactly where it stopped: its optimizer state, its random-number
generators and the position of its data stream (`RankState`), and the files that keep them next to a checkpoint.

A worker's momentum, its RNGs and its data stream are not in the global weights, so a resume that restored only
the weights would restart momentum from zero and draw other samples: a different run. With the rank states a
resumed run continues as if never stopped (bit for bit where the mode is deterministic: BSP with two workers,
allreduce; ASP's arrival order is not deterministic by nature).

Layout in the run directory (rank 0 writes every file; the ranks send their states over MPI, so no shared file
system is needed)::

    checkpoint.pt                    weights and counters; its state names the rank files and their SHA-256
    checkpoint-ranks/<C>/rank-<r>.pt one file per training rank, C = the commit (or epoch) the checkpoint covers

Every rank file has the checkpoint's format: a header with format version, SHA-256 and length, then a payload
that loads with ``torch.load(weights_only=True)``. The rank files of a checkpoint go to a new directory first;
checkpoint.pt is replaced after them and names them, and only then are older rank directories removed, so a
crash at any moment leaves a checkpoint.pt whose rank files exist and match.
"""

from __future__ import annotations

import io
import random
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hdbl_mpi.errors import HdblError

RANKS_DIR = "checkpoint-ranks"


@dataclass
class RankState:
    """One rank's private state at a point covered by a checkpoint. Plain types and tensors only."""

    rank: int
    at: int  # the global commit (parameter server) or the epoch (data-parallel) the state belongs to
    optimizer: dict = field(default_factory=dict)
    torch_rng: torch.Tensor | None = None
    cuda_rng: list = field(default_factory=list)
    numpy_rng: dict = field(default_factory=dict)
    python_rng: list = field(default_factory=list)
    data: dict = field(default_factory=dict)  # the data source's stream position
    extra: dict = field(default_factory=dict)  # mode-specific (e.g. LocalSGD's round start)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_bytes(self) -> bytes:
        """For MPI: torch's own serialisation (a pickled tensor does not load back under torch 2.14)."""
        buffer = io.BytesIO()
        torch.save(self.to_dict(), buffer)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> RankState:
        return cls(**torch.load(io.BytesIO(data), map_location="cpu", weights_only=True))

    def optimizer_l1(self) -> float:
        """Sum of |x| over the optimizer's state tensors (momentum, Adam moments): a fingerprint for the log."""
        return sum(float(t.double().abs().sum()) for t in _tensors(self.optimizer.get("state", {}))
                   if t.is_floating_point())


GRAD_SCALER = "grad_scaler"  # RankState.extra key: the amp gradient scaler's state (hdbl_mpi.precision)


def capture(rank: int, at: int, optimizer: torch.optim.Optimizer, source: Any,
            extra: dict[str, Any] | None = None) -> RankState:
    """A copy of this process's state now (tensors cloned: training goes on and changes the originals)."""
    state = _clone(optimizer.state_dict())
    np_state = np.random.get_state(legacy=False)
    return RankState(
        rank=rank, at=at, optimizer=state, torch_rng=torch.get_rng_state(),
        cuda_rng=list(torch.cuda.get_rng_state_all()) if torch.cuda.is_available() and torch.cuda.is_initialized()
        else [],
        numpy_rng={"bit_generator": np_state["bit_generator"], "key": torch.from_numpy(np_state["state"]["key"].copy()),
                   "pos": int(np_state["state"]["pos"]), "has_gauss": int(np_state["has_gauss"]),
                   "gauss": float(np_state["gauss"])},
        python_rng=_plain(random.getstate()),
        data=_clone(source.state_dict()) if hasattr(source, "state_dict") else {},
        extra=_clone(extra or {}))


def restore(state: RankState, optimizer: torch.optim.Optimizer, source: Any) -> None:
    """Put this process back into `state`: optimizer, RNGs, data stream."""
    if state.optimizer:
        optimizer.load_state_dict(state.optimizer)
    if state.torch_rng is not None:
        torch.set_rng_state(state.torch_rng)
    if state.cuda_rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state.cuda_rng)
    if state.numpy_rng:
        n = state.numpy_rng
        np.random.set_state({"bit_generator": n["bit_generator"],
                             "state": {"key": n["key"].numpy().astype(np.uint32), "pos": n["pos"]},
                             "has_gauss": n["has_gauss"], "gauss": n["gauss"]})
    if state.python_rng:
        version, internal, gauss = state.python_rng
        random.setstate((version, tuple(internal), gauss))
    if state.data and hasattr(source, "load_state_dict"):
        source.load_state_dict(state.data)


# -- files ---------------------------------------------------------------------------------------------------------

def rank_file(run_dir: Path, at: int, rank: int) -> Path:
    return run_dir / RANKS_DIR / str(at) / f"rank-{rank}.pt"


def save_rank_states(run_dir: Path, at: int, states: dict[int, RankState]) -> dict[str, Any]:
    """Write every rank's file for the checkpoint covering `at`; the manifest checkpoint.pt keeps."""
    from hdbl_mpi.run.rundir import save_blob

    files = {}
    for rank, state in sorted(states.items()):
        path = rank_file(run_dir, at, rank)
        files[str(rank)] = {"file": str(path.relative_to(run_dir)), "sha256": save_blob(path, state.to_dict()),
                            "bytes": path.stat().st_size}
    return {"at": at, "ranks": files}


def prune_rank_states(run_dir: Path, keep: int | None) -> None:
    """Remove the rank files of every checkpoint but the one covering `keep` (after checkpoint.pt names it)."""
    root = run_dir / RANKS_DIR
    if not root.is_dir():
        return
    for child in root.iterdir():
        if child.name != str(keep):
            shutil.rmtree(child, ignore_errors=True)


def load_rank_states(run_dir: Path, manifest: dict[str, Any] | None, ranks: list[int],
                     at: int) -> dict[int, RankState]:
    """The rank files checkpoint.pt names, checked: they exist, their checksums are the ones written with the
    checkpoint, and they cover the same point and the same ranks. Anything else is refused, naming what differs."""
    from hdbl_mpi.run.rundir import load_blob

    if not manifest:
        return {}
    where = f"{run_dir / RANKS_DIR}"
    if int(manifest["at"]) != at:
        raise HdblError(f"checkpoint.pt covers {at} but its rank files ({where}) cover {manifest['at']}; they do not "
                        "belong together. Resume from a consistent copy of the run directory.")
    saved = sorted(int(r) for r in manifest["ranks"])
    if set(saved) - set(ranks):
        raise HdblError(f"checkpoint.pt has the state of ranks {saved}, this job trains on ranks {sorted(ranks)}; "
                        "resume with the same number of workers (dual.workers, ps.servers) as the run that wrote it.")
    states = {}
    for rank in saved:
        entry = manifest["ranks"][str(rank)]
        blob, digest = load_blob(run_dir / entry["file"])
        if digest != entry["sha256"]:
            raise HdblError(f"{run_dir / entry['file']} is not the rank file checkpoint.pt was written with (SHA-256 "
                            f"{digest[:12]}…, checkpoint.pt names {entry['sha256'][:12]}…); they do not belong "
                            "together. Resume from a consistent copy of the run directory.")
        state = RankState(**blob)
        if state.rank != rank or state.at > at:
            raise HdblError(f"{run_dir / entry['file']} holds rank {state.rank} at {state.at}, expected rank {rank} "
                            f"at or before {at}.")
        states[rank] = state
    return states


# -- helpers -------------------------------------------------------------------------------------------------------

def _clone(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, dict):
        return {k: _clone(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_clone(v) for v in value)
    return value


def _plain(value: Any) -> Any:
    """Tuples to lists (Python's RNG state), so the file loads with weights_only."""
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value


def _tensors(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _tensors(v)]
    if isinstance(value, list | tuple):
        return [t for v in value for t in _tensors(v)]
    return []
