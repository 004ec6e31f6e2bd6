#!/usr/bin/env bash
# On the GPU machine: build the sm90 attention backward harness (nvcc) for head_dim 64/128 x
# bf16/f16 (five compile units each: the mma.sync passes 0, 1, 2 and the wgmma passes 1, 2;
# with FUSED=1, the default, three more: the fused dk/dv/dq pass in its atomic and deterministic
# modes and the dq conversion; with WRITER=1, the default when FUSED=1, three more: the fused
# pass with the dQ writer warps (BWD90_DQ_WRITER) in both modes and its tiled dq conversion),
# check each against the mma.sync kernel and an f64 CPU reference, then time both kernels' tile passes (and the fused pass) at batch 1, TOKENS (32768), HEADS
# (24), a random mask of DENSITY (0.25) and dense.
#   bash kernels-cuda/dev/sparse_attention_bwd_sm90.sh OUTDIR
#   env: STAGES (3), EXTRA_DEFS ("-D..." for the wgmma units 11, 12), FUSED_DEFS (for 13, 14,
#        16, 17), WRITER (1 with FUSED: units 16, 17, 18), CHECK_TIMEOUT (240), TIME_TIMEOUT (120),
#        CONFIGS ("128 1;64 1;..."),
#        NOCHECK, NOTIME, TIME_CONFIGS ("128 1" ...), TOKENS, HEADS, DENSITY, NCU=1 (the wgmma
#        kernels, the atomic fused ones included, at 16384 tokens), FUSED (1),
#        LINK_FLAGS (e.g. -L<dir of libcudart_static.a> for a compile-only check elsewhere),
#        NVCC (e.g. "bash kernels-cuda/dev/nvcc_local.sh" with NOCHECK=1 NOTIME=1 and LINK_FLAGS:
#        build here, run the binaries on the GPU machine; ONLY_FUSED=1 there times the fused
#        writer pass alone)
set -uo pipefail
out=${1:?outdir}
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$out"
st=${STAGES:-3}
nv="${NVCC:-nvcc} -O3 -std=c++17 -gencode arch=compute_90a,code=sm_90a -lineinfo"
build() { # D BF16
  local D=$1 bf=$2 tag=d$1_bf$2 cb=$(($1 / 64))
  local objs=() units="0 1 2 11 12"
  local writer=0
  [ "${FUSED:-1}" = 1 ] && units="$units 13 14 15" && [ "${WRITER:-1}" = 1 ] && writer=1 && units="$units 16 17 18"
  local fused_smem=$((2 * cb * 128 * 128 + 2 * st * cb * 64 * 128 + 2 * 2 * 64 * 128 + 2 * st * 64 * 4 + 2 * st * 8))
  local writer_smem=$((fused_smem + 2 * 64 * 64 * 4 + 2 * 2 * 8))
  for unit in $units; do
    local defs smem
    case $unit in
      0) defs="-DPASS=0 -DTESSERA_SMEM_BYTES=0 -DTESSERA_THREADS=128" ;;
      1) defs="-DPASS=1 -DBLOCK=128 -DSTAGES=2 -DTESSERA_SMEM_BYTES=$((6 * 64 * (D + 8) * 2 + 2 * 2 * 64 * 4)) -DTESSERA_THREADS=128" ;;
      2) defs="-DPASS=2 -DBLOCK=128 -DSTAGES=2 -DTESSERA_SMEM_BYTES=$((6 * 64 * (D + 8) * 2)) -DTESSERA_THREADS=128" ;;
      11) defs="-DPASS=1 -DBLOCK=128 -DSTAGES=$st ${EXTRA_DEFS:-} -DTESSERA_SMEM_BYTES=$((2 * cb * 128 * 128 + 2 * st * cb * 64 * 128 + 2 * st * 64 * 4 + 2 * st * 8)) -DTESSERA_THREADS=384" ;;
      12) defs="-DPASS=2 -DBLOCK=128 -DSTAGES=$st ${EXTRA_DEFS:-} -DTESSERA_SMEM_BYTES=$((2 * cb * 128 * 128 + 2 * st * cb * 64 * 128 + 2 * st * 8)) -DTESSERA_THREADS=384" ;;
      13) defs="-DPASS=1 -DBLOCK=128 -DSTAGES=$st -DBWD90_FUSED_DQ=1 ${FUSED_DEFS:-} -DTESSERA_SMEM_BYTES=$fused_smem -DTESSERA_THREADS=384" ;;
      14) defs="-DPASS=1 -DBLOCK=128 -DSTAGES=$st -DBWD90_FUSED_DQ=1 -DBWD90_DQ_DETERMINISTIC=1 ${FUSED_DEFS:-} -DTESSERA_SMEM_BYTES=$fused_smem -DTESSERA_THREADS=384" ;;
      15) defs="-DPASS=3 -DTESSERA_SMEM_BYTES=0 -DTESSERA_THREADS=256" ;;
      16) defs="-DPASS=1 -DBLOCK=128 -DSTAGES=$st -DBWD90_FUSED_DQ=1 -DBWD90_DQ_WRITER=1 ${FUSED_DEFS:-} -DTESSERA_SMEM_BYTES=$writer_smem -DTESSERA_THREADS=384" ;;
      17) defs="-DPASS=1 -DBLOCK=128 -DSTAGES=$st -DBWD90_FUSED_DQ=1 -DBWD90_DQ_WRITER=1 -DBWD90_DQ_DETERMINISTIC=1 ${FUSED_DEFS:-} -DTESSERA_SMEM_BYTES=$writer_smem -DTESSERA_THREADS=384" ;;
      18) defs="-DPASS=3 -DBWD90_DQ_WRITER=1 -DTESSERA_SMEM_BYTES=0 -DTESSERA_THREADS=256" ;;
    esac
    case $unit in 11|12|13|14|16|17) echo "$tag u$unit: shared memory $(echo "$defs" | sed -E 's/.*SMEM_BYTES=([0-9]+).*/\1/') bytes (max 232448)" ;; esac
    $nv -Xptxas -v -c -DUNIT=$unit -DHEAD_DIM=$D -DELEM_BF16=$bf $defs -o "$out/${tag}_u$unit.o" \
      "$here/sparse_attention_bwd_sm90_unit.cu" > "$out/build_${tag}_u$unit.log" 2>&1 \
      || { echo "BUILD FAILED $tag unit $unit"; tail -20 "$out/build_${tag}_u$unit.log"; return 1; }
    [ $unit -ge 10 ] && grep -E "C75|spill" "$out/build_${tag}_u$unit.log" | sed "s/^/$tag u$unit: /"
    objs+=("$out/${tag}_u$unit.o")
  done
  $nv ${LINK_FLAGS:-} -DHEAD_DIM=$D -DFUSED=${FUSED:-1} -DWRITER=$writer -DELEM_BF16=$bf -o "$out/bwd90_$tag" "$here/sparse_attention_bwd_sm90_harness.cu" "${objs[@]}" \
    > "$out/build_$tag.log" 2>&1 || { echo "LINK FAILED $tag"; tail -20 "$out/build_$tag.log"; return 1; }
}
IFS=';' read -ra configs <<< "${CONFIGS:-128 1;128 0;64 1;64 0}"
for cfg in "${configs[@]}"; do build $cfg & done; wait
if [ -z "${NOCHECK:-}" ]; then
  for cfg in "${configs[@]}"; do
    set -- $cfg; tag=d$1_bf$2
    [ -x "$out/bwd90_$tag" ] && timeout ${CHECK_TIMEOUT:-240} "$out/bwd90_$tag" --check 2>&1 | tee "$out/check_$tag.log" | grep -E "CHECKS|FAIL|check|fused" | cut -c1-240
  done
