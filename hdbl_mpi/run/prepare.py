"""Rank 0's part of start-up in the run directory: create it, and when resuming load the checkpoint's weights
and state and each training rank's own state (refusing a run that already ended), then write the resolved
config and the plan. A restart record says when and from where each resume started (SLURM requeues too).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from hdbl_mpi.errors import HdblError
from hdbl_mpi.rules.epoch_lengths import EpochLengths
from hdbl_mpi.rules.plan import plan_summary
from hdbl_mpi.run import rundir
from hdbl_mpi.run.book import completed_epochs
from hdbl_mpi.run.rankstate import RankState, load_rank_states
from hdbl_mpi.run.restarts import RESTART_ENV, restart_record
from hdbl_mpi.schema import Config, has_server

if TYPE_CHECKING:
    from hdbl_mpi.comm.wire import FlatState
    from hdbl_mpi.rules.plan import Plan
    from hdbl_mpi.rules.schedule import Schedule


@dataclass
class Prepared:
    """What rank 0 found in the run directory: the checkpoint's state when resuming, and the training ranks'
    own states it names."""

    restored: dict | None = None
    states: dict[int, RankState] = field(default_factory=dict)


def prepare_run_dir(run_path: Path, config: Config, config_yaml: str, schedule: Schedule, plans: dict[int, Plan],
                    flat: FlatState, checkpoint: str | None, size: int) -> Prepared:
    """Rank 0: create the run directory, load the checkpoint and the training ranks' states when resuming
    (refusing a finished run), write the resolved config (`config_yaml`) and the plan."""
    run_path.mkdir(parents=True, exist_ok=True)
    prepared = Prepared()
    if checkpoint:
        restored = rundir.restore_checkpoint(Path(checkpoint), flat)
        restored["restarts"] = [*restored.get("restarts", []), _restart(restored, run_path, schedule, config)]
        prepared = Prepared(restored, _rank_states(config, run_path, restored, size))
    rundir.atomic_write_text(run_path / rundir.CONFIG, config_yaml)
    resolutions = sorted(plans)
    rundir.write_json(run_path / rundir.PLAN, plan_summary([plans[r] for r in resolutions], resolutions))
    return prepared


def _rank_states(config: Config, run_path: Path, restored: dict, size: int) -> dict[int, RankState]:
    """The training ranks' states the checkpoint names (none for a checkpoint written before they existed)."""
    roles = stood_in(restored.get("replacements") or [])
    if has_server(config):  # the workers, ranks 1..n; the point is the merged commit
        ranks, at = list(range(1, config.dual.workers + 1)), int(restored.get("merged", 0))
    else:  # every rank trains; the point is the epoch
        ranks, at = list(range(size)), int(restored.get("epoch", 0))
    saved = load_rank_states(run_path, restored.get("rank_states"), ranks + sorted(roles), at)
    states = {roles.get(r, r): state for r, state in saved.items()}  # a spare's state goes back to its role
    missing = [r for r in ranks if r not in states]
    restored["restarts"][-1]["rank_states"] = len(states)
    if missing:
        print(f"hdbl train: resuming without the own state of rank(s) {missing} (an older checkpoint, or lost "
              "workers): they start with fresh momentum and reseeded random numbers", flush=True)
    return states


def stood_in(replacements: list[dict]) -> dict[int, int]:
    """Spare rank -> the worker rank whose role it played (ps.spares; a stand-in's stand-in plays the first one).
    A resume starts every worker in its own rank again and the spares idle, so a spare's saved state (momentum,
    RNGs, data stream) goes to the worker whose role it carried on."""
    roles: dict[int, int] = {}
    for r in replacements:
        roles[int(r["by"])] = roles.get(int(r["rank"]), int(r["rank"]))
    return roles


def _restart(state: dict, run_path: Path, schedule: Schedule, config: Config) -> dict:
    """The restart record of a resumed run; a run that already ended is refused, saying what to do."""
    done = completed_epochs(state, EpochLengths.for_run(config, schedule))
    if state.get("early_stopped_at") is not None:
        raise HdblError(f"{run_path} stopped early after epoch {state['early_stopped_at']} "
                        "(train.early_stop_patience); there is nothing to resume.")
    if done >= schedule.epochs:
        raise HdblError(f"{run_path} already finished its {done} epochs; to train longer, resume with "
                        f"--set train.epochs=N (N > {schedule.epochs}).")
    record = {"epoch": done, "time": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    if os.environ.get("SLURM_JOB_ID"):  # a requeued batch job (launchers/slurm/hdbl.sbatch) says which start it is
        record["slurm_job"] = os.environ["SLURM_JOB_ID"]
        record["slurm_restart_count"] = int(os.environ.get("SLURM_RESTART_COUNT") or 0)
    if "merged" in state:
        record["at_commit"] = state["merged"]
    record.update(restart_record(os.environ.get(RESTART_ENV), run_path / rundir.CHECKPOINT))  # hdbl launch's
    return record
