"""`hdbl evaluate`: test a checkpoint, without training and without MPI (one process, like
pytorch/examples' `--evaluate`).

The run directory holds everything needed: config.yaml says which data, model and resolutions, and
checkpoint.pt holds the weights as the one flat vector every mode saves, so the same command tests a
parameter-server, allreduce or LocalSGD run, at any of its resolutions.
"""

from __future__ import annotations

import time
from pathlib import Path

from hdbl_mpi.errors import HdblError
from hdbl_mpi.run import rundir


def evaluate_checkpoint(target: str, config_path: str | None, overrides: list[str], resolution: int | None,
                        device_name: str, batch_size: int | None) -> dict:
    """Load the config and checkpoint of `target` (a run directory or a checkpoint file), evaluate on the
    test split and return the figures."""
    import torch

    from hdbl_mpi.comm.placement import take_device
    from hdbl_mpi.comm.wire import FlatState
    from hdbl_mpi.config import load_config
    from hdbl_mpi.data.sources import open_source
    from hdbl_mpi.engine import evaluate
    from hdbl_mpi.models import build_model
    from hdbl_mpi.rules.epoch_lengths import EpochLengths
    from hdbl_mpi.rules.schedule import from_config as schedule_from_config
    from hdbl_mpi.run.book import completed_epochs

    path = Path(target)
    checkpoint = path / rundir.CHECKPOINT if path.is_dir() else path
    config_file = Path(config_path) if config_path else checkpoint.parent / rundir.CONFIG
    if not config_file.is_file():
        raise HdblError(f"no config at {config_file}: pass a run directory, or --config with the run's YAML.")
    config = load_config(config_file, overrides)
    device = take_device(device_name, None, 0, "one process").device
    info, source = open_source(config, train=False, device=device, seed=config.train.seed)
    schedule = schedule_from_config(config, info.native_resolution)
    top = schedule.resolutions[-1]
    c = config.model
    model = build_model(c.name, info.num_classes, info.channels, top, c.stem, c.dropout, c.width, c.options).to(device)
    flat = FlatState(model)
    state = rundir.restore_checkpoint(checkpoint, flat, "the run's own config to evaluate it")
    chosen = resolution or top
    start = time.perf_counter()
    loss, acc = evaluate(model, source, chosen, batch_size or config.eval.batch_size, device)
    epoch = completed_epochs(state, EpochLengths.for_run(config, schedule))
    return {"checkpoint": str(checkpoint), "epoch": epoch, "mode": config.ps.mode, "dataset": info.name,
            "test_size": info.test_size, "resolution": chosen, "device": str(device), "top1": acc,
            "test_loss": loss, "seconds": time.perf_counter() - start, "torch": torch.__version__}
