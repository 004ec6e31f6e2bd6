#!/usr/bin/env bash
# On the GPU machine: build the FP8 quantizer harness (nvcc) once per configuration of the
# library kernel, input type and scale rule; time the bf16, float-rule build of each (one at a
# time; each checks itself first) and print the ROW lines (4096x7168 1x128 and 7168x7168 128x128)
# with the registers ptxas gave each kernel; then check every other build bit for bit against the
# reference (in parallel).
#   bash kernels-cuda/dev/fp8_quantize_sm90.sh OUTDIR CONFIG...
# CONFIG: "GROUP_THREADS GROUP_BATCH MIN_CTAS_PER_SM UNIT_ORDER" (the library's defines, as the
# plan renders them: "8 1 4 1" is the sm_90 default for 16-bit inputs, interleaved; "8 2 4 0" the
# contiguous candidate; f32 "16 2 3 0" and "16 1 3 1"), "variants" (the exploratory variants of
# the harness, with the library's first CONFIG), or "before" (the kernel file $BEFORE, e.g. an
# older fp8_quantize.cu that takes GROUPS_PER_WARP=8).
# IN_KINDS="2 1 0" (default) are the input types checked; only bf16 (2), float rule, is timed (first).
set -uo pipefail
out=${1:?outdir}; shift
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$out/bin"
first=""
for c in "$@"; do
  case $c in
    before|variants) ;;
    *) [[ $c =~ ^[0-9]+\ [0-9]+\ [0-9]+\ [01]$ ]] \
         || { echo "bad CONFIG '$c': want \"GROUP_THREADS GROUP_BATCH MIN_CTAS_PER_SM UNIT_ORDER\"" >&2; exit 2; }
       [ -n "$first" ] || first=$c ;;
  esac
done
defs_of() {  # config -> "defines|name" (defines without quotes)
  case $1 in
    before) echo "-DGROUPS_PER_WARP=8|before" ;;
    variants) read -r gt gb mc uo <<< "$first"
      echo "-DGROUP_THREADS=$gt -DGROUP_BATCH=$gb -DMIN_CTAS_PER_SM=$mc -DUNIT_ORDER=$uo -DWITH_VARIANTS=1|variants" ;;
    *) read -r gt gb mc uo <<< "$1"
      echo "-DGROUP_THREADS=$gt -DGROUP_BATCH=$gb -DMIN_CTAS_PER_SM=$mc -DUNIT_ORDER=$uo|t${gt}b${gb}m${mc}o${uo}" ;;
  esac
}
build() {  # config kind pow2
  local d n; IFS='|' read -r d n <<< "$(defs_of "$1")"
  [ "$1" = variants ] && [ "$2" != 2 ] && return 0
  local bin="$out/bin/${n}_k$2_p$3" file=()
  [ "$1" = before ] && file=("-DLIBRARY_FILE=\"$BEFORE\"")
  # shellcheck disable=SC2086
  nvcc -O3 -std=c++17 -gencode arch=compute_90a,code=sm_90a -Xptxas -v $d "${file[@]}" "-DLIBRARY_NAME=\"$n\"" \
    -DIN_KIND=$2 -DPOW2=$3 -o "$bin" "$here/fp8_quantize_sm90_harness.cu" > "$bin.build.log" 2>&1 \
    || { echo "BUILD FAILED $n kind $2 pow2 $3"; tail -5 "$bin.build.log"; }
}
export -f build defs_of; export out here first BEFORE
builds() {  # (config kind pow2 lines on stdin) built in parallel
  xargs -P 16 -d '\n' -I{} bash -c 'IFS=$'"'"'\t'"'"' read -r c k p <<< "{}"; build "$c" "$k" "$p"'
}
# 1. The timed builds (bf16, float rule), then their runs one at a time (each also checks itself).
for c in "$@"; do printf '%s\t2\t0\n' "$c"; done | builds
# Registers and spills per kernel (each bf16 float-rule build).
for f in "$out"/bin/*_k2_p0.build.log; do
  grep -E "Compiling entry|Used|spill" "$f" | sed 's/ptxas info    : //' | paste - - - \
    | sed -E "s/Compiling entry function .([^ ']*). for .sm_90a.\s*/\1 /" | c++filt \
    | sed -E 's/\(unsigned short const\*, unsigned char\*, float\*, int, int\)//; s/Function properties for [^ ]*//; s/used [0-9]+ barriers,?//' \
    | grep -E "q1x128|q128|fp8_quantize" | tr -s ' \t' ' ' | sed "s|^|$(basename "$f" _k2_p0.build.log): |"
done > "$out/registers.txt"
grep -E "^[^:]*: fp8_quantize" "$out/registers.txt" | sed -E 's/ 0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads//'
for b in "$out"/bin/*_k2_p0; do
  timeout 120 "$b" > "$b.run.log" 2>&1; rc=$?
  [ $rc = 0 ] || echo "RUN FAILED $(basename "$b") rc=$rc"
  grep -h -E "EXHAUSTIVE|NONFINITE|CHECK|COPY|ROW" "$b.run.log"
done
# 2. The other builds (input types IN_KINDS, both rules), checked in parallel.
for c in "$@"; do for k in ${IN_KINDS:-2 1 0}; do for p in 0 1; do
  [ "$k$p" = 20 ] || printf '%s\t%s\t%s\n' "$c" "$k" "$p"
done; done; done | builds
ls "$out"/bin/ | grep -vE '\.log$' | grep -v '_k2_p0$' \
  | xargs -P 6 -I{} bash -c 'timeout 120 "$out/bin/{}" --check > "$out/bin/{}.check.log" 2>&1; echo "{} rc=$?"' > "$out/checks.txt"
grep -h -E "EXHAUSTIVE|NONFINITE|CHECK FAIL" "$out"/bin/*.check.log | sort | uniq -c
echo "check builds: $(grep -c 'rc=0' "$out/checks.txt") passed, $(grep -vc 'rc=0' "$out/checks.txt") failed"
grep -v 'rc=0' "$out/checks.txt"
