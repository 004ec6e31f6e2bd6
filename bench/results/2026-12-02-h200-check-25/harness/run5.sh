#!/usr/bin/env bash
# session 23 call 5: GEMM bench (new short-K small-M picks) + MLA coopmat local-memory probes
set -uo pipefail
pack=$(pwd)/.gpu-pack; source $pack/gpu-unpack.sh
export LD_LIBRARY_PATH="/usr/local/nvidia/lib64:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"
for deb in "$pack"/*.deb; do [ -f "$deb" ] && dpkg -x "$deb" /; done; ldconfig 2>/dev/null
[ -f /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json ] && export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
S=$(pwd)/.devstage/s23; L=$S/lm
echo "== local memory probes"
for n in L0 L1 L2 L3 L4 L5; do
  r=$(TESSERA_VULKAN_PIPELINE_STATS=1 $S/micro/spirv_run --spv $L/$n.spv --local 128 --spec 1=32 --spec 2=512 --spec 3=64 --spec 4=0 --spec 5=0 --shared 48128 --push 0,0,0,0,0,0,0,0,0,0,0 --out 64:/tmp/a --out 64:/tmp/b --out 64:/tmp/c --out 64:/tmp/d --out 64:/tmp/e --groups 1 2>&1 | grep -E "statistic|spirv_run" | tr '\n' ' ')
  echo "$n: $r"
done
echo "== timing of probes"
mkdir -p $OUT/mla
for n in L0 L1 L3; do
  mkdir -p /tmp/ov_$n; cp $L/$n.spv /tmp/ov_$n/mla_decode_coopmat.spv
  TESSERA_VULKAN_SPIRV_DIR=/tmp/ov_$n TESSERA_VULKAN_MLA_DECODE=coopmat:32,0 timeout 100 $pack/bin/tessera bench --backend vulkan --only mla_decode --mla-shapes "sk8192 hq16 sq1 bf16" --budget-s 30 --json $OUT/mla/$n.json > /dev/null 2>&1
  python3 -c "
import json; r=json.load(open('$OUT/mla/$n.json'))['records']
print('$n', [(x['shape'], round(x['gbps'])) for x in r if x.get('time_ms')])"
done
echo "== GEMM bench"
BENCH_ONLY=fp8 BENCH_BUDGET=150 VK_RESERVE=20 VK_BUDGET=1 timeout 420 bash $pack/gpu-bench.sh $OUT/gemm > $OUT/gemm-bench.log 2>&1; echo "gpu-bench rc=$?"
grep -E "^\| M(64|128) " $OUT/gemm/results.md | cut -d'|' -f1-4,9-11
