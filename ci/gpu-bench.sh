#!/usr/bin/env bash
# The benchmark on the GPU machine, one command:   bash PACKDIR/gpu-bench.sh OUTDIR [standard|quick]
# (PACKDIR from ci/gpu-pack.sh: bin/tessera, peers.py, this script, COMMIT). Runs
#   0. with BENCH_TUNE=OPS, `tessera tune --op OPS --all-times` first (see below),
#   1. tessera bench --backend cuda (JSON, and the radial masks as JSON for the peers),
#   2. ci/peers.py with the machine's PyTorch (same shapes, the very same masks), and Tessera
#      timed in the same process through the pack's `tessera` wheel (rows `tessera (python)`;
#      installed with pip --target and PYTHONPATH, not a venv, which would not see the machine's
#      torch); a missing package or CUDA backend there fails this script (exit 1, at the end),
#   3. tessera bench --backend vulkan (the same shapes on the Vulkan backend, NVIDIA driver, with
#      the Vulkan loader brought in the pack), on what time is left, at most VK_BUDGET seconds,
#   4. tessera report: OUTDIR/results.md (joined table, ratios ours / peer, Vulkan / CUDA) and
#      OUTDIR/*.png.
# BENCH_ONLY=OP (e.g. mla_decode) runs only the ops whose name contains OP, in all three
# (`tessera bench --only`, `peers.py --only`): a run for one op's change.
# BENCH_MLA_SHAPES=SUBSTRING keeps only the MLA decode shapes whose key contains it (all three).
# BENCH_BACKWARD_PEERS='flex radial' (peers.py --backward-peers) times only those attention
# backward peers (cuDNN's dense backward alone takes minutes at the long shapes).
# Logs go to OUTDIR too. BENCH_BUDGET (seconds, default 510) bounds the whole: the peers get
# what the bench left minus VK_RESERVE (default 120) kept for Vulkan; every step writes its JSON
# as it goes, so a cut run still reports.
set -uo pipefail
out=${1:?usage: gpu-bench.sh OUTDIR [standard|quick]}
suite=${2:-standard}
mkdir -p "$out"
out=$(cd "$out" && pwd)
pack=$(cd "$(dirname "$0")" && pwd)
source "$pack/gpu-unpack.sh"
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
only=(); [ -n "${BENCH_ONLY:-}" ] && only=(--only "$BENCH_ONLY")
[ -n "${BENCH_MLA_SHAPES:-}" ] && only+=(--mla-shapes "$BENCH_MLA_SHAPES")
peer_args=(); [ -n "${BENCH_BACKWARD_PEERS:-}" ] && peer_args=(--backward-peers "$BENCH_BACKWARD_PEERS")
# BENCH_TUNE=gemm|attention|mla|all: first `tessera tune` those ops' standard shapes on this GPU
# (the plans land next to the NVRTC cache, where the bench reads them); the plan file is kept.
if [ -n "${BENCH_TUNE:-}" ]; then
  timeout ${TUNE_BUDGET:-200} "${tessera_env[@]}" "$pack/bin/tessera" tune --op "$BENCH_TUNE" --suite "$suite" --all-times \
    > "$out/tune.log" 2>&1
  echo "tessera tune --op $BENCH_TUNE: rc=$? in $(( $(date +%s) - t0 )) s"; tail -n 3 "$out/tune.log"
  cp "$TESSERA_CACHE_DIR"/cuda/plans-*.json "$out/" 2>/dev/null
fi
timeout $(( deadline - $(date +%s) - 60 )) "${tessera_env[@]}" "$pack/bin/tessera" bench --backend cuda --suite "$suite" "${only[@]}" \
  --json "$out/tessera.json" --masks "$out/masks" > "$out/tessera.log" 2> "$out/tessera.err"
echo "tessera bench: rc=$? in $(( $(date +%s) - t0 )) s"; tail -n 5 "$out/tessera.err"

