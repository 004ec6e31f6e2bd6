#!/usr/bin/env bash
# The benchmark on the GPU machine, one command:   bash PACKDIR/gpu-bench.sh OUTDIR [standard|quick]
# (PACKDIR from ci/gpu-pack.sh: bin/tessera, peers.py, this script, COMMIT). Runs
#   1. tessera bench --backend cuda (JSON, and the radial masks as JSON for the peers),
#   2. ci/peers.py with the machine's PyTorch (same shapes, the very same masks),
#   3. tessera report: OUTDIR/results.md (joined table, ratios ours / peer) and OUTDIR/*.png.
# Logs go to OUTDIR too. BENCH_BUDGET (seconds, default 510) bounds the whole: the peers get
# what the bench left (both write their JSON as they go, so a cut run still reports).
set -uo pipefail
out=${1:?usage: gpu-bench.sh OUTDIR [standard|quick]}
suite=${2:-standard}
mkdir -p "$out"
out=$(cd "$out" && pwd)
pack=$(cd "$(dirname "$0")" && pwd)
commit=$(head -c 200 "$pack/COMMIT" 2>/dev/null | tr '\n' ' ' | sed 's/ *$//')
export TESSERA_COMMIT="${commit:-unknown}"
export TESSERA_CACHE_DIR=/tmp/tessera-cache
# cudarc looks for libcublas.so (unversioned); the toolkit may only have libcublas.so.13.
libdir=$(mktemp -d)
for lib in libcublas libcublasLt; do
  for dir in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib; do
    if [ ! -e "$libdir/$lib.so" ] && ls "$dir/$lib.so"* > /dev/null 2>&1; then
      ln -sf "$(ls "$dir/$lib.so"* | sort | tail -n 1)" "$libdir/$lib.so"
    fi
  done
done
tessera_env=(env "LD_LIBRARY_PATH=$libdir:/usr/local/nvidia/lib64:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}")
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,temperature.gpu --format=csv > "$out/gpu.txt" 2>&1
echo "commit $TESSERA_COMMIT; $(tail -n 1 "$out/gpu.txt")"

t0=$(date +%s)
deadline=$(( t0 + ${BENCH_BUDGET:-510} ))
timeout $(( deadline - $(date +%s) - 60 )) "${tessera_env[@]}" "$pack/bin/tessera" bench --backend cuda --suite "$suite" \
  --json "$out/tessera.json" --masks "$out/masks" > "$out/tessera.log" 2> "$out/tessera.err"
echo "tessera bench: rc=$? in $(( $(date +%s) - t0 )) s"; tail -n 5 "$out/tessera.err"

t1=$(date +%s)
timeout $(( deadline - $(date +%s) - 10 )) python3 "$pack/peers.py" --suite "$suite" --masks "$out/masks" \
  --json "$out/peers.json" > "$out/peers.log" 2>&1
echo "peers.py: rc=$? in $(( $(date +%s) - t1 )) s"; tail -n 3 "$out/peers.log"

peers=(); [ -s "$out/peers.json" ] && peers=(--peers "$out/peers.json")
"${tessera_env[@]}" "$pack/bin/tessera" report --ours "$out/tessera.json" "${peers[@]}" --out "$out" \
  > "$out/report.log" 2>&1
echo "report: rc=$?"; cat "$out/report.log"
rm -rf "$out/masks" "$libdir"
echo; cat "$out/tessera.log"
# Few files come back from a lent machine: everything in one archive, the table beside it.
tar czf "$out/../bench-$(basename "$out").tgz" -C "$out" . && mv "$out/../bench-$(basename "$out").tgz" "$out/all.tgz"
find "$out" -mindepth 1 ! -name all.tgz ! -name results.md -delete
