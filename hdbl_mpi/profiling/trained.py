"""The profiled step is the trained step: profile settings taken from a run's config, and `hdbl profile
--config`, which also times that config's input pipeline.

A plan balances commit times predicted from tau(B); if the profiler timed plain SGD in fp32 on a generated
in-memory batch while the run trains AdamW in bf16, channels-last and compiled, on JPEGs decoded by DALI, the
prediction and the plan would be off by whatever those differences cost. So `dual.profile: auto` and `hdbl
profile --config` time the configured optimizer, precision, memory format and compiled form, and `--config`
draws the timed steps' batches from the config's own training data, decoded as training decodes them, and
reports which share of each step was spent waiting for a batch (entry["input"]).
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

from hdbl_mpi.profiling.entry import ProfileEntry
from hdbl_mpi.profiling.measure import ProfileSettings, profile_device

if TYPE_CHECKING:
    import torch

    from hdbl_mpi.data.sources import BatchSource
    from hdbl_mpi.schema import Config, TrainConfig


def training_settings(train: TrainConfig, source: BatchSource | None = None, **fields: Any) -> ProfileSettings:
    """Profile settings that time the step `train` configures (its optimizer, precision, memory format and
    compile), on `source`'s batches if given; `fields` set the rest (steps, budget, batch sizes)."""
    from hdbl_mpi.optim.optimizers import optimizer_for

    return ProfileSettings(precision=train.precision, optimizer=lambda model: optimizer_for(model, train),
                           channels_last=train.channels_last, compile=train.compile, source=source, **fields)


def profile_config(config: Config, device: torch.device, resolutions: list[int] | None,
                   **fields: Any) -> list[ProfileEntry]:
    """`hdbl profile --config`: this device's entries for the config's model at `resolutions` (default: every
    resolution of its schedule), timed on batches of its training data. Each entry records the data's
    decoder, the input share of the step and which options were timed."""
    from hdbl_mpi.data.sources import open_source
    from hdbl_mpi.models import build_model
    from hdbl_mpi.rules.schedule import from_config as schedule_from_config

    info, source = open_source(config, train=True, device=device, seed=config.train.seed)
    schedule = schedule_from_config(config, info.native_resolution)
    m, top = config.model, schedule.resolutions[-1]
    settings = training_settings(config.train, source, **fields)
    entries = profile_device(
        lambda _: build_model(m.name, info.num_classes, info.channels, top, m.stem, m.dropout, m.width, m.options),
        m.name, info.num_classes, info.channels, resolutions or schedule.resolutions, device, settings)
    return [replace(e, input=replace(e.input, data=info.name, decoder=info.decoder)) if e.input else e
            for e in entries]
