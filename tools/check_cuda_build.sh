#!/usr/bin/env bash
# Check that the CUDA kernels of mask2former._C compile, on a machine without a GPU.
#
# Installs the CUDA build of torch from PyPI into a separate virtual environment (the development
# venv keeps its CPU torch), builds the extension out of tree with FORCE_CUDA=1 into a temporary
# folder, then loads it and checks that CUDA kernels are registered and which GPU architectures
# the binary holds. The repository's in-place build is not touched.
#
# Usage: tools/check_cuda_build.sh [VENV_DIR]        (default VENV_DIR: ../venv-cuda beside the repo)
# Exit status: 0 compiled and loads; 3 the CUDA build of torch could not be installed; other: failure.
# Environment (defaults):
#   TORCH_VERSION         torch version to install (2.13.0; its PyPI wheel is built with CUDA 13.0)
#   CUDA_HOME             CUDA toolkit root (asked from the nvcc on PATH, which may be a wrapper)
#   TORCH_CUDA_ARCH_LIST  "7.5;8.0;8.6;9.0+PTX" (CUDA 13 dropped sm_70; use a CUDA 12 toolkit and
#                         torch build for Volta)
#   MAX_JOBS              parallel compile jobs (1)
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${1:-$(dirname "$REPO")/venv-cuda}"
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-7.5;8.0;8.6;9.0+PTX}"
export MAX_JOBS="${MAX_JOBS:-1}"
export FORCE_CUDA=1

log() { echo "[check_cuda_build] $*"; }

if [[ -z "${CUDA_HOME:-}" ]]; then
  # nvcc reports its own install root; `dirname $(which nvcc)` is wrong for wrapper scripts
  top="$(nvcc --dryrun -c -x cu /dev/null -o /dev/null 2>&1 | sed -n 's/^#\$ TOP=//p' | head -n 1)"
  [[ -n "$top" ]] || { log "cannot locate the CUDA toolkit: set CUDA_HOME"; exit 1; }
  CUDA_HOME="$(realpath "$top")"
fi
export CUDA_HOME
export PATH="$CUDA_HOME/bin:$PATH"
log "CUDA_HOME=$CUDA_HOME ($("$CUDA_HOME/bin/nvcc" --version | tail -n 1))"

if [[ ! -x "$VENV/bin/python" ]]; then
  log "creating $VENV"
  python3 -m venv "$VENV"
fi
if ! "$VENV/bin/python" -c "import torch, sys; sys.exit(torch.version.cuda is None or torch.__version__.split('+')[0] != '$TORCH_VERSION')" 2>/dev/null; then
  log "installing the CUDA build of torch==$TORCH_VERSION from PyPI"
  # pip config files are ignored so that local CPU-only wheel folders cannot shadow PyPI's CUDA wheel
  PIP_CONFIG_FILE=/dev/null PIP_FIND_LINKS= PIP_EXTRA_INDEX_URL= \
    "$VENV/bin/pip" install --no-cache-dir "torch==$TORCH_VERSION" \
    || { log "could not install the CUDA build of torch from PyPI: compile check not run"; exit 3; }
fi
SITE="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
log "torch $("$VENV/bin/python" -c 'import torch; print(torch.__version__, "CUDA", torch.version.cuda)' 2>/dev/null)"

# headers torch includes but a bare toolkit may lack (cusparse.h, cublas_v2.h, cudnn.h) come with
# torch's nvidia-* wheels
for include in "$SITE"/nvidia/*/include; do
  CPATH="$include${CPATH:+:$CPATH}"
done
export CPATH

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
log "building mask2former._C for TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST with MAX_JOBS=$MAX_JOBS"
start=$(date +%s)
(cd "$REPO" && "$VENV/bin/python" setup.py --quiet build_ext --build-lib "$WORK/lib" --build-temp "$WORK/temp")
log "compiled in $(($(date +%s) - start)) s"

SO="$(ls "$WORK"/lib/mask2former/_C*.so)"
(cd "$WORK/lib" && "$VENV/bin/python" - <<'PY'
import torch

from mask2former import _C

assert _C.compiled_with_cuda(), "mask2former._C was built without its CUDA kernels"
for op in ("ms_deform_attn_forward", "ms_deform_attn_backward"):
    for key in ("CPU", "CUDA"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"mask2former::{op}", key), (op, key)
print("[check_cuda_build] mask2former._C loads; CPU and CUDA kernels registered")
PY
)
if [[ -x "$CUDA_HOME/bin/cuobjdump" ]]; then
  log "GPU code in $(basename "$SO"): $("$CUDA_HOME/bin/cuobjdump" --list-elf --list-ptx "$SO" | grep -o 'sm_[0-9]*[a-z]*\|compute_[0-9]*' | sort -u | tr '\n' ' ')"
else
  log "no cuobjdump in $CUDA_HOME/bin: not listing the GPU architectures in the binary"
fi
log "OK"
