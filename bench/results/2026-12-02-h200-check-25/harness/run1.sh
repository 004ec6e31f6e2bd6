#!/usr/bin/env bash
# Vulkan MLA coopmat: direct matrix loads from the cache vs staged (session 23, call 1)
set -uo pipefail
pack=$(pwd)/.gpu-pack; source $pack/gpu-unpack.sh
export LD_LIBRARY_PATH="/usr/local/nvidia/lib64:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"
export TESSERA_CACHE_DIR=/tmp/tc
for deb in "$pack"/*.deb; do [ -f "$deb" ] && dpkg -x "$deb" /; done; ldconfig 2>/dev/null
[ -f /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json ] && export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
D=$(pwd)/.devstage/s23
mkdir -p $OUT/logs
echo "== correctness (direct override)"
( cd $pack && TESSERA_REQUIRE_VULKAN=1 TESSERA_VULKAN_SPIRV_DIR=$D/spv_direct timeout 200 $pack/bin/vktest-mla_stream coopmat > $OUT/logs/test_direct.log 2>&1; echo "rc=$?" ) ; grep -E "test result|FAILED|panicked|skipped" $OUT/logs/test_direct.log | head -10
bench() { # name, override, dir
  local name=$1 ov=$2 dir=$3
  env TESSERA_VULKAN_MLA_DECODE=$ov ${dir:+TESSERA_VULKAN_SPIRV_DIR=$dir} TESSERA_BACKEND=vulkan timeout 150 $pack/bin/tessera bench --backend vulkan --only mla_decode --mla-shapes "$SHAPES" --budget-s 60 --json $OUT/logs/$name.json > $OUT/logs/$name.log 2>&1
  echo "$name rc=$?"
}
SHAPES="hq16 sq"
bench base32 coopmat:32,0 ""
bench direct32 coopmat:32,0 $D/spv_direct
bench direct32v coopmat:32,1 $D/spv_direct
bench direct16 coopmat:16,0 $D/spv_direct
bench direct16v coopmat:16,1 $D/spv_direct
python3 - $OUT/logs <<'PY'
import json,sys,os
d=sys.argv[1]
names=['base32','direct32','direct32v','direct16','direct16v']
rows={}
for n in names:
    try: recs=json.load(open(f'{d}/{n}.json'))['records']
    except Exception as e: print(n,'no json',e); continue
    for r in recs:
        k=r.get('shape') or r.get('name')
        ms=r.get('ms') or r.get('time_ms')
        gbs=r.get('gb_s') or r.get('gbps')
        rows.setdefault(k,{})[n]=(ms,gbs,r.get('params',{}).get('plan'))
print('shape | '+' | '.join(names))
for k,v in rows.items():
    print(k,'|',' | '.join(f"{v[n][0]*1000:.1f}us {v[n][1]:.0f}" if n in v and v[n][0] else '-' for n in names))
PY
tar -C $OUT -czf $OUT/logs.tgz logs && rm -rf $OUT/logs/*.log
