#!/usr/bin/env bash
# On the GPU machine: build the MLA decode harness (nvcc) for each variant named, check each
# against the CPU reference, time each on the standard shapes, print a bf16-vs-FP8 table.
#   bash kernels-cuda/dev/mla_decode_sm90.sh OUTDIR [VARIANT...]
# VARIANT: bf16 (sm90 kernel, bf16 cache), bf16-seesaw (the same kernel with SEESAW=1: FlashMLA's
# schedule, TMA refills), fp8-seesaw (the same over the FP8 cache: codes by TMA, converted by the
# producer warpgroup), fp8-r16 / fp8-r32 (sm90 FP8 kernel, 16 / 32 rows per
# CTA), fp8rs-r16 / fp8rsp-r32 (sm90/mla_decode_fp8_rs.cu / _rs_pairs.cu: the cache operand in registers), bf16t-r16 / bf16t-r32 (the same kernel with FMT 0: bf16 records copied by cp.async,
# transposed products, no row padding), mma-fp8-RSxNxST / mma-bf16-RSxNxST (the mma.sync kernel, FP8 / bf16 cache, tiling (RS, N, ST)); default: bf16
# fp8-r16 fp8-r32. EXTRA_DEFS="-D..." builds every variant with it; NOCHECK=1 / NOTIME=1 skip;
# ONE="B S_Q H S_K;..." times only those cases; HEADS=16 times only h_q 16; TAG=-x
# renames the variants of this run in the table; CHECK_TIMEOUT=S (default 120); NCU=1: see the end.
set -uo pipefail
out=${1:?outdir}
shift
variants=("$@")
[ ${#variants[@]} -eq 0 ] && variants=(bf16 fp8-r16 fp8-r32)
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$out"
build() {  # variant -> $out/$variant (binary), $out/$variant.build.log
  local v=$1 defs smem
  case $v in
    bf16) defs="-DHK=0 -DFMT=0 -DSEESAW=0"; smem=$((9*8192 + 2*9*8192 + 8192 + 2*64*4*2 + 2*9*8 + 2*8 + 16)) ;;
    bf16-seesaw) defs="-DHK=0 -DFMT=0 -DSEESAW=1"; smem=$((9*8192 + 2*9*8192 + 8192 + 2*64*4*2 + 2*9*8 + 2*8 + 16 + 3*64*4 + 2*8)) ;;
    fp8-seesaw) defs="-DHK=0 -DFMT=1 -DSEESAW=1"; smem=$((9*8192 + 2*9*8192 + 8192 + 2*64*16 + 2*9*8 + 2*2*8 + 16 + 3*64*4)) ;;
    fp8-r*) local r=${v#fp8-r}; defs="-DHK=1 -DFMT=1 -DROWS=$r"; smem=$((1312*r + 147504)) ;;
    fp8rs-r16) defs="-DHK=3 -DFMT=1 -DROWS=16"; smem=204176 ;;
    fp8rsp-r32) defs="-DHK=4 -DFMT=1 -DROWS=32"; smem=215760 ;;
    bf16t-r*) local r=${v#bf16t-r}; defs="-DHK=1 -DFMT=0 -DROWS=$r"; smem=$((1312*r + 147632)) ;;
    mma-*) local f=1 t=${v#mma-fp8-}; [[ $v == mma-bf16-* ]] && { f=0; t=${v#mma-bf16-}; }
      IFS=x read -r rs n st <<< "$t"
      local m=$((16*rs)) q=$((16*rs*1168)); [ "$rs" = 1 ] && q=0
      # mla_smem_layout of kernels/mla_decode.cu: Q, key tiles (STAGES for bf16, 1 + raw stages for FP8), P, exchange
      if [ $f = 0 ]; then smem=$((q + st*n*1168 + m*(n+8)*2 + (8/rs)*m*4)); else smem=$((q + n*1168 + st*n*656 + m*(n+8)*2 + (8/rs)*m*4)); fi
      defs="-DHK=2 -DFMT=$f -DROW_SLICES=$rs -DKEY_TILE=$n -DSTAGES=$st -DDV_CHUNK=512" ;;
    *) echo "unknown variant $v"; return 1 ;;
  esac
  nvcc -O3 -std=c++17 -gencode arch=compute_90a,code=sm_90a -Xptxas -v -lineinfo $defs -DLATENT=512 -DROPE=64 \
    -DVARLEN=0 ${EXTRA_DEFS:-} -DTESSERA_SMEM_BYTES=$smem -DTESSERA_THREADS=$(case $v in mma-*) echo 256 ;; *) echo 384 ;; esac) \
    -o "$out/$v" "$here/mla_decode_sm90_harness.cu" > "$out/$v.build.log" 2>&1 || { echo "BUILD FAILED $v"; tail -20 "$out/$v.build.log"; return 1; }
  echo "built $v: $(grep -oE 'Used [0-9]+ registers|[0-9]+ bytes spill stores' "$out/$v.build.log" | tr '\n' ' ')$(grep -c C751 "$out/$v.build.log") C751x"
}
for v in "${variants[@]}"; do build "$v" & done
wait
for v in "${variants[@]}"; do
  [ -x "$out/$v" ] || continue
  if [ -z "${NOCHECK:-}" ]; then
    timeout ${CHECK_TIMEOUT:-120} "$out/$v" --check > "$out/$v.check.log" 2>&1; rc=$?
    echo "check $v rc=$rc $(grep -c PASS "$out/$v.check.log") pass, $(grep -c FAIL "$out/$v.check.log") fail"
    grep -E "FAIL|MISMATCH" "$out/$v.check.log" | head -4
    # A check that ran out of time (a hang) is not timed: the run stays within its budget.
    [ $rc = 124 ] && { echo "not timing $v: its check timed out"; continue; }
  fi
  if [ -n "${ONE:-}" ]; then
    IFS=';' read -ra cases <<< "$ONE"
    for c in "${cases[@]}"; do timeout 60 "$out/$v" --one $c >> "$out/time.log" 2>&1; done
  elif [ -z "${NOTIME:-}" ]; then
    timeout 150 "$out/$v" --time ${HEADS:+--heads $HEADS} >> "$out/time.log" 2>&1 || echo "time $v rc=$?"
  fi
done
# TAG=-x renames this run's variants (e.g. a build with other EXTRA_DEFS) in its table.
[ -n "${TAG:-}" ] && [ -f "$out/time.log" ] && sed -i "s/^TIME \([^ ]*\)/TIME \1${TAG}/" "$out/time.log"
[ -f "$out/time.log" ] && python3 "$here/mla_decode_sm90_table.py" "$out/time.log"
# NCU=1 profiles one launch of the first variant (NCU_CASE="B S_Q H S_K") and prints the speed of
# light and the stall reasons.
if [ -n "${NCU:-}" ] && [ -x "$out/${variants[0]}" ]; then
  v=${variants[0]}
  timeout 200 ncu --clock-control none -k mla_decode -s 2 -c 1 --set full --import-source yes -o "$out/$v" "$out/$v" --one ${NCU_CASE:-64 1 16 4096} > "$out/ncu.log" 2>&1
  ncu --import "$out/$v.ncu-rep" --page details > "$out/ncu-details.txt" 2>&1
  grep -E "Duration|Throughput|Issue Slot|Warp Cycles Per|Eligible Warps|No Eligible|Registers Per|L1/TEX Hit|L2 Hit|Mem Busy|Max Bandwidth" "$out/ncu-details.txt" | head -30
  python3 "$here/ncu_stalls.py" "$out/$v.ncu-rep"
fi
