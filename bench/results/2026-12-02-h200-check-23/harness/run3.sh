#!/usr/bin/env bash
# Session 22, call 3: 64 x 64 at two CTAs per SM against the plan's small-M picks at K 7168/16384; plan tests + sanitizer of HEAD.
set -uo pipefail
d=$(cd "$(dirname "$0")" && pwd); o=${OUT:-/tmp/out}; mkdir -p $o
run() { local l=$1 b=$2; shift 2
  timeout 100 $b "$@" 2>&1 | sed "s/^/[$l] /" >> $o/time.log || echo "[$l] RUN FAILED rc=$?" >> $o/time.log; }
for b in $d/new/bin/bm128_bn176*_c2* $d/new/bin/bm128_bn160*_c2* $d/new/bin/bm128_bn128*_s2 $d/new/bin/bm128_bn128*_s4 $d/new/bin/bm64_bn64*_s2; do
  echo "== $b" >> $o/check.log
  timeout 60 $b --check 1 8 16 200 2112 528 129 136 144 64 7168 2048 4096 2112 7168 300 4096 1536 >> $o/check.log 2>&1 || echo "CHECK RUN FAILED $b rc=$?" >> $o/check.log
done
S="64 7168 16384 128 7168 16384 64 4096 7168 128 4096 7168 64 2112 7168 128 2112 7168 64 24576 1536 96 7168 16384 96 4096 7168"
for pass in 1 2; do
  for b in new/bin/bm128_bn128_st6_wg2_e0_c1_a1_s2 new/bin/bm128_bn128_st6_wg2_e0_c1_a1_s4 new/bin/bm64_bn128_st9_wg1_e0_c1_a2_s2 new/bin/bm64_bn64_st13_wg1_e0_c1_a2_s2 new/bin/bm64_bn96_st11_wg1_e0_c1_a2_s4 cta2/bin/bm64_bn64_st13_wg1_e128_c1_a2_s1 new/bin/bm128_bn192_st4_wg2_e128_c1_a1_s1; do
    [ -x $d/$b ] || { ls $d/new/bin; echo "missing $b"; continue; }
    l=${b%%/*}:${b##*/bm}; run ${l%%_st*}${l##*_a?} $d/$b $S
  done
done

# large M: B multicast per width at the three M4096 shapes; then the reduced persistent grid at the power cap
BIG="4096 4096 7168 4096 2112 7168 4096 7168 16384 4096 24576 1536"
for pass in 1 2; do
  for b in $d/new/bin/bm128_bn1[6-9]*_s1; do l=${b##*/bm}; run L${l%%_st*}${l#*_e*_}  $b $BIG; done
done
for pass in 1 2; do
  REPS=100 run capfull192 $d/new/bin/bm128_bn192_st4_wg2_e128_c1_a1_s1 4096 7168 16384
  REPS=100 GRID_CTAS=122 run cap122_192 $d/new/bin/bm128_bn192_st4_wg2_e128_c1_a1_s1 4096 7168 16384
  REPS=100 run capfull160 $d/new/bin/bm128_bn160_st5_wg2_e64_c1_a1_s1 4096 7168 16384
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
B=$pack/bin; ls $B | head -3 > /dev/null
(cd $pack && timeout 200 $B/cutest-plan_candidates gemm > $o/plan_gemm.log 2>&1; echo "plan_gemm rc=$?")
tail -3 $o/plan_gemm.log
for tool in memcheck racecheck; do
  PROPTEST_CASES=4 TESSERA_SANITIZER_SMALL=1 RUST_MIN_STACK=67108864 timeout 200 compute-sanitizer --tool $tool $B/cutest-plan_candidates every_gemm_candidate --test-threads=1 > $o/$tool-gemm.log 2>&1; echo "$tool rc=$?"
  grep -E "ERROR SUMMARY|RACECHECK SUMMARY|test result" $o/$tool-gemm.log
done
