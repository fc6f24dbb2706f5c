"""The part of summary.json every mode shares (`RunFacts`): what ran, on what data, model, devices and versions.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from hdbl_mpi.run import rundir
from hdbl_mpi.run.records import CommitRecord, RunFacts
from hdbl_mpi.run.slow import slow_record

if TYPE_CHECKING:
    from hdbl_mpi.startup import RunSetup


def run_facts(setup: RunSetup) -> RunFacts:
    """The part of summary.json every mode shares: what ran, on what, where."""
    import platform
    import socket
    from dataclasses import asdict

    import mpi4py
    import numpy as np
    import torch
    from mpi4py import MPI

    from hdbl_mpi import __version__
    from hdbl_mpi.comm.cuda_aware import cuda_aware_mpi
    from hdbl_mpi.rules.plan import plan_summary
    from hdbl_mpi.throughput import throughput_of

    resolutions = sorted(setup.plans)
    data, ranks = setup.data, setup.ranks
    versions = {"hdbl_mpi": __version__, "python": platform.python_version(), "torch": torch.__version__,
                "numpy": np.__version__, "mpi4py": mpi4py.__version__,
                "mpi_library": MPI.Get_library_version().splitlines()[0].strip(" \x00"),
                "mpi_standard": "{}.{}".format(*MPI.Get_version())}
    return RunFacts(
        world_size=setup.world.size, resolutions=resolutions, schedule=[asdict(s) for s in setup.schedule.stages],
        dataset={"name": data.name, "train_size": setup.dataset_size, "test_size": data.test_size,
                 "source": data.source, "classes": data.num_classes},
        decoding={str(rank): info.decoder for rank, info in enumerate(ranks)},
        skipped_files=sorted({f for info in ranks for f in info.skipped}),
        model={"name": setup.config.model.name, "parameters_and_buffers": setup.flat.numel,
               "bytes": setup.flat.nbytes, "notes": setup.model_notes, "precision": setup.config.train.precision,
               "throughput": throughput_of(setup.config.train, ranks, setup.flat.shapes).to_dict()},
        plan=setup.plans[resolutions[-1]].to_dict(),
        plans=plan_summary([setup.plans[r] for r in resolutions], resolutions),
        devices={str(rank): {"device": info.device, "threads": info.threads, "local_rank_from": info.local_rank_from,
                             "gpu_sharing": info.gpu_sharing} for rank, info in enumerate(ranks)},
        host=socket.gethostname(), versions=versions,
        finished=datetime.now(timezone.utc).isoformat(timespec="seconds"), cuda_aware_mpi=cuda_aware_mpi().to_dict(),
        slow=slow_record(setup.config.debug.slow, _commits(setup.run_dir / rundir.COMMITS)),
        startup=setup.startup.to_dict() if setup.startup else None)


def _commits(path: Path) -> list[CommitRecord]:
    return rundir.read_commits(path) if path.is_file() else []
