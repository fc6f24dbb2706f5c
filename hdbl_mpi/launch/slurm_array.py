"""`hdbl sweep --slurm`: a SLURM array job over a sweep's runs, built on the one batch script the package ships.

The array's #SBATCH options are those of hdbl_mpi/launch/slurm/hdbl.sbatch (nodes, GPUs, time limit, the warning
signal before it, requeue), read from the installed package (package data, so a wheel install has them too),
with --ntasks set to what the sweep's largest run needs. Task i reads line i of the manifest (its run directory
and --set arguments) and execs that same batch script on it, so a sweep's run passes SLURM's warning on and is
requeued after a checkpointed stop exactly as a single job is: the shell that does it exists once.
"""

from __future__ import annotations

import re
import shlex
from importlib import resources
from pathlib import Path

from hdbl_mpi.errors import HdblError
from hdbl_mpi.run import rundir

TEMPLATE = "hdbl.sbatch"
_OWN = re.compile(r"--(job-name|output|array|ntasks)=")  # the array sets these itself


def sbatch_template() -> Path:
    """The packaged batch script; an error naming the fix where the installation lacks it (never a silent array
    without the warning signal and requeue)."""
    path = Path(str(resources.files("hdbl_mpi.launch") / "slurm" / TEMPLATE))
    if not path.is_file():
        raise HdblError(f"the package's SLURM batch script is missing ({path}): reinstall hdbl-mpi (it ships "
                        f"hdbl_mpi/launch/slurm/{TEMPLATE} as package data).")
    return path


def sbatch_options(ntasks: int, template: Path | None = None) -> list[str]:
    """The batch script's #SBATCH options with --ntasks set to `ntasks`; job name, output and array are the
    array's own."""
    options = [f"--ntasks={ntasks}"]
    for line in (template or sbatch_template()).read_text().splitlines():
        match = re.match(r"#SBATCH\s+(\S+)", line)
        if match and not _OWN.match(match.group(1)):
            options.append(match.group(1))
    return options


def slurm_array(config: str, count: int, manifest: Path, logs: Path, ntasks: int, python: str) -> str:
    """The array job script: `count` tasks, task i runs the batch script on line i of `manifest` (a run directory,
    then its --set arguments as shell words) with `config`, skipping a run that already finished."""
    template = sbatch_template()
    options = "\n".join(f"#SBATCH {o}" for o in sbatch_options(ntasks, template))
    return f"""#!/usr/bin/env bash
# hdbl sweep: {count} runs of {config}, one array task each (written by `hdbl sweep --slurm`); each task runs the
# package's batch script ({template}) on its line of {manifest}.
#SBATCH --job-name=hdbl-sweep
#SBATCH --array=1-{count}
#SBATCH --output={logs}/%A_%a.out
{options}
set -uo pipefail
eval "set -- $(sed -n "${{SLURM_ARRAY_TASK_ID}}p" {shlex.quote(str(manifest))})"
export HDBL_RUN_DIR="$1" HDBL_PYTHON={shlex.quote(python)}
shift
[ -f "$HDBL_RUN_DIR/{rundir.SUMMARY}" ] && ! grep -q '"{rundir.INCOMPLETE}"' "$HDBL_RUN_DIR/{rundir.SUMMARY}" && \\
    {{ echo "finished already: $HDBL_RUN_DIR"; exit 0; }}
exec bash {shlex.quote(str(template))} {shlex.quote(config)} "$@"
"""
