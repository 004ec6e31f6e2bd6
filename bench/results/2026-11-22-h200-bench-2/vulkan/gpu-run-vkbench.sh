#!/usr/bin/env bash
# One Vulkan benchmark run on the GPU machine:   bash PACKDIR/gpu-run-vkbench.sh OUTDIR
out=${1:?usage: gpu-run-vkbench.sh OUTDIR}
pack=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$out"
for d in "$pack"/*.deb; do [ -f "$d" ] && dpkg -x "$d" /; done
ldconfig
if [ -f /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json ] && [ -z "${VK_DRIVER_FILES:-}" ]; then
  export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
fi
export TESSERA_COMMIT=$(head -c 200 "$pack/COMMIT" | tr '\n' ' ' | sed 's/ *$//')
export TESSERA_CACHE_DIR=/tmp/tessera-cache
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,temperature.gpu --format=csv > "$out/gpu.txt" 2>&1
export LD_LIBRARY_PATH=/usr/local/nvidia/lib64:${LD_LIBRARY_PATH:-}
timeout 400 "$pack/bin/tessera" info > "$out/info.txt" 2>&1
timeout 400 "$pack/bin/tessera" bench --backend vulkan --suite standard --json "$out/vk.json" > "$out/vk.log" 2> "$out/vk.err"
echo "bench rc=$?"
tr '\r' '\n' < "$out/vk.err" | grep -v '^\s*$' | grep -v '^\[' | tail -n 20
cat "$out/vk.log"
