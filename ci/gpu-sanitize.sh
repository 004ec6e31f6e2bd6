#!/usr/bin/env bash
# compute-sanitizer (memcheck, racecheck, synccheck, initcheck) over the CUDA conformance suite
# and the CUDA crate's test binaries, on the GPU machine:   bash PACKDIR/gpu-sanitize.sh OUTDIR
# (ci/gpu-run.sh runs it). One log per tool and binary under OUTDIR, then OUTDIR/summary.txt with
# one line per tool: the findings (the sum of compute-sanitizer's `ERROR SUMMARY: N errors`), the
# runs, and those that failed or ran out of time. Exits 1 when any tool found anything or a run
# failed.
#
# Time: TESSERA_SANITIZER_QUICK=1 (the default) sets PROPTEST_CASES=4 and leaves out the timing
# tests (model-sized shapes, far too slow under the sanitizer); TESSERA_SANITIZER_QUICK=0 runs
# everything with the suites' own case counts. Each run is cut after TESSERA_SANITIZER_TIMEOUT
# seconds (default 300). out_of_memory is always left out (it fills the device, which the
# sanitizer's own allocations need). TESSERA_SANITIZER_TOOLS picks the tools (default
# "memcheck racecheck synccheck initcheck"), so that a long run can be split over calls;
# TESSERA_SANITIZER_JOBS runs that many at once, over the GPUs of TESSERA_SANITIZER_GPUS ("0,1").
set -uo pipefail
out=${1:?usage: gpu-sanitize.sh OUTDIR}
mkdir -p "$out"
pack=$(cd "$(dirname "$0")" && pwd)
export LD_LIBRARY_PATH="/usr/local/nvidia/lib64:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"
export TESSERA_CACHE_DIR=${TESSERA_CACHE_DIR:-/tmp/tessera-cache}
export TESSERA_REQUIRE_BACKENDS=cuda TESSERA_REQUIRE_CUDA=1 TESSERA_REQUIRE_NVRTC=1
quick=${TESSERA_SANITIZER_QUICK:-1}
timeout_s=${TESSERA_SANITIZER_TIMEOUT:-300}
[ "$quick" = 1 ] && export PROPTEST_CASES=${PROPTEST_CASES:-4}
# The tests with many large launches (the MLA variable-query and schedule tests) run fewer and
# shorter cases under the sanitizer (kernels-cuda/tests/common: under_sanitizer).
export TESSERA_SANITIZER_SMALL=1
sanitizer=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer /usr/local/cuda-*/bin/compute-sanitizer 2>/dev/null | head -n 1)
if [ -z "$sanitizer" ] || [ ! -x "$sanitizer" ]; then
  echo "sanitizer: compute-sanitizer not found (PATH, /usr/local/cuda/bin): no findings can be reported" | tee "$out/summary.txt"
  exit 1
fi
"$sanitizer" --version > "$out/version.txt" 2>&1
# The pack's binaries (after the tool check, so that a machine without it says so first).
source "$pack/gpu-unpack.sh"
# The binaries: (log name, command...). The conformance suite's CUDA tests only.
targets=("conformance_cuda|$pack/bin/test-conformance cuda --test-threads=1")
for t in "$pack"/bin/cutest-*; do
  [ -x "$t" ] || continue
  name=$(basename "$t")
  case "$name" in
    cutest-out_of_memory) continue ;;
    cutest-fp8_gemm_timing|cutest-attention_timing|cutest-attention_backward_timing) [ "$quick" = 1 ] && continue ;;
  esac
  targets+=("$name|$t --test-threads=1")
done
# Every (tool, binary) pair is one task; TESSERA_SANITIZER_JOBS of them run at once (default 1),
# spread round-robin over the GPUs listed in TESSERA_SANITIZER_GPUS (default: the first GPU).
jobs=${TESSERA_SANITIZER_JOBS:-1}
read -r -a gpus <<< "$(echo "${TESSERA_SANITIZER_GPUS:-0}" | tr ',' ' ')"
tools=(${TESSERA_SANITIZER_TOOLS:-memcheck racecheck synccheck initcheck})
one_task() { # tool, name, gpu, command...
  local tool=$1 name=$2 gpu=$3; shift 3
  local log="$out/$tool-$name.log" t0=$(date +%s)
  # RUST_MIN_STACK: the sanitizer's interception runs on the test threads' stacks.
  CUDA_VISIBLE_DEVICES=$gpu RUST_MIN_STACK=${RUST_MIN_STACK:-67108864} timeout "$timeout_s" "$sanitizer" \
    --tool "$tool" --error-exitcode 1 "$@" > "$log" 2>&1
  local rc=$?
  # A binary whose tests passed without any CUDA call (unit tests of the host side): the
  # sanitizer says so and exits 255; that is a pass with nothing to check, noted in the log.
  if [ "$rc" = 255 ] && grep -q "terminated before first instrumented API call" "$log" \
     && grep -q "^test result: ok" "$log"; then
    echo "gpu-sanitize: no CUDA call in this binary; its tests passed" >> "$log"
    rc=0
  fi
  local n=$(grep -oE 'ERROR SUMMARY: [0-9]+ error' "$log" | awk '{s += $3} END {print s + 0}')
  printf '%-10s %-34s rc=%-3s findings=%-4s gpu=%s %4ss\n' "$tool" "$name" "$rc" "$n" "$gpu" "$(( $(date +%s) - t0 ))" >> "$out/runs.txt"
}
: > "$out/runs.txt"
: > "$out/summary.txt"
task=0
for tool in "${tools[@]}"; do
  for target in "${targets[@]}"; do
    name=${target%%|*}
    read -r -a cmd <<< "${target#*|}"
    # racecheck keeps per-launch state on the host (tens of GB over a long test binary): one
    # process per test, so that one test's size cannot end the others' checks.
    tests=("")
    if [ "$tool" = racecheck ]; then
      mapfile -t tests < <("${cmd[@]}" --list 2>/dev/null | sed -n 's/: test$//p')
      [ "${#tests[@]}" -gt 0 ] || tests=("")
    fi
    for t in "${tests[@]}"; do
      while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do wait -n; done
      # One test: its own log name and `--exact TEST`; else the whole binary.
      log_name=$name one=()
      [ -n "$t" ] && { log_name="$name--$t"; one=(--exact "$t"); }
      one_task "$tool" "$log_name" "${gpus[$((task % ${#gpus[@]}))]}" "${cmd[@]}" "${one[@]}" &
      task=$((task + 1))
    done
  done
done
wait
failed_any=0
for tool in "${tools[@]}"; do
  line=$(awk -v tool="$tool" -v t="$timeout_s" -v q="$quick" '
    $1 == tool { runs++; split($3, r, "="); split($4, f, "="); findings += f[2];
                 if (r[2] == 124) timed++; else if (r[2] != 0) failed++ }
    END { printf "sanitizer %s: %d findings in %d runs (%d failed, %d timed out after %ss; quick=%s)",
                 tool, findings, runs, failed, timed, t, q }' "$out/runs.txt")
  echo "$line" | tee -a "$out/summary.txt"
  case "$line" in *": 0 findings"*"(0 failed"*) ;; *) failed_any=1 ;; esac
done
exit "$failed_any"
