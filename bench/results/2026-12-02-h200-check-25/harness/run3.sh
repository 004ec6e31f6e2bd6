#!/usr/bin/env bash
# Vulkan MLA coopmat: compile-time sizes vs specialization constants (local memory) (session 23, call 3)
set -uo pipefail
pack=$(pwd)/.gpu-pack; source $pack/gpu-unpack.sh
export LD_LIBRARY_PATH="/usr/local/nvidia/lib64:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"
export TESSERA_CACHE_DIR=/tmp/tc
for deb in "$pack"/*.deb; do [ -f "$deb" ] && dpkg -x "$deb" /; done; ldconfig 2>/dev/null
[ -f /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json ] && export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
D=$(pwd)/.devstage/s23
mkdir -p $OUT/logs
bench() { # name, override, dir, shapes
  local name=$1 ov=$2 dir=$3 shapes=$4
  env RUST_LOG=info TESSERA_VULKAN_PIPELINE_STATS=1 TESSERA_VULKAN_MLA_DECODE=$ov ${dir:+TESSERA_VULKAN_SPIRV_DIR=$dir} timeout 150 $pack/bin/tessera bench --backend vulkan --only mla_decode --mla-shapes "$shapes" --budget-s 60 --json $OUT/logs/$name.json > $OUT/logs/$name.log 2>&1
  echo "$name rc=$? $(grep -o 'pipeline statistics of mla_decode_coopmat .*' $OUT/logs/$name.log | sort -u | sed 's/.*(CS): //' | tr '\n' ' ')"
}
names=""
for sh in "hq16 sq1 bf16" "hq16 sq2 bf16"; do
  t=$(echo $sh | tr -d ' ')
  bench base32_$t coopmat:32,0 "" "$sh"
  bench A_$t coopmat:32,0 $D/spv_A "$sh"
  bench B_$t coopmat:32,0 $D/spv_B "$sh"
  bench C_$t coopmat:16,0 $D/spv_C "$sh"
  bench Bp_$t coopmat:32,1 $D/spv_B "$sh"
done
bench base32_h128 coopmat:32,0 "" "b64 sk8192 hq128 sq1 bf16"
bench B_h128 coopmat:32,0 $D/spv_B "b64 sk8192 hq128 sq1 bf16"
python3 - $OUT/logs <<'PY'
import json,sys,glob,os
d=sys.argv[1]
rows={}; names=[]
for f in sorted(glob.glob(f'{d}/*.json')):
    n=os.path.basename(f)[:-5]; key=n.split('_')[0]
    if key not in names: names.append(key)
    for r in json.load(open(f))['records']:
        if r.get('time_ms'): rows.setdefault(r['shape'],{})[key]=r['gbps']
names=['base32','A','B','C','Bp']
print('shape | '+' | '.join(names))
for k,v in rows.items():
    print(k,'|',' | '.join(f"{v[n]:.0f}" if n in v else '-' for n in names))
PY
tar -C $OUT -czf $OUT/logs.tgz logs && rm -rf $OUT/logs/*.log
