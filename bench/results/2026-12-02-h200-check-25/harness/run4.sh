#!/usr/bin/env bash
set -uo pipefail
pack=$(pwd)/.gpu-pack; source $pack/gpu-unpack.sh
export LD_LIBRARY_PATH="/usr/local/nvidia/lib64:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"
for deb in "$pack"/*.deb; do [ -f "$deb" ] && dpkg -x "$deb" /; done; ldconfig 2>/dev/null
[ -f /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json ] && export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
M=$(pwd)/.devstage/s23/micro
for v in brow bcol arow acol brow72 bcol72; do
  for g in 264 528; do
    r=$($M/spirv_run --spv $M/$v.spv --local 128 --shared 37376 --push 1 --out $((g*4096)):/tmp/o.bin --groups $g --repeat 20 2>&1 | grep -E "time_us|spirv_run" | tail -1)
    us=${r#time_us }; echo "$v groups=$g: $r TFLOPS $(python3 -c "print(round($g*4*2048*8*8192/($us*1e6),1))" 2>/dev/null)"
  done
done
