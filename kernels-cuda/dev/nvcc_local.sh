#!/usr/bin/env bash
# nvcc on a machine without a CUDA toolkit or a GPU: compile, ptxas and SASS (errors, registers,
# spills with `-Xptxas -v`, `cuobjdump --dump-sass` of the object), and harness binaries linked
# with the wheel's static cudart (add `-L$HOME/.cache/tessera/nvcc-13.0/nvidia/cu13/lib`; they
# need glibc 2.34 and run on the GPU machine, carried in the working tree: see
# fp8_gemm_sm90.sh's NVCC, LINK_FLAGS, NORUN and NOBUILD). NVIDIA's PyPI wheels of CUDA 13.0
# (the GPU machine's version; cuobjdump and nvdisasm 13.2, the oldest on PyPI, read its objects)
# are installed once under ~/.cache/tessera/nvcc-13.0.
#   bash kernels-cuda/dev/nvcc_local.sh NVCC_ARGS...
#   bash kernels-cuda/dev/nvcc_local.sh --cuobjdump CUOBJDUMP_ARGS...
# e.g. a harness build as its script makes it, with -c instead of -o BINARY:
#   bash kernels-cuda/dev/nvcc_local.sh -O3 -std=c++17 -gencode arch=compute_90a,code=sm_90a \
#     -Xptxas -v -DBLOCK_M=128 ... -c -o /tmp/h.o kernels-cuda/dev/fp8_gemm_sm90_harness.cu
#   bash kernels-cuda/dev/nvcc_local.sh --cuobjdump --dump-sass /tmp/h.o | grep HGMMA
set -euo pipefail
root=${TESSERA_NVCC_DIR:-$HOME/.cache/tessera/nvcc-13.0}
bin=$root/nvidia/cu13/bin
if [ ! -x "$bin/nvcc" ] || [ ! -x "$bin/cuobjdump" ] || [ ! -x "$bin/nvdisasm" ] \
  || [ ! -x "$root/nvidia/cu13/nvvm/bin/cicc" ] || [ ! -f "$root/nvidia/cu13/include/crt/host_config.h" ]; then
  echo "nvcc_local: installing the CUDA compiler wheels into $root" >&2
  # One pip call: `pip install --target` into a folder that already has nvidia/ does not merge.
  rm -rf "$root"
  python3 -m pip install -q --no-deps --target "$root" \
    nvidia-cuda-nvcc==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88 \
    nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85 \
    nvidia-cuda-cuobjdump==13.2.51 nvidia-cuda-nvdisasm==13.2.51 >&2
  chmod +x "$bin"/* "$root"/nvidia/cu13/nvvm/bin/* 2>/dev/null || true
fi
if [ "${1:-}" = --cuobjdump ]; then
  shift
  PATH="$bin:$PATH" exec "$bin/cuobjdump" "$@"
fi
exec "$bin/nvcc" "$@"
