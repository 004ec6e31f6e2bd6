#!/usr/bin/env bash
# Session 22, call 4: run3 (harness + plan tests + sanitizer), then check-23: GEMM and MLA benches, tessera check.
set -uo pipefail
d=$(cd "$(dirname "$0")" && pwd); o=${OUT:-/tmp/out}; mkdir -p $o/harness $o/tests $o/sanitizer
OUT=$o/harness bash $d/run3.sh > $o/harness/run3.log 2>&1
mv $o/harness/plan_gemm.log $o/tests/ 2>/dev/null; mv $o/harness/memcheck-gemm.log $o/harness/racecheck-gemm.log $o/sanitizer/ 2>/dev/null
pack=$(pwd)/.gpu-pack; source $pack/gpu-unpack.sh
(cd $pack && timeout 120 $pack/bin/tessera check --backend cuda --quick > $o/tests/check_cuda.log 2>&1; echo "check rc=$?")
BENCH_ONLY=fp8 BENCH_BUDGET=150 VK_RESERVE=50 VK_BUDGET=40 bash $pack/gpu-bench.sh $o/gemm > $o/gemm-bench.log 2>&1; echo "gemm bench rc=$?"
BENCH_ONLY=mla_decode BENCH_BUDGET=150 VK_RESERVE=40 VK_BUDGET=30 bash $pack/gpu-bench.sh $o/mla > $o/mla-bench.log 2>&1; echo "mla bench rc=$?"
grep -E "^shape|^M|^==|passes|rc=|FAIL|SUMMARY|test result" $o/harness/run3.log | head -60
tail -2 $o/tests/check_cuda.log
grep -E "^\| M(64|128|4096) " $o/gemm/results.md | cut -c1-140 | head -20
