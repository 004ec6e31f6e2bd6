#!/usr/bin/env bash
# On the GPU machine (nvcc, no Rust): the 1x128 sweep of issue 9 (4096x7168 bf16 at >= 80% of the
# copy ceiling). Builds dev/fp8_quantize_sm90_harness.cu with WITH_SWEEP=1 for the variant sets
# of the harness (SWEEP_SET; variants of dev/fp8_quantize_1x128_sweep.cuh; bf16, float rule
# timed, power-of-two rule checked), each binary checking its kernels bit for bit against the
# reference before timing them; sets 1 and 4 also time the ceilings (copy kernels of the
# quantizer's bytes, a cudaMemcpy of its total bytes; set 1 empty kernels too). Prints the table
# (stdout); logs, ptxas registers and per-binary output in OUTDIR.
#   bash kernels-cuda/dev/fp8_quantize_1x128_sweep.sh OUTDIR [LIBRARY_CONFIG [SETS]]
# LIBRARY_CONFIG: the library kernel's "GROUP_THREADS GROUP_BATCH MIN_CTAS_PER_SM UNIT_ORDER"
# (default "8 1 4 1", the plan's default for bf16 on sm_90); SETS: default "1 2 3" (set 4, around
# set 1's winner, alone: about a minute).
set -uo pipefail
out=${1:?outdir}
config=${2:-8 1 4 1}
sets=${3:-1 2 3}
[[ $config =~ ^[0-9]+\ [0-9]+\ [0-9]+\ [01]$ ]] \
  || { echo "bad LIBRARY_CONFIG '$config': want \"GROUP_THREADS GROUP_BATCH MIN_CTAS_PER_SM UNIT_ORDER\"" >&2; exit 2; }
read -r gt gb mc uo <<< "$config"
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$out/bin"
export out here gt gb mc uo
build() {  # set pow2
  local bin="$out/bin/sweep$1_p$2"
  nvcc -O3 -std=c++17 -gencode arch=compute_90a,code=sm_90a -Xptxas -v \
    -DGROUP_THREADS="$gt" -DGROUP_BATCH="$gb" -DMIN_CTAS_PER_SM="$mc" -DUNIT_ORDER="$uo" \
    "-DLIBRARY_NAME=\"library-t${gt}b${gb}m${mc}o${uo}\"" \
    -DWITH_SWEEP=1 -DSWEEP_SET="$1" -DIN_KIND=2 -DPOW2="$2" \
    -o "$bin" "$here/fp8_quantize_sm90_harness.cu" > "$bin.build.log" 2>&1 \
    || { echo "BUILD FAILED set $1 pow2 $2"; tail -5 "$bin.build.log"; }
}
export -f build
t0=$(date +%s)
for p in 0 1; do for s in $sets; do echo "$s $p"; done; done | xargs -P 6 -I{} bash -c 'build {}'
echo "built in $(( $(date +%s) - t0 )) s"
# Registers and spills per kernel (ptxas), one line each.
for f in "$out"/bin/*_p0.build.log; do
  grep -E "Compiling entry|Used|spill" "$f" | sed 's/ptxas info    : //' | paste - - - \
    | sed -E "s/Compiling entry function .([^ ']*). for .sm_90a.\s*/\1 /" | c++filt \
    | sed -E 's/\(unsigned short const\*, unsigned char\*, float\*, int, int\)//; s/Function properties for [^ ]*//; s/used [0-9]+ barriers,?//' \
    | tr -s ' \t' ' ' | sed "s|^|$(basename "$f" .build.log): |"
done > "$out/registers.txt"
# The timed binaries, one at a time (each checks itself first), then the power-of-two checks.
for s in $sets; do
  b="$out/bin/sweep${s}_p0"
  [ -x "$b" ] || continue
  timeout 150 "$b" > "$b.run.log" 2>&1; rc=$?
  [ $rc = 0 ] || echo "RUN FAILED $(basename "$b") rc=$rc"
  grep -h -E "CHECK|COPY" "$b.run.log"
done
for s in $sets; do
  b="$out/bin/sweep${s}_p1"
  [ -x "$b" ] && { timeout 150 "$b" --check > "$b.check.log" 2>&1 || echo "CHECK RUN FAILED $(basename "$b") rc=$?"; }
done
grep -h -E "CHECK" "$out"/bin/*_p1.check.log 2>/dev/null
# The table: every 1x128 row of the timed runs (the library's once per binary), fastest first;
# "% same" is the fastest copy kernel's time over the row's (both move the same bytes).
for s in $sets; do
  grep -h "^ROW 1x128" "$out/bin/sweep${s}_p0.run.log" 2>/dev/null | sed "s/^ROW /ROW$s /"
done > "$out/rows.txt"
awk -v out="$out" '
  { name = $4; ms = $5; b2b = $7; gbps = $9; pct = $11; sub(/%/, "", pct)
    if (name ~ /^library/) name = name "@set" substr($1, 4)
    rows[++n] = name; t[n] = ms; tb[n] = b2b; g[n] = gbps; p[n] = pct
    if (name ~ /^copy-/ && (best == "" || ms < best)) { best = ms; bestname = name } }
  END {
    printf "%-24s %8s %8s %6s %7s %7s\n", "variant", "ms", "ms b2b", "GB/s", "%1GiB", "%same"
    for (i = 1; i <= n; ++i) order[i] = i
    for (i = 1; i <= n; ++i) for (j = i + 1; j <= n; ++j) if (t[order[j]] < t[order[i]]) { x = order[i]; order[i] = order[j]; order[j] = x }
    for (k = 1; k <= n; ++k) { i = order[k]
      same = (best != "" && rows[i] !~ /^empty/) ? sprintf("%6.1f%%", 100 * best / t[i]) : "      -"
      printf "%-24s %8.4f %8.4f %6s %6s%% %s\n", rows[i], t[i], tb[i], g[i], p[i], same }
    if (best != "") printf "same-size copy: %s %.4f ms\n", bestname, best
  }' "$out/rows.txt" | tee "$out/table.txt" | head -60
echo "done in $(( $(date +%s) - t0 )) s; logs: $out/bin/*.log, registers: $out/registers.txt"