t1=$(date +%s)
failed=()
# The pack's tessera wheel for peers.py's in-process rows. The venv route fails here (a venv made
# from the machine's python3 does not see its torch): install into a folder on PYTHONPATH.
pydir=$(mktemp -d)
if ! python3 -m pip install -q --no-index --no-deps --target "$pydir" "$pack"/wheels/tessera-*.whl > "$out/wheel.log" 2>&1; then
  failed+=("the tessera wheel did not install: $(tail -n 3 "$out/wheel.log" | tr '\n' ' ')")
fi
# Tessera's extension loads libnvrtc.so.13: the toolkit's, or the one torch's wheels brought.
nvidia_libs=$(python3 -c 'import glob, os, sys; print(":".join(d for p in sys.path for d in glob.glob(os.path.join(p, "nvidia", "cu13", "lib"))))' 2>/dev/null)
vk_reserve=${VK_RESERVE:-120}
timeout $(( deadline - $(date +%s) - vk_reserve )) env PYTHONPATH="$pydir${PYTHONPATH:+:$PYTHONPATH}" \
  LD_LIBRARY_PATH="/usr/local/nvidia/lib64:/usr/local/cuda/lib64:$nvidia_libs:${LD_LIBRARY_PATH:-}" \
  python3 "$pack/peers.py" --suite "$suite" "${only[@]}" "${peer_args[@]}" --masks "$out/masks" --json "$out/peers.json" > "$out/peers.log" 2>&1
echo "peers.py: rc=$? in $(( $(date +%s) - t1 )) s"; grep -m 1 "^tessera " "$out/peers.log"; tail -n 3 "$out/peers.log"
# On the GPU machine Tessera must be timed beside the peers: a skipped row is a failure.
if grep -q "^skipped:" "$out/peers.log"; then
  failed+=("peers.py skipped the tessera (python) rows: $(grep -m 1 "^skipped:" "$out/peers.log")")
fi
rm -rf "$pydir"

# Vulkan: the loader travels in the pack (Debian's libvulkan1), the NVIDIA ICD is on the machine.
t2=$(date +%s)
for deb in "$pack"/*.deb; do [ -f "$deb" ] && dpkg -x "$deb" /; done
ldconfig 2>/dev/null
if [ -f /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json ] && [ -z "${VK_DRIVER_FILES:-}" ]; then
  export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
fi
vk_budget=$(( deadline - $(date +%s) - 40 ))
[ "$vk_budget" -gt "${VK_BUDGET:-170}" ] && vk_budget=${VK_BUDGET:-170}
if [ "$vk_budget" -gt 20 ]; then
  timeout $(( vk_budget + 30 )) "${tessera_env[@]}" TESSERA_BACKEND=vulkan "$pack/bin/tessera" bench --backend vulkan \
    --suite "$suite" "${only[@]}" --budget-s "$vk_budget" --json "$out/vulkan.json" > "$out/vulkan.log" 2> "$out/vulkan.err"
  echo "tessera bench --backend vulkan: rc=$? in $(( $(date +%s) - t2 )) s (budget ${vk_budget} s)"; tail -n 3 "$out/vulkan.err"
else
  echo "tessera bench --backend vulkan: not run (${vk_budget} s left)"
fi

peers=(); [ -s "$out/peers.json" ] && peers=(--peers "$out/peers.json")
vulkan=(); [ -s "$out/vulkan.json" ] && vulkan=(--vulkan "$out/vulkan.json")
"${tessera_env[@]}" "$pack/bin/tessera" report --ours "$out/tessera.json" "${peers[@]}" "${vulkan[@]}" \
  --out "$out" > "$out/report.log" 2>&1
echo "report: rc=$?"; cat "$out/report.log"
rm -rf "$out/masks" "$libdir"
echo; cat "$out/tessera.log"
# Few files come back from a lent machine: everything in one archive, the table beside it.
tar czf "$out/../bench-$(basename "$out").tgz" -C "$out" . && mv "$out/../bench-$(basename "$out").tgz" "$out/all.tgz"
find "$out" -mindepth 1 ! -name all.tgz ! -name results.md -delete
if [ ${#failed[@]} -gt 0 ]; then
  echo
  printf 'FAILED: %s\n' "${failed[@]}"
  exit 1
fi
