#!/usr/bin/env bash
# On the GPU machine, from the repository root, after ci/gpu-pack.sh ran on the CPU machine and
# .gpu-pack/ was carried along:   ci/gpu-run.sh OUTDIR [full|quick|sanitize]
# Runs the kernel compile check, the CUDA timing tests, every other test of the CUDA crate
# (every kernel candidate against the reference; reliability: arguments, out of memory, streams, two GPUs, disk cache), the conformance,
# determinism and fuzz suites on CUDA and on Vulkan (NVIDIA driver, loader from the pack) with and
# without the cooperative-matrix shaders, every test of the Vulkan crate both ways, `tessera check`
# on CUDA, Vulkan (both ways) and CPU, and compute-sanitizer over the CUDA tests
# (ci/gpu-sanitize.sh; `sanitize` runs only that, TESSERA_SANITIZER=0 leaves it out), and in full
# mode candle's CUDA path (tessera-candle's `cuda` feature: its tests against the CPU path, then
# the example), linked against the CUDA 13 libraries of the toolkit or of torch's wheels. Both
# backends are required: a CUDA or Vulkan device that fails to open fails the run, it is never
# reported as skipped. Logs and JSON go to OUTDIR, a table last.
set -uo pipefail
final=${1:?usage: ci/gpu-run.sh OUTDIR [full|quick|sanitize]}
mode=${2:-full}
# Logs go to a work folder, packed at the end into OUTDIR/gpu-run.tar.gz (the device tool brings
# back only a few files); the check JSONs are copied beside it.
out=$(mktemp -d)
mkdir -p "$final"
pack=$(cd "$(dirname "$0")" && pwd)
source "$pack/gpu-unpack.sh"
export LD_LIBRARY_PATH="/usr/local/nvidia/lib64:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"
export TESSERA_CACHE_DIR=/tmp/tessera-cache
export RUST_BACKTRACE=1
# Nothing may pass by being skipped here: the suites fail when a backend does not open.
export TESSERA_REQUIRE_BACKENDS=cuda,vulkan
export TESSERA_REQUIRE_VULKAN=1
export TESSERA_REQUIRE_CUDA=1
export TESSERA_REQUIRE_NVRTC=1
commit=$(cat "$pack/COMMIT" 2>/dev/null | tr '\n' ' ')
status=()
# Whatever happens (a time limit included), the logs gathered so far come back.
finish() {
  cp "$out"/check-*.json "$final"/ 2>/dev/null
  tar -C "$out" -czf "$final/gpu-run.tar.gz" .
}
trap 'finish; exit 124' TERM INT
# TESSERA_GPU_RUN_ONLY (an extended regex searched in the step names, e.g. 'plan_candidates|conformance_cuda'):
# a short call for one change runs only the matching steps; the others are listed as not run,
# and the summary says so (such a run is never the full check).
run() { # name, command...
  local name=$1; shift
  if [ -n "${TESSERA_GPU_RUN_ONLY:-}" ] && ! [[ "$name" =~ ${TESSERA_GPU_RUN_ONLY} ]]; then
    status+=("$(printf '%-28s not run (TESSERA_GPU_RUN_ONLY)' "$name")")
    return 0
  fi
  local t0=$(date +%s.%N)
  "$@" > "$out/$name.log" 2>&1
  local rc=$?
  local dt=$(python3 -c "print(f'{$(date +%s.%N) - $t0:.1f}')")
  status+=("$(printf '%-28s rc=%-3s %6ss' "$name" "$rc" "$dt")")
  tail -n 6 "$out/$name.log"
  return 0
}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader > "$out/gpu.txt" 2>&1
echo "commit $commit; $(cat "$out/gpu.txt")"
# The Vulkan loader travels in the pack; the NVIDIA ICD is on the machine.
for deb in "$pack"/*.deb; do [ -f "$deb" ] && dpkg -x "$deb" /; done
ldconfig
if [ -f /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json ] && [ -z "${VK_DRIVER_FILES:-}" ]; then
  export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
fi
run info "$pack/bin/tessera" info
if [ "$mode" != sanitize ]; then
run compile_all env TESSERA_REQUIRE_NVRTC=1 "$pack/bin/cutest-compile_all" --nocapture
run fp8_gemm_timing "$pack/bin/cutest-fp8_gemm_timing" --nocapture --test-threads=1
run attention_timing "$pack/bin/cutest-attention_timing" --nocapture --test-threads=1
run attention_backward_timing "$pack/bin/cutest-attention_backward_timing" --nocapture --test-threads=1
# The CUDA crate's other tests (one at a time: out_of_memory fills the device for a moment).
for t in "$pack"/bin/cutest-*; do
  [ -x "$t" ] || continue
  name=$(basename "$t")
  case "$name" in cutest-compile_all|cutest-fp8_gemm_timing|cutest-attention_timing|cutest-attention_backward_timing) continue ;; esac
  run "$name" "$t" --nocapture --test-threads=1
done
for suite in conformance determinism fuzz_backends; do
  run "${suite}_cuda" "$pack/bin/test-$suite" cuda --nocapture --test-threads=1
  run "${suite}_vulkan" "$pack/bin/test-$suite" vulkan --nocapture --test-threads=1
  run "${suite}_vulkan_portable" env TESSERA_VULKAN_PORTABLE=1 "$pack/bin/test-$suite" vulkan --nocapture --test-threads=1
done
run discovery_opens_once "$pack/bin/test-discovery_opens_once" --nocapture
# The Vulkan crate's own tests (path choice, device API, buffers, ...), both paths.
for t in "$pack"/bin/vktest-*; do
  [ -x "$t" ] || continue
  name=$(basename "$t")
  run "$name" "$t" --nocapture --test-threads=1
  run "$name-portable" env TESSERA_VULKAN_PORTABLE=1 "$t" --nocapture --test-threads=1
done
if [ "$mode" = full ] && [ ! -f "$pack/candle-cuda.tar.xz" ]; then
  # A pack built with GPU_PACK_CANDLE=0: the step fails rather than passing unseen.
  status+=("$(printf '%-28s rc=%-3s %6ss' "candle (not in this pack)" 1 0)")
elif [ "$mode" = full ]; then
  # candle's CUDA backend links libcublas.so.13, libcurand.so.10, libnvrtc.so.13 and
  # libcudart.so.13: the toolkit's (/usr/local/cuda/lib64, already on the path) or those torch's
  # wheels brought (nvidia/cu13/lib in python3's site-packages).
  nvidia_libs=$(python3 -c 'import glob, os, sys; print(":".join(d for p in sys.path for d in glob.glob(os.path.join(p, "nvidia", "cu13", "lib"))))' 2>/dev/null)
  candle_env=(env "LD_LIBRARY_PATH=$LD_LIBRARY_PATH:$nvidia_libs")
  # The binaries travel xz-compressed (ci/gpu-pack.sh); Python's tarfile unpacks them.
  candle_bin=$(mktemp -d)
  python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2], filter="data")' \
    "$pack/candle-cuda.tar.xz" "$candle_bin"
  "${candle_env[@]}" ldd "$candle_bin/candletest-cuda" > "$out/candle_ldd.log" 2>&1
  grep "not found" "$out/candle_ldd.log"
  run candle_cuda "${candle_env[@]}" "$candle_bin/candletest-cuda" --nocapture --test-threads=1
  run candle_layers "${candle_env[@]}" "$candle_bin/candle_layers"
  rm -rf "$candle_bin"
fi
quick=""; [ "$mode" = quick ] && quick="--quick"
run check_cuda "$pack/bin/tessera" check --backend cuda $quick --json "$out/check-cuda.json"
run check_vulkan "$pack/bin/tessera" check --backend vulkan $quick --json "$out/check-vulkan.json"
run check_vulkan_portable env TESSERA_VULKAN_PORTABLE=1 "$pack/bin/tessera" check --backend vulkan $quick --json "$out/check-vulkan-portable.json"
run check_cpu "$pack/bin/tessera" check --backend cpu $quick --json "$out/check-cpu.json"
fi
if [ "$mode" = sanitize ] || [ "${TESSERA_SANITIZER:-1}" != 0 ]; then
  # Bounded by default (PROPTEST_CASES=4, no timing tests); TESSERA_SANITIZER_QUICK=0: everything.
  run sanitizer bash "$pack/gpu-sanitize.sh" "$out/sanitizer"
  cat "$out/sanitizer/summary.txt" 2>/dev/null
fi
echo
echo "== summary (commit $commit)"
printf '%s\n' "${status[@]}"
grep -h "^check:" "$out"/check_*.log 2>/dev/null
grep -H "^test result" "$out"/*.log 2>/dev/null | sed "s|^$out/||"
# A suite that says `skipped` here is a failure of the run (both backends are required).
grep -l "^skipped: backend\|^skipped: no Vulkan\|^skipped: no CUDA" "$out"/*.log 2>/dev/null | sed "s|^$out/|SKIPPED A REQUIRED BACKEND: |"
grep -l "^device: Cpu" "$out"/candle_layers.log 2>/dev/null | sed "s|^$out/|THE CANDLE EXAMPLE RAN ON THE CPU: |"
cat "$out/sanitizer/summary.txt" 2>/dev/null
finish
