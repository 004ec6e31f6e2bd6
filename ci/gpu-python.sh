#!/usr/bin/env bash
# On the GPU machine, after ci/gpu-pack.sh ran on the CPU machine and the pack was carried along:
#   bash PACKDIR/gpu-python.sh OUTDIR
# Installs the pack's tessera wheel (the abi3 wheel built on the CPU machine) next to the machine's
# torch and numpy, and runs the package's tests there:
# python/tests/test_torch_cuda.py against PyTorch references (SDPA with the token mask, plain torch
# MLA decode, the dequantized matmul; graph capture, torch.compile), and the numpy and torch CPU
# tests. A test that skips says why (-rs). Writes OUTDIR/pytest-gpu.log and pytest-gpu.xml.
set -uo pipefail
out=${1:?usage: gpu-python.sh OUTDIR}
pack=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$out"
export LD_LIBRARY_PATH="/usr/local/nvidia/lib64:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"
export TESSERA_CACHE_DIR=${TESSERA_CACHE_DIR:-/tmp/tessera-cache}
# The machine's python3 (/opt/torch/.venv) holds torch, numpy and pytest. A venv made from it
# would not see them (its base is the system interpreter), so the wheel goes into a private
# folder on PYTHONPATH instead.
site=$(mktemp -d)/site
python3 -c "import pytest" 2>/dev/null ||
  python3 -m pip install -q --no-index --target "$site" --find-links "$pack/wheels" pytest
python3 -m pip install -q --no-index --no-deps --target "$site" "$pack"/wheels/tessera-*.whl
export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
python3 -c "import tessera, torch; print('tessera', tessera.__version__, 'torch', torch.__version__, torch.cuda.get_device_name(0))" 2>&1 | tee "$out/pytest-gpu.log"
# From the pack's copy of the tests (outside any source tree, so the installed package is used).
cd "$pack/python-tests"
python3 -m pytest -rs -v -p no:cacheprovider --junitxml="$out/pytest-gpu.xml" . 2>&1 | tee -a "$out/pytest-gpu.log"
exit "${PIPESTATUS[0]}"
