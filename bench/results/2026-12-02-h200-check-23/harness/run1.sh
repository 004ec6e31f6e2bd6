#!/usr/bin/env bash
# Session 22 harness run: uniform-warpgroup (new) vs parent (old); 256x128; M64 narrow tiles.
set -uo pipefail
d=$(cd "$(dirname "$0")" && pwd); o=${OUT:-/tmp/out}; mkdir -p $o
nvidia-smi --query-gpu=name,clocks.sm,power.draw,temperature.gpu --format=csv > $o/smi.txt
run() { # label bin args...
  local l=$1 b=$2; shift 2
  timeout 100 $b "$@" 2>&1 | sed "s/^/[$l] /" >> $o/time.log || echo "[$l] RUN FAILED rc=$?" >> $o/time.log
}
# checks
for b in $d/new/bin/* $d/old/bin/* $d/cta2/bin/*; do
  echo "== $b" >> $o/check.log
  timeout 60 $b --check 1 8 16 200 2112 528 129 136 144 64 7168 2048 4096 2112 7168 300 4096 1536 >> $o/check.log 2>&1 || echo "CHECK RUN FAILED $b rc=$?" >> $o/check.log
done
BIG="4096 2112 7168 4096 7168 16384 4096 4096 7168"
for pass in 1 2; do
  run old192 $d/old/bin/bm128_bn192_st4_wg2_e128_c1_a1_s1 $BIG
  run new192 $d/new/bin/bm128_bn192_st4_wg2_e128_c1_a1_s1 $BIG
  run new192c2 $d/new/bin/bm128_bn192_st4_wg2_e128_c2_a1_s1 $BIG
  run new160 $d/new/bin/bm128_bn160_st5_wg2_e64_c1_a1_s1 $BIG
  run new256 $d/new/bin/bm256_bn128_st3_wg2_e128_c1_a1_s1 $BIG
  run new256c2 $d/new/bin/bm256_bn128_st3_wg2_e128_c2_a1_s1 $BIG
done
SMALL="64 2112 7168 64 4096 7168 64 7168 16384 64 24576 1536 128 2112 7168 128 4096 7168"
for pass in 1 2; do
  run old64x96s4 $d/old/bin/bm64_bn96_st11_wg1_e0_c1_a2_s4 $SMALL
  run new64x96s4 $d/new/bin/bm64_bn96_st11_wg1_e0_c1_a2_s4 $SMALL
  run old64x128s2 $d/old/bin/bm64_bn128_st9_wg1_e0_c1_a2_s2 $SMALL
  run new64x128s2 $d/new/bin/bm64_bn128_st9_wg1_e0_c1_a2_s2 $SMALL
  run new64x16 $d/new/bin/bm64_bn16_st16_wg1_e32_c1_a2_s1 $SMALL
  run new64x24 $d/new/bin/bm64_bn24_st16_wg1_e0_c1_a2_s1 $SMALL
  run new64x32s2 $d/new/bin/bm64_bn32_st16_wg1_e0_c1_a2_s2 $SMALL
  run cta2_64x64 $d/cta2/bin/bm64_bn64_st13_wg1_e128_c1_a2_s1 $SMALL
done
# at the power cap: 100 launches
for pass in 1 2; do
  for v in old/bin/bm128_bn192_st4_wg2_e128_c1_a1_s1 new/bin/bm128_bn192_st4_wg2_e128_c1_a1_s1 new/bin/bm256_bn128_st3_wg2_e128_c2_a1_s1; do
    REPS=100 run "cap:${v%%/*}:${v##*/bm}" $d/$v 4096 7168 16384
  done
done
nvidia-smi --query-gpu=name,clocks.sm,power.draw,temperature.gpu --format=csv >> $o/smi.txt
echo "== checks"; grep -E "FAIL|MISMATCH|ERR" $o/check.log | head -20; echo "passes: $(grep -c PASS $o/check.log)"
python3 - $o/time.log <<'PY'
import re,sys,collections
t=collections.defaultdict(list); cols=[]; shapes=[]
for line in open(sys.argv[1]):
    m=re.match(r"\[(\S+)\] TIME .*?(M\d+ N\d+ K\d+): ([\d.]+) ms (\d+) TFLOPS (\d+) GB/s",line)
    if m:
        l,s,ms,tf,gb=m.groups()
        if l not in cols: cols.append(l)
        if s not in shapes: shapes.append(s)
        t[(l,s)].append(f"{float(ms)*1000:.1f}us/{tf}/{gb}")
    elif "FAIL" in line: print(line.strip())
for s in shapes:
    print("##",s)
    for l in cols:
        if (l,s) in t: print(f"  {l:28s} "+"  ".join(t[(l,s)]))
PY
