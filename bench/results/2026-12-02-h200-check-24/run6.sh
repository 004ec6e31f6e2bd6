#!/usr/bin/env bash
# Session 22, call 6: default-plan GEMM bench on the new plan rules and grid (check-24), tune --all-times, plan tests.
set -uo pipefail
o=${OUT:-/tmp/out}; mkdir -p $o/tests
pack=$(pwd)/.gpu-pack; source $pack/gpu-unpack.sh
head -c 60 $pack/COMMIT; echo
(cd $pack && timeout 120 $pack/bin/cutest-plan_candidates gemm > $o/tests/plan_gemm.log 2>&1; echo "plan_gemm rc=$?"; grep "test result" $o/tests/plan_gemm.log)
BENCH_ONLY=fp8 BENCH_BUDGET=150 VK_RESERVE=20 VK_BUDGET=1 bash $pack/gpu-bench.sh $o/gemm > $o/gemm-bench.log 2>&1; echo "gemm bench rc=$?"
export TESSERA_CACHE_DIR=/tmp/tc; export LD_LIBRARY_PATH=/usr/local/nvidia/lib64:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
timeout 150 $pack/bin/tessera tune --op gemm --all-times > $o/tune-all.log 2>&1; echo "tune rc=$?"
grep -E "^\| M(64|128|4096|18432) |contiguous|masked|1x128" $o/gemm/results.md | cut -c1-110
