#!/usr/bin/env bash
# On the GPU machine: build the sm90 FP8 GEMM harness for each variant (in parallel), check each
# against the reference on edge shapes, time it on the 18 standard shapes; table at the end.
#   bash kernels-cuda/dev/fp8_gemm_sm90.sh OUTDIR "BM BN ST WG EPI CLUSTER_M ACC_STAGES SPLIT_K" [...]   (ST 0: most that fit)
# SHAPES="M N K ..." overrides the timed shapes; CHECK_SHAPES the checked ones; NOTIME=1 skips timing;
# CTAS=2 builds for two CTAs per SM; GROUPING=1|2 builds the grouped kernel (run as one group).
# Mixtures of experts: build with NOTIME=1 (one OUTDIR per GROUPING), then run a binary with
# MOE_ROWS="512 1024 ..." [MOE_ROOM=4096] and "0 N K" (see the harness's header).
# Building off the GPU machine (saves its minutes): NVCC="bash kernels-cuda/dev/nvcc_local.sh"
# LINK_FLAGS="-L$HOME/.cache/tessera/nvcc-13.0/nvidia/cu13/lib" NORUN=1 builds OUTDIR/bin here
# (static cudart: the binaries run on the GPU machine); there, NOBUILD=1 checks and times them.
set -uo pipefail
out=${1:?outdir}; shift
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$out/bin"
std_shapes="64 2112 7168 64 24576 1536 64 32768 512 64 7168 16384 64 4096 7168 64 7168 2048 \
128 2112 7168 128 24576 1536 128 32768 512 128 7168 16384 128 4096 7168 128 7168 2048 \
4096 2112 7168 4096 24576 1536 4096 32768 512 4096 7168 16384 4096 4096 7168 4096 7168 2048"
shapes=${SHAPES:-$std_shapes}
check_shapes=${CHECK_SHAPES:-"1 8 16 200 2112 528 129 136 144 64 7168 2048 4096 2112 7168 300 4096 1536"}
build() {
  read -r bm bn st wg epi cm pp sk <<< "$1"; cm=${cm:-1}; pp=${pp:-1}; sk=${sk:-1}
  # ST 0: as many stages as fit in 227 KB (at most 16); with CTAS=2 in half the SM's 228 KB
  # less 1 KB reserved per CTA (113 KB), as the library's two-CTA tiles, so that two are resident.
  read -r st smem <<< "$(python3 -c "
bm,bn,st,epi=$bm,$bn,$st,$epi
cap=232448 if ${CTAS:-1}==1 else 233472//2-1024
size=lambda st:(bm*bn*2 if epi else 0)+st*bm*128+st*bn*128+st*bm*4+st*16+st*16+1024
if st==0:
    st=max(s for s in range(2,17) if size(s)<=cap)
print(st,size(st))")"
  name="bm${bm}_bn${bn}_st${st}_wg${wg}_e${epi}_c${cm}_a${pp}_s${sk}"
  ${NVCC:-nvcc} -O3 -std=c++17 -gencode arch=compute_90a,code=sm_90a -Xptxas -v -DBLOCK_M=$bm -DBLOCK_N=$bn -DSTAGES=$st \
    -DMATH_WG=$wg -DEPI_SWIZZLE=$epi -DCLUSTER_M=$cm -DACC_STAGES=$pp -DSPLIT_K=$sk -DCTAS_PER_SM=${CTAS:-1} -DGROUPING=${GROUPING:-0} ${EXTRA_DEFS:-} -DTESSERA_SMEM_BYTES=$smem -DTESSERA_THREADS=$((128 * (1 + wg))) ${LINK_FLAGS:-} -o "$out/bin/$name" "$here/fp8_gemm_sm90_harness.cu" > "$out/build_$name.log" 2>&1 \
    && echo "built $name: $(grep -A3 "entry function 'fp8_gemm_sm90_kernel'" "$out/build_$name.log" | grep -o 'Used [0-9]* registers\|[0-9]* bytes spill stores' | tr '\n' ' ')" \
    || { echo "BUILD FAILED $name"; tail -5 "$out/build_$name.log"; }
}
export -f build; export out here
[ -n "${NOBUILD:-}" ] || printf '%s\n' "$@" | xargs -P 16 -I{} bash -c 'build "{}"'
[ -z "${NORUN:-}" ] || exit 0
for v in "$@"; do
  read -r bm bn st wg epi cm pp sk <<< "$v"; cm=${cm:-1}; pp=${pp:-1}; sk=${sk:-1}
  name=$(ls "$out/bin" | grep "^bm${bm}_bn${bn}_st.*_wg${wg}_e${epi}_c${cm}_a${pp}_s${sk}\$" | head -1)
  [ -n "$name" ] && [ -x "$out/bin/$name" ] || continue
  timeout 60 "$out/bin/$name" --check $check_shapes >> "$out/check.log" 2>&1 || echo "CHECK RUN FAILED $name rc=$?" >> "$out/check.log"
  [ -n "${NOTIME:-}" ] || timeout 120 "$out/bin/$name" $shapes >> "$out/time.log" 2>&1 || echo "TIME RUN FAILED $name rc=$?" >> "$out/time.log"
done
echo "== checks"; grep -E "CHECK|FAILED|variant" "$out/check.log" | grep -v PASS; echo "passes: $(grep -c PASS "$out/check.log")"
echo "== times"; python3 - "$out/time.log" <<'PY'
import re, sys, collections
rows = collections.OrderedDict(); cols = []
for line in open(sys.argv[1]):
    m = re.match(r"TIME (\S+ \S+ \S+ \S+ \S+) (M\d+ N\d+ K\d+): [\d.]+ ms (\d+) TFLOPS (\d+) GB/s", line)
    if m:
        v, s, tf, gb = m.groups()
        if v not in cols: cols.append(v)
        rows.setdefault(s, {})[v] = f"{tf}/{gb}"
    elif "FAILED" in line: print(line.strip())
print("shape | " + " | ".join(c.replace(" ", "") for c in cols))
for s, r in rows.items():
    print(s + " | " + " | ".join(r.get(c, "-") for c in cols))
PY
