#!/usr/bin/env bash
# On the GPU machine: build the sm90 attention harness (nvcc) for head_dim 64/128 x bf16/f16,
# check each against the CPU reference, then time head_dim 128 bf16 on the radial masks in
# MASKDIR (*.bin from `tessera mask --json`, see the harness) and dense over the same tokens.
#   bash kernels-cuda/dev/sparse_attention_sm90.sh OUTDIR MASKDIR   (EXTRA_DEFS="-D..." for a variant)
# NVCC="bash kernels-cuda/dev/nvcc_local.sh" LINK_FLAGS=-L<cu13/lib> NOCHECK=1 builds off the GPU
# machine (give no MASKDIR); ROW_ORDER=longest|natural|binsN|widthW at run time sets the CTAs'
# row order (default bins24, the library's).
set -uo pipefail
out=${1:?outdir}; masks=${2:-}
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$out"
build() { # D BF16
  local st=${STAGES:-3}
  local smem=$(python3 -c "D=$1; cb=D//64; print(cb*128*128 + 2*$st*cb*128*128 + 4*$st*8 + 8)")
  ${NVCC:-nvcc} -O3 -std=c++17 -gencode arch=compute_90a,code=sm_90a -Xptxas -v -lineinfo -DHEAD_DIM=$1 -DELEM_BF16=$2 \
    -DBLOCK=128 -DSTAGES=$st ${EXTRA_DEFS:-} -DTESSERA_SMEM_BYTES=$smem -DTESSERA_THREADS=384 ${LINK_FLAGS:-} -o "$out/att90_d$1_bf$2" \
    "$here/sparse_attention_sm90_harness.cu" > "$out/build_d$1_bf$2.log" 2>&1 || { echo "BUILD FAILED d$1 bf$2"; tail -30 "$out/build_d$1_bf$2.log"; return 1; }
  grep -E "registers|spill" "$out/build_d$1_bf$2.log" | sed "s/^/d$1 bf$2: /"
}
for cfg in "128 1" "128 0" "64 1" "64 0"; do build $cfg & done; wait
if [ -z "${NOCHECK:-}" ]; then
  for cfg in d128_bf1 d128_bf0 d64_bf1 d64_bf0; do
    [ -x "$out/att90_$cfg" ] && timeout 120 "$out/att90_$cfg" --check 2>&1 | tee "$out/check_$cfg.log" | grep -E "CHECKS|FAIL|  " | head -8
  done
fi
if [ -n "$masks" ] && [ -x "$out/att90_d128_bf1" ]; then
  for m in "$masks"/hunyuan_F30.bin:24:115200 "$masks"/wan_F18.bin:40:69120; do
    IFS=: read -r f heads tokens <<< "$m"
    [ -f "$f" ] && timeout 120 "$out/att90_d128_bf1" --time "$f" "$heads" "$tokens" 2>&1 | tee -a "$out/time.log"
  done
fi
if [ -n "${NCU:-}" ]; then
  NO_DENSE=1 timeout 200 ncu --clock-control none -k sparse_attention_fwd_sm90 -s 1 -c 1 --set full --import-source yes -o "$out/att90" "$out/att90_d128_bf1" --time "$masks/wan_F18.bin" 40 69120 > "$out/ncu.log" 2>&1
  ncu --import "$out/att90.ncu-rep" --page details > "$out/ncu-details.txt" 2>&1
  grep -E "Duration|Throughput|Issue Slot|Warp Cycles Per|Eligible Warps|No Eligible|Registers Per|L2 Hit|Mem Busy" "$out/ncu-details.txt" | head -24
  python3 "$here/ncu_stalls.py" "$out/att90.ncu-rep" --sass
fi
