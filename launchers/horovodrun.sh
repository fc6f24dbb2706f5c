#!/usr/bin/env bash
# Start hdbl under horovodrun (its MPI controller), checked against the config first. Examples:
#   launchers/horovodrun.sh train configs/demo.yaml
#   launchers/horovodrun.sh -H node01:4,node02:4 train CONFIG
#   launchers/horovodrun.sh --hostfile hostfiles/horovod.hosts --iface eth0 train CONFIG
# Needs Horovod built with MPI (launchers/install_horovod.sh). With Open MPI 5 the command carries
# --binding-args="--bind-to none --map-by slot", which horovodrun's defaults lack. See docs/launching.md.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${HDBL_PYTHON:-$here/.venv/bin/python}"
[ -x "$python" ] || python="$(command -v python3)"
exec "$python" -m hdbl_mpi.cli launch --launcher horovodrun "$@"
