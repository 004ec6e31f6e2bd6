#!/usr/bin/env bash
# On the GPU machine, from the repository root, after ci/gpu-pack.sh ran on the CPU machine and
# .gpu-pack/ was carried along:   ci/gpu-run.sh OUTDIR [quick]
# Runs the kernel compile check, every CUDA kernel candidate against the reference, the CUDA
# timing tests, the conformance suite on CUDA (the backend
# is required: its absence fails) and on Vulkan (NVIDIA driver, loader from the pack) with and
# without the cooperative-matrix shaders, every test of the Vulkan crate both ways, and
# `tessera check` on CUDA, Vulkan (both ways) and CPU; logs and JSON go to OUTDIR, a table last.
set -uo pipefail
final=${1:?usage: ci/gpu-run.sh OUTDIR [quick]}
mode=${2:-full}
# Logs go to a work folder, packed at the end into OUTDIR/gpu-run.tar.gz (the device tool brings
# back only a few files); the check JSONs are copied beside it.
out=$(mktemp -d)
mkdir -p "$final"
pack=$(cd "$(dirname "$0")" && pwd)
export LD_LIBRARY_PATH="/usr/local/nvidia/lib64:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"
export TESSERA_CACHE_DIR=/tmp/tessera-cache
export RUST_BACKTRACE=1
commit=$(cat "$pack/COMMIT" 2>/dev/null | tr '\n' ' ')
status=()
# Whatever happens (a time limit included), the logs gathered so far come back.
finish() {
  cp "$out"/check-*.json "$final"/ 2>/dev/null
  tar -C "$out" -czf "$final/gpu-run.tar.gz" .
}
trap 'finish; exit 124' TERM INT
run() { # name, command...
  local name=$1; shift
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
run compile_all env TESSERA_REQUIRE_NVRTC=1 "$pack/bin/test-compile_all" --nocapture
run plan_candidates "$pack/bin/test-plan_candidates" --nocapture --test-threads=1
run fp8_gemm_timing "$pack/bin/test-fp8_gemm_timing" --nocapture --test-threads=1
run attention_timing "$pack/bin/test-attention_timing" --nocapture --test-threads=1
run conformance_cuda env TESSERA_REQUIRE_BACKENDS=cuda "$pack/bin/test-conformance" cuda:: --nocapture --test-threads=1
run conformance_vulkan "$pack/bin/test-conformance" vulkan:: --nocapture --test-threads=1
run conformance_vulkan_portable env TESSERA_VULKAN_PORTABLE=1 "$pack/bin/test-conformance" vulkan:: --nocapture --test-threads=1
# The Vulkan crate's own tests (path choice, device API, buffers, ...), both paths.
for t in "$pack"/bin/vktest-*; do
  [ -x "$t" ] || continue
  name=$(basename "$t")
  run "$name" "$t" --nocapture --test-threads=1
  run "$name-portable" env TESSERA_VULKAN_PORTABLE=1 "$t" --nocapture --test-threads=1
done
quick=""; [ "$mode" = quick ] && quick="--quick"
run check_cuda "$pack/bin/tessera" check --backend cuda $quick --json "$out/check-cuda.json"
run check_vulkan "$pack/bin/tessera" check --backend vulkan $quick --json "$out/check-vulkan.json"
run check_vulkan_portable env TESSERA_VULKAN_PORTABLE=1 "$pack/bin/tessera" check --backend vulkan $quick --json "$out/check-vulkan-portable.json"
run check_cpu "$pack/bin/tessera" check --backend cpu $quick --json "$out/check-cpu.json"
echo
echo "== summary (commit $commit)"
printf '%s\n' "${status[@]}"
grep -h "^check:" "$out"/check_*.log
grep -H "^test result" "$out"/conformance_*.log "$out"/compile_all.log "$out"/plan_candidates.log "$out"/vktest-*.log 2>/dev/null | sed "s|^$out/||"
finish
