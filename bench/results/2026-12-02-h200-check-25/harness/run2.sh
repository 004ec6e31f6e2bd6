#!/usr/bin/env bash
# Vulkan MLA coopmat: pipeline statistics (registers, local memory) and split counts (session 23, call 2)
set -uo pipefail
pack=$(pwd)/.gpu-pack; source $pack/gpu-unpack.sh
export LD_LIBRARY_PATH="/usr/local/nvidia/lib64:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"
export TESSERA_CACHE_DIR=/tmp/tc
for deb in "$pack"/*.deb; do [ -f "$deb" ] && dpkg -x "$deb" /; done; ldconfig 2>/dev/null
[ -f /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json ] && export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
mkdir -p $OUT/logs
echo "== statistics"
for ov in coopmat:32,0 coopmat:32,1 coopmat:16,0 coopmat:16,1 stream cm2; do
  for shp in "b64 sk4096 hq16 sq1 bf16" "b64 sk4096 hq16 sq1 fp8" "b64 sk4096 hq128 sq1 bf16"; do
    RUST_LOG=info TESSERA_VULKAN_PIPELINE_STATS=1 TESSERA_VULKAN_MLA_DECODE=$ov timeout 60 $pack/bin/tessera bench --backend vulkan --only mla_decode --mla-shapes "$shp" --budget-s 5 --json /tmp/x.json > $OUT/logs/stats.log 2>&1
    grep -o "pipeline statistics of mla_decode_[a-z0-9_]* .*" $OUT/logs/stats.log | sed "s/^/[$ov | $shp] /" | sort -u
  done
done | tee $OUT/logs/stats_all.log | cut -c1-400
echo "== attention / gemm statistics"
RUST_LOG=info TESSERA_VULKAN_PIPELINE_STATS=1 timeout 90 $pack/bin/tessera bench --backend vulkan --suite quick --budget-s 20 --json /tmp/y.json > $OUT/logs/stats_q.log 2>&1
grep -o "pipeline statistics of .*" $OUT/logs/stats_q.log | sort -u | cut -c1-400
bench() { # name, override, resident
  local name=$1 ov=$2 res=$3
  env TESSERA_VULKAN_MLA_DECODE=$ov TESSERA_DEV_MLA_RESIDENT=$res timeout 150 $pack/bin/tessera bench --backend vulkan --only mla_decode --mla-shapes "$SHAPES" --budget-s 60 --json $OUT/logs/$name.json > $OUT/logs/$name.log 2>&1
  echo "$name rc=$?"
}
SHAPES="hq16 sq1 bf16"
names="k32r2 k32r3 k32r4 k32r6 k16r2 k16r4 k16r8"
bench k32r2 coopmat:32,0 2
bench k32r3 coopmat:32,0 3
bench k32r4 coopmat:32,0 4
bench k32r6 coopmat:32,0 6
bench k16r2 coopmat:16,0 2
bench k16r4 coopmat:16,0 4
bench k16r8 coopmat:16,0 8
python3 - $OUT/logs $names <<'PY'
import json,sys
d=sys.argv[1]; names=sys.argv[2:]
rows={}
for n in names:
    try: recs=json.load(open(f'{d}/{n}.json'))['records']
    except Exception as e: print(n,'no json',e); continue
    for r in recs:
        if r.get('time_ms'):
            rows.setdefault(r['shape'],{})[n]=(r['time_ms'],r['gbps'],r['params'].get('plan',''))
print('shape | '+' | '.join(names))
for k,v in rows.items():
    print(k,'|',' | '.join(f"{v[n][1]:.0f}" if n in v else '-' for n in names))
for k,v in list(rows.items())[:2]:
    for n in names:
        if n in v: print(k,n,v[n][2])
PY
tar -C $OUT -czf $OUT/logs.tgz logs && rm -rf $OUT/logs/*.log
