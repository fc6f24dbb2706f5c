#!/usr/bin/env bash
# The GPU path checked in one go, at most 8 minutes on one GPU, with nothing but the README's set-up
# (./bootstrap.sh): hdbl doctor, profiles at 32 px in fp32 and amp, a hybrid run (1 server + 4 workers sharing
# the GPU, DALI `mixed`, amp), the allreduce baseline, a bare torch loop and DALI vs torchvision decoding, then
# one table (OUT/gpu_check.md; every figure behind it in OUT/gpu_check.json). See bench/gpu_check.py.
#
#   bench/gpu_check.sh [OUT] [bench/gpu_check.py options]       OUT defaults to gpu-check-<date-time>
#   bench/gpu_check.sh /tmp/check --device cpu --model resnet_small --workers 2 --epochs 1 --images 400
#                                                                a CPU check of the script itself (what CI runs)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
venv="${HDBL_VENV:-.venv}"
if [ ! -x "$venv/bin/python" ]; then
  echo "error: no venv at $venv: run ./bootstrap.sh first (README, Set-up), or point HDBL_VENV at yours" >&2
  exit 2
fi
out="${1:-gpu-check-$(date +%Y%m%d-%H%M%S)}"
[ $# -gt 0 ] && shift
export PATH="$venv/bin:$PATH"  # the venv's mpirun and hdbl for every step
limit="${HDBL_GPU_CHECK_LIMIT_S:-480}"
echo "gpu_check: results in $out, stopped after $limit s"
exec timeout --kill-after=20 "$limit" "$venv/bin/python" bench/gpu_check.py --out "$out" "$@"
