#!/usr/bin/env bash
# session 23 call 7 (check-25): Vulkan MLA coopmat fix: tests, stats, plan variants, matrix peak, MLA bench (CUDA + peers + Vulkan)
set -uo pipefail
pack=$(pwd)/.gpu-pack; source $pack/gpu-unpack.sh
export LD_LIBRARY_PATH="/usr/local/nvidia/lib64:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"
for deb in "$pack"/*.deb; do [ -f "$deb" ] && dpkg -x "$deb" /; done; ldconfig 2>/dev/null
[ -f /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json ] && export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
S=$(pwd)/.devstage/s23; SPV=$(pwd)/kernels-vulkan/shaders/spv
mkdir -p $OUT/harness
echo "== tests"
TESSERA_GPU_RUN_ONLY='^(vktest-mla|vktest-mla_stream|vktest-settings|conformance_vulkan)$' timeout 200 bash $pack/gpu-run.sh $OUT/tests quick 2>&1 | tail -14
echo "== pipeline statistics (spirv_run)"
{ for sp in "32 0 0" "32 1 0" "16 0 0" "16 1 0" "32 1 1"; do set -- $sp
  r=$(TESSERA_VULKAN_PIPELINE_STATS=1 $S/micro/spirv_run --spv $SPV/mla_decode_coopmat.spv --local 128 --spec 1=$1 --spec 2=512 --spec 3=64 --spec 4=$2 --spec 5=$3 --shared 49024 --push 0,0,0,0,0,0,0,0,0,0,0 --out 64:/tmp/a --out 64:/tmp/b --out 64:/tmp/c --out 64:/tmp/d --out 64:/tmp/e --groups 1 2>&1 | grep -E "Register|Local|spirv_run" | tr '\n' ' ')
  echo "mla_decode_coopmat KT=$1 PREFETCH=$2 FP8=$3: $r"
done; } | tee $OUT/harness/statistics.txt
echo "== matrix peak (dev/mma_peak.comp, 16x16x16 from registers)"
{ for t in f16 bf16; do for g in 528 1056; do
  r=$($S/micro/spirv_run --spv $S/peak/$t.spv --local 128 --push 1 --out $((g*512)):/tmp/o.bin --groups $g --repeat 10 2>&1 | grep -E "time_us|spirv_run" | tail -1)
  us=${r#time_us }; echo "mma_peak $t groups=$g: $r TFLOPS $(python3 -c "print(round($g*4*4096*8*8192/($us*1e6),1))" 2>/dev/null)"
done; done
for v in brow bcol arow acol brow72; do
  r=$($S/micro/spirv_run --spv $S/micro/$v.spv --local 128 --shared 37376 --push 1 --out $((528*4096)):/tmp/o.bin --groups 528 --repeat 20 2>&1 | grep -E "time_us|spirv_run" | tail -1)
  us=${r#time_us }; echo "coopmat_shared_loads $v groups=528: $r TFLOPS $(python3 -c "print(round(528*4*2048*8*8192/($us*1e6),1))" 2>/dev/null)"
done; } | tee $OUT/harness/matrix_peak.txt
echo "== plan variants (b64 sk8192, h_q 16)"
export TESSERA_CACHE_DIR=/tmp/tc
for ov in coopmat:32,0 coopmat:32,1 coopmat:16,1; do
  n=$(echo $ov | tr ':,' '__')
  TESSERA_VULKAN_MLA_DECODE=$ov timeout 100 $pack/bin/tessera bench --backend vulkan --only mla_decode --mla-shapes "b64 sk8192 hq16" --budget-s 20 --json $OUT/harness/variant_$n.json > /dev/null 2>&1
done
python3 - $OUT/harness <<'PY' | tee $OUT/harness/variants.md
import json,sys,glob,os
d=sys.argv[1]; rows={}; names=[]
for f in sorted(glob.glob(f'{d}/variant_*.json')):
    n=os.path.basename(f)[8:-5]; names.append(n)
    for r in json.load(open(f))['records']:
        if r.get('time_ms'): rows.setdefault(r['shape'],{})[n]=r['gbps']
print('| shape (GB/s) | '+' | '.join(names)+' |'); print('|---'*(len(names)+1)+'|')
for k,v in rows.items(): print(f'| {k} | '+' | '.join(f"{v[n]:.0f}" if n in v else '-' for n in names)+' |')
PY
echo "== MLA bench: CUDA, peers, Vulkan"
BENCH_ONLY=mla_decode BENCH_MLA_SHAPES=hq16 BENCH_BUDGET=160 VK_RESERVE=50 VK_BUDGET=50 timeout 220 bash $pack/gpu-bench.sh $OUT/mla > $OUT/mla-bench.log 2>&1; echo "gpu-bench rc=$?"
grep -E "hq16 sq[12] (bf16|fp8)" $OUT/mla/results.md | awk -F'|' '{print $2"|"$4"|"$15"|"$16}' | head -30
