#!/usr/bin/env bash
# On the GPU machine: build and check/time head_dim 128 bf16 of the sm90 attention backward in
# several variants (STAGES, BWD90_OVERLAP), each in its own folder under OUTDIR, builds in
# parallel, runs one after the other. EXTRA_DEFS go to the two-pass units; the fused units
# (FUSED=1, the default) take FUSED_DEFS from the environment.
#   bash kernels-cuda/dev/sparse_attention_bwd_sm90_variants.sh OUTDIR "NAME:STAGES:EXTRA_DEFS" ...
set -uo pipefail
out=${1:?outdir}; shift
here=$(cd "$(dirname "$0")" && pwd)
for v in "$@"; do
  IFS=: read -r name st defs <<< "$v"
  (STAGES=$st EXTRA_DEFS="$defs" CONFIGS="128 1" NOCHECK=1 NOTIME=1 bash "$here/sparse_attention_bwd_sm90.sh" "$out/$name" > "$out/$name.build.log" 2>&1) &
done
wait
for v in "$@"; do
  IFS=: read -r name st defs <<< "$v"
  echo "== $name (STAGES $st $defs)"; grep -E "spill|C75|FAILED" "$out/$name.build.log"
  timeout 60 "$out/$name/bwd90_d128_bf1" --check 2>&1 | grep -E "CHECKS|FAIL"
  timeout 60 "$out/$name/bwd90_d128_bf1" --time ${TOKENS:-32768} ${HEADS:-24} ${DENSITY:-0.25} 2>&1 | grep -E "wgmma|fused|TIME"
done
