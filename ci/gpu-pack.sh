#!/usr/bin/env bash
# On the CPU machine: build the release test and bench binaries, strip them, and gather what the
# GPU machine needs into .gpu-pack/ (ignored by git; carried to the GPU machine).
#   ci/gpu-pack.sh [PACKDIR]   (default .gpu-pack; any /.gpu-pack*/ folder is ignored by git)
#   then on the GPU machine, carrying PACKDIR:   bash PACKDIR/gpu-run.sh "$OUT" [quick]
#   or the benchmark:                            bash PACKDIR/gpu-bench.sh "$OUT" [quick]
set -euo pipefail
pack=$(realpath -m "${1:-.gpu-pack}")
cd "$(dirname "$0")/.."
rm -rf "$pack" && mkdir -p "$pack/bin"

# Test binaries: cargo prints their paths as JSON; keep the ones the GPU run uses.
cargo test --release --locked --workspace --no-run --message-format=json 2>/dev/null \
  | python3 -c '
import json, sys
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"]:
        pid = m["package_id"]
        crate = "vk" if "tessera-vulkan" in pid else "cu" if "tessera-cuda" in pid else "-"
        print(crate, m["target"]["name"], m["executable"])
' | while read -r crate name exe; do
    case "$crate:$name" in
      # The facade's suites that run every backend (CUDA and Vulkan required there).
      -:conformance|-:determinism|-:fuzz_backends|-:discovery_opens_once) cp "$exe" "$pack/bin/test-$name" ;;
      # The Vulkan crate's SPIR-V test checks the checkout (shader sources, compiler), not the
      # device: it stays on the CPU machine.
      vk:spirv) ;;
      # Likewise the generated wgmma header's check compares the checkout's file with its
      # generator: nothing of the device.
      cu:generated_wgmma) ;;
      # Every other test of the Vulkan crate (unit tests included) runs there against the NVIDIA
      # driver; every test of the CUDA crate (compile check, timings, reliability).
      vk:*) cp "$exe" "$pack/bin/vktest-$name" ;;
      cu:*) cp "$exe" "$pack/bin/cutest-$name" ;;
    esac
  done
cargo build --release --locked -p tessera-bench
cp "${CARGO_TARGET_DIR:-target}/release/tessera" "$pack/bin/tessera"
# candle's CUDA path (tessera-candle's `cuda` feature): its test binary (CUDA against the CPU path)
# and the example. candle-core's CUDA backend builds its kernels with nvcc and links cuBLAS,
# cuRAND, NVRTC and the CUDA runtime: ci/cuda-toolkit.sh brings CUDA 13.0's from PyPI (cached in
# ~/.cache; a link-time stub for libcuda). The first build compiles candle's kernels (about 20
# minutes on 2 cores). In a subshell: the toolkit's variables stay out of the other steps. The
# two binaries hold candle's kernels (about 38 MB each, stripped): they travel as one xz archive
# (about 5 MB), which ci/gpu-run.sh unpacks.
# GPU_PACK_CANDLE=0 leaves this step out (a pack for the sanitizer or a kernel check; gpu-run.sh
# then reports the candle step as not packed).
if [ "${GPU_PACK_CANDLE:-1}" != 0 ]; then
candle_bin=$(mktemp -d)
(
  source ci/cuda-toolkit.sh
  cargo test --release --locked -p tessera-candle --features cuda --test cuda --no-run \
    --message-format=json 2>/dev/null | python3 -c '
import json, sys
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "cuda":
        print(m["executable"])
' | while read -r exe; do cp "$exe" "$candle_bin/candletest-cuda"; done
  cargo build --release --locked -p tessera-candle --features cuda --example candle_layers
  cp "${CARGO_TARGET_DIR:-target}/release/examples/candle_layers" "$candle_bin/candle_layers"
)
[ -x "$candle_bin/candletest-cuda" ] || { echo "gpu-pack: the candle CUDA test binary was not built"; exit 1; }
strip "$candle_bin"/*
tar -C "$candle_bin" -cf - candletest-cuda candle_layers | xz -9 -T2 > "$pack/candle-cuda.tar.xz"
rm -rf "$candle_bin"
fi
strip "$pack"/bin/*
cp ci/gpu-run.sh ci/gpu-sanitize.sh ci/gpu-bench.sh ci/gpu-unpack.sh ci/peers.py ci/gpu-python.sh "$pack/"
# The Python package for ci/gpu-python.sh: its abi3 wheel, pytest's wheels (for Python 3.9 and
# later: the GPU machine has no index) and the tests.
mkdir -p "$pack/wheels" "$pack/python-tests"
python3 -m pip wheel -q --disable-pip-version-check --no-deps -w "$pack/wheels" ./python
python3 -m pip download -q --disable-pip-version-check --only-binary=:all: --python-version 3.9 \
  -d "$pack/wheels" pytest exceptiongroup tomli
cp python/tests/*.py "$pack/python-tests/"
# The GPU machine has the NVIDIA Vulkan driver but no loader: bring Debian's libvulkan1 (amd64),
# and the GL vendor-neutral dispatch libraries that the NVIDIA driver (libGLX_nvidia) needs.
if command -v apt-get >/dev/null; then
  lists=$(mktemp -d)
  o="-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=$lists"
  mkdir -p "$lists/partial"
  if apt-get $o update -qq >/dev/null 2>&1 && (cd "$pack" && apt-get $o download -qq libvulkan1 libglvnd0 libglx0 libegl1 libgl1 libopengl0 libgles2 >/dev/null 2>&1); then
    ls "$pack"/*.deb
  else
    echo "note: could not download libvulkan1; the Vulkan part of the GPU run will be skipped"
  fi
  rm -rf "$lists"
fi
git rev-parse --short HEAD > "$pack/COMMIT" 2>/dev/null || echo unknown > "$pack/COMMIT"
git diff --quiet 2>/dev/null || echo "+uncommitted" >> "$pack/COMMIT"
ls -la "$pack/bin"
# The stripped binaries come to about 60 MB, close to what a device call carries (64 MiB with
# the checkout): they travel as one xz archive (about 8 MB), which the GPU scripts unpack
# (ci/gpu-unpack.sh). GPU_PACK_XZ=0 keeps bin/ as it is.
if [ "${GPU_PACK_XZ:-1}" != 0 ]; then
  tar -C "$pack" -cf - bin | xz -6 -T2 > "$pack/bin.tar.xz"
  rm -rf "$pack/bin"
fi
du -sh "$pack"
