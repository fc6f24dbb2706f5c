"""Start a run from saved weights (`train.init_from`): a state dict, or an hdbl checkpoint or run directory.

This is a new run, not a resume: the weights are loaded into the freshly built model before training, and the
counters, schedule and optimizer start from zero. Names listed in `train.init_skip` (prefixes such as ``fc`` or
``classifier.3``) are not loaded, so a classifier head for another number of classes starts freshly initialised
(fine-tuning). Every other tensor of the model must be in the file with the same shape; a mismatch names the
layers. An hdbl checkpoint carries its vector's layout (names and shapes), so it loads into any model that has
those names.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from hdbl_mpi.errors import ConfigError
from hdbl_mpi.run import rundir


@dataclass(frozen=True)
class InitReport:
    path: str
    loaded: int
    skipped: list[str]
    unused: list[str]  # in the file, not in the model

    def line(self) -> str:
        return (f"init_from {self.path}: {self.loaded} tensors loaded"
                + (f", {len(self.skipped)} skipped by train.init_skip" if self.skipped else "")
                + (f", {len(self.unused)} in the file not in the model" if self.unused else ""))


def read_weights(path: str) -> dict[str, torch.Tensor]:
    """Name -> tensor from a state dict file (a bare one, or under 'state_dict'/'model'; DDP's 'module.' prefix
    dropped) or an hdbl checkpoint (a checkpoint.pt, or the run directory that holds it)."""
    p = Path(path)
    if p.is_dir():
        p = p / rundir.CHECKPOINT
    if not p.is_file():
        raise ConfigError(f"train.init_from is {path}, which is not a file or a run directory with a checkpoint.")
    if p.read_bytes()[:len(rundir.CHECKPOINT_MAGIC)] == rundir.CHECKPOINT_MAGIC.encode():
        return _from_checkpoint(p)
    try:
        blob = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ConfigError(f"train.init_from {p} is neither an hdbl checkpoint nor a loadable state dict "
                          f"({type(err).__name__}: {str(err).splitlines()[0][:200]}).") from None
    for key in ("state_dict", "model"):
        if isinstance(blob, dict) and isinstance(blob.get(key), dict):
            blob = blob[key]
    if not isinstance(blob, dict) or not all(isinstance(v, torch.Tensor) for v in blob.values()):
        raise ConfigError(f"train.init_from {p} holds no state dict (a mapping of names to tensors).")
    return {k.removeprefix("module."): v for k, v in blob.items()}


def _from_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    vector, state = rundir.load_checkpoint(path)
    layout = state.get("flat_layout")
    if not layout:
        raise ConfigError(f"{path} was written before checkpoints recorded their layout; load it with "
                          "`--resume` into the same model, or save a state dict from `hdbl evaluate`'s model.")
    out, offset = {}, 0
    for name, shape in zip(layout["names"], layout["shapes"], strict=True):
        n = int(torch.Size(shape).numel())
        out[name.split(":", 1)[1]] = vector[offset:offset + n].view(shape)
        offset += n
    return out


def load_initial_weights(model: nn.Module, path: str, skip: list[str]) -> InitReport:
    """Load the weights at `path` into `model` (in place) but for the names under `skip`."""
    weights = read_weights(path)
    own = model.state_dict()

    def skipped(name: str) -> bool:
        return any(name == s or name.startswith(s + ".") for s in skip)

    wanted = {k: v for k, v in own.items() if not skipped(k)}
    missing = [k for k, v in wanted.items() if k not in weights and v.is_floating_point()]
    wrong = [f"{k} ({tuple(weights[k].shape)} in the file, {tuple(v.shape)} in the model)"
             for k, v in wanted.items() if k in weights and weights[k].shape != v.shape]
    if missing or wrong:
        raise ConfigError(f"train.init_from {path} does not fit model: "
                          + "; ".join(([f"missing {', '.join(missing[:8])}"] if missing else [])
                                      + ([f"other shapes: {', '.join(wrong[:8])}"] if wrong else []))
                          + ". Skip layers with train.init_skip (e.g. [fc] for a new classifier head).")
    load = {k: weights[k].to(v.dtype) for k, v in wanted.items() if k in weights}
    model.load_state_dict(load, strict=False)
    return InitReport(path, len(load), sorted(k for k in own if skipped(k)),
                      sorted(k for k in weights if k not in own))
