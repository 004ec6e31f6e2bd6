#!/usr/bin/env bash
# Session 22, call 2: short K at small M (128-row persistent tiles vs 64 x N at two CTAs per SM); MLA bench rerun.
set -uo pipefail
d=$(cd "$(dirname "$0")" && pwd); o=${OUT:-/tmp/out}; mkdir -p $o
run() { local l=$1 b=$2; shift 2
  timeout 100 $b "$@" 2>&1 | sed "s/^/[$l] /" >> $o/time.log || echo "[$l] RUN FAILED rc=$?" >> $o/time.log; }
for b in $d/new/bin/bm128_bn128* $d/new/bin/bm128_bn176* $d/new/bin/bm128_bn144* $d/cta2/bin/bm64_bn32*; do
  echo "== $b" >> $o/check.log
  timeout 60 $b --check 1 8 16 200 2112 528 129 136 144 64 7168 2048 4096 2112 7168 300 4096 1536 >> $o/check.log 2>&1 || echo "CHECK RUN FAILED $b rc=$?" >> $o/check.log
done
S="64 24576 1536 64 32768 512 64 7168 2048 128 24576 1536 128 32768 512 128 7168 2048 256 24576 1536 256 32768 512"
for pass in 1 2; do
  for b in new/bin/bm128_bn192_st4_wg2_e128_c1_a1_s1 new/bin/bm128_bn176_st4_wg2_e32_c1_a1_s1 new/bin/bm128_bn160_st5_wg2_e64_c1_a1_s1 new/bin/bm128_bn144_st5_wg2_e32_c1_a1_s1 new/bin/bm128_bn128_st5_wg2_e128_c1_a1_s1 cta2/bin/bm64_bn64_st13_wg1_e128_c1_a2_s1 cta2/bin/bm64_bn32_st16_wg1_e64_c1_a2_s1 new/bin/bm64_bn128_st9_wg1_e0_c1_a2_s2; do
    l=${b%%/*}:${b##*/bm}; run ${l%%_st*} $d/$b $S
  done
done
echo "== checks"; grep -E "FAIL|MISMATCH|ERR" $o/check.log | head; echo "passes: $(grep -c PASS $o/check.log)"
python3 - $o/time.log <<'PY'
import re,sys,collections
t=collections.defaultdict(list); cols=[]; shapes=[]
for line in open(sys.argv[1]):
    m=re.match(r"\[(\S+)\] TIME .*?(M\d+ N\d+ K\d+): ([\d.]+) ms (\d+) TFLOPS (\d+) GB/s",line)
    if m:
        l,s,ms,tf,gb=m.groups()
        if l not in cols: cols.append(l)
        if s not in shapes: shapes.append(s)
        t[(l,s)].append(f"{float(ms)*1000:.1f}")
    elif "FAIL" in line: print(line.strip())
print("shape | "+" | ".join(cols))
for s in shapes: print(s+" | "+" | ".join("/".join(t.get((l,s),["-"])) for l in cols))
PY
pack=$(pwd)/.gpu-pack; source $pack/gpu-unpack.sh
BENCH_ONLY=mla_decode BENCH_BUDGET=230 VK_RESERVE=40 VK_BUDGET=30 bash $pack/gpu-bench.sh $o/mla > $o/mla-bench.log 2>&1
tail -5 $o/mla-bench.log
grep -E "^\| *(b|B)[0-9]|hq16|mla" $o/mla/results.md 2>/dev/null | head -60
