#!/usr/bin/env bash
# On the GPU machine, after ci/gpu-pack.sh ran on the CPU machine and the pack was carried along:
#   bash PACKDIR/gpu-python.sh OUTDIR
# Installs the pack's tessera wheel (the abi3 wheel built on the CPU machine) into a virtual
# environment that sees the machine's torch and numpy, and runs the package's tests there:
# python/tests/test_torch_cuda.py against PyTorch references (SDPA with the token mask, plain torch
# MLA decode, the dequantized matmul; graph capture, torch.compile), and the numpy and torch CPU
# tests. A test that skips says why (-rs). Writes OUTDIR/pytest-gpu.log and pytest-gpu.xml.
set -uo pipefail
out=${1:?usage: gpu-python.sh OUTDIR}
pack=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$out"
export LD_LIBRARY_PATH="/usr/local/nvidia/lib64:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"
export TESSERA_CACHE_DIR=${TESSERA_CACHE_DIR:-/tmp/tessera-cache}
env_dir=$(mktemp -d)/venv
python3 -m venv --system-site-packages "$env_dir"
# pytest comes from the pack (no index there); numpy and torch are the machine's.
"$env_dir/bin/python" -m pip install -q --no-index --find-links "$pack/wheels" pytest
"$env_dir/bin/python" -m pip install -q --no-index --no-deps "$pack"/wheels/tessera-*.whl
"$env_dir/bin/python" -c "import tessera, torch; print('tessera', tessera.__version__, 'torch', torch.__version__, torch.cuda.get_device_name(0))" 2>&1 | tee "$out/pytest-gpu.log"
# From the pack's copy of the tests (outside any source tree, so the installed package is used).
cd "$pack/python-tests"
"$env_dir/bin/python" -m pytest -rs -v -p no:cacheprovider --junitxml="$out/pytest-gpu.xml" . 2>&1 | tee -a "$out/pytest-gpu.log"
exit "${PIPESTATUS[0]}"