fi
if [ -z "${NOTIME:-}" ]; then
  IFS=';' read -ra tconfigs <<< "${TIME_CONFIGS:-128 1;64 1}"
  for cfg in "${tconfigs[@]}"; do
    set -- $cfg; tag=d$1_bf$2
    [ -x "$out/bwd90_$tag" ] && timeout ${TIME_TIMEOUT:-120} "$out/bwd90_$tag" --time ${TOKENS:-32768} ${HEADS:-24} ${DENSITY:-0.25} 2>&1 | tee -a "$out/time.log"
  done
fi
if [ -n "${NCU:-}" ]; then
  kernels="sparse_attention_bwd_dkdv_sm90 sparse_attention_bwd_dq_sm90"
  [ "${FUSED:-1}" = 1 ] && kernels="$kernels sparse_attention_bwd_fused_sm90"
  [ "${FUSED:-1}" = 1 ] && [ "${WRITER:-1}" = 1 ] && kernels="$kernels sparse_attention_bwd_fused_writer_sm90"
  for k in $kernels; do
    NO_DENSE=1 timeout 150 ncu --clock-control none -k $k -s 1 -c 1 --set full --import-source yes -o "$out/$k" \
      "$out/bwd90_d128_bf1" --time 16384 24 ${DENSITY:-0.25} > "$out/ncu_$k.log" 2>&1
    ncu --import "$out/$k.ncu-rep" --page details > "$out/ncu_$k.txt" 2>&1
    echo "== $k"; grep -E "Duration|Issue Slot|Warp Cycles Per|No Eligible|L2 Hit|Mem Busy|Compute \(SM\) Th" "$out/ncu_$k.txt" | head -12
    python3 "$here/ncu_stalls.py" "$out/$k.ncu-rep" --sass 2>&1 | head -30
  done
fi
