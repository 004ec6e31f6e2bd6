#!/usr/bin/env bash
# On the GPU machine: the MLA decode's tile loads alone (cp.async, TMA, TMA multicast over the
# two row groups of h_q 128), see mla_loads_sm90.cu. Prints one table per shape.
#   bash kernels-cuda/dev/mla_loads_sm90.sh OUTDIR
set -uo pipefail
out=${1:?outdir}
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$out"
nvcc -O3 -std=c++17 -gencode arch=compute_90a,code=sm_90a -Xptxas -v -o "$out/mla_loads" "$here/mla_loads_sm90.cu" \
  > "$out/build.log" 2>&1 || { echo "BUILD FAILED"; tail -20 "$out/build.log"; exit 1; }
for shape in "64 8192" "128 8192" "64 32768" "128 32768"; do
  timeout 60 "$out/mla_loads" $shape 2>&1 | tee -a "$out/loads.log"
done
