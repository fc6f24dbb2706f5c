#!/usr/bin/env bash
# Start hdbl under mpirun (Open MPI or MPICH), checked against the config first. Examples:
#   launchers/mpirun.sh train configs/demo.yaml                        # this host, 1 server + 4 workers
#   launchers/mpirun.sh -H node01:3,node02:2 train configs/demo.yaml   # two hosts
#   launchers/mpirun.sh --hostfile hostfiles/openmpi.hosts --iface ib0 train CONFIG --set train.epochs=20
#   launchers/mpirun.sh --dry-run ...                                   # print the exact command only
# A thin wrapper over `hdbl launch --launcher mpirun`; see docs/launching.md.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${HDBL_PYTHON:-$here/.venv/bin/python}"
[ -x "$python" ] || python="$(command -v python3)"
exec "$python" -m hdbl_mpi.cli launch --launcher mpirun "$@"
