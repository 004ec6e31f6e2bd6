#!/usr/bin/env bash
# On the GPU machine: build the sm90 MLA decode harness (nvcc), check it against the CPU
# reference, time it on the standard shapes; NCU=1 also profiles one h_q 128 launch.
#   bash kernels-cuda/dev/mla_decode_sm90.sh OUTDIR      (EXTRA_DEFS="-D..." for a variant)
set -uo pipefail
out=${1:?outdir}
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$out"
smem=$(python3 -c "print(9*8192 + 2*9*8192 + 8192 + 2*64*4*2 + 2*9*8 + 2*8 + 16)")
nvcc -O3 -std=c++17 -gencode arch=compute_90a,code=sm_90a -Xptxas -v -lineinfo -DFMT=0 -DLATENT=512 -DROPE=64 \
  -DVARLEN=0 ${EXTRA_DEFS:-} -DTESSERA_SMEM_BYTES=$smem -DTESSERA_THREADS=384 -o "$out/mla90" \
  "$here/mla_decode_sm90_harness.cu" > "$out/build.log" 2>&1 || { echo "BUILD FAILED"; tail -30 "$out/build.log"; exit 1; }
grep -E "registers|spill" "$out/build.log"
timeout 120 "$out/mla90" --check 2>&1 | tee "$out/check.log" | tail -12
# ONE="B S_Q H S_K;..." times only those cases.
if [ -n "${ONE:-}" ]; then
  IFS=';' read -ra cases <<< "$ONE"
  for c in "${cases[@]}"; do timeout 60 "$out/mla90" --one $c 2>&1 | tee -a "$out/time.log"; done
elif [ -z "${NOTIME:-}" ]; then
  timeout 300 "$out/mla90" --time 2>&1 | tee "$out/time.log"
fi
if [ -n "${NCU:-}" ]; then
  timeout 200 ncu --clock-control none -k mla_decode -s 2 -c 1 --set full --import-source yes -o "$out/mla90" "$out/mla90" --one ${NCU_CASE:-64 1 16 4096} > "$out/ncu.log" 2>&1
  ncu --import "$out/mla90.ncu-rep" --page details > "$out/ncu-details.txt" 2>&1
  grep -E "Duration|Throughput|Issue Slot|Warp Cycles Per|Eligible Warps|No Eligible|Registers Per|L1/TEX Hit|L2 Hit|Mem Busy|Max Bandwidth" "$out/ncu-details.txt" | head -30
  python3 "$here/ncu_stalls.py" "$out/mla90.ncu-rep"
fi
