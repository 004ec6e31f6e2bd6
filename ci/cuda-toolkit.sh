# Source this (bash): installs the CUDA 13.0 toolkit pieces that candle-core's `cuda` feature
# needs to build (nvcc, ptxas, the headers, cccl for candle-kernels' nvcc build; cuBLAS, cuRAND,
# NVRTC and the runtime to link against) from PyPI into ~/.cache, and exports what the build
# scripts read:
#   NVCC, PATH         nvcc (cudaforge, which candle-kernels builds with, looks there first)
#   CUDA_COMPUTE_CAP   90: candle's kernels for the H200 (cudaforge makes it sm_90a / compute_90a)
#   CUDA_ROOT          a folder whose lib/ holds libcuda.so, a link-time stub, and the unversioned
#                      names of the libraries (cudarc's `dynamic-linking` links -lcuda -lcublas ...)
# No CUDA driver is installed or needed here: libcuda.so is a stub generated from cuda.h (every
# `cu*` function the header declares, as empty functions, soname libcuda.so.1), only for the
# linker; at run time the driver's own libcuda.so.1 is loaded (the binaries run on the GPU
# machine only). The versions are those of the GPU machine's CUDA (13.0): candle's PTX must not be
# newer than its driver.
#   TESSERA_CUDA_TOOLKIT_DIR overrides the install folder.
cuda_toolkit_version=13.0.88
cuda_toolkit_dir=${TESSERA_CUDA_TOOLKIT_DIR:-$HOME/.cache/tessera/cuda-toolkit-$cuda_toolkit_version}
cuda_toolkit_cu13="$cuda_toolkit_dir/nvidia/cu13"
if [ ! -x "$cuda_toolkit_cu13/bin/nvcc" ] || [ ! -f "$cuda_toolkit_cu13/lib/libcublasLt.so.13" ]; then
  # One pip call: pip's --target does not merge a second install into the shared nvidia/ folder.
  rm -rf "$cuda_toolkit_dir"
  python3 -m pip install -q --disable-pip-version-check --target "$cuda_toolkit_dir" \
    "nvidia-cuda-nvcc==$cuda_toolkit_version" "nvidia-cuda-crt==$cuda_toolkit_version" \
    "nvidia-nvvm==$cuda_toolkit_version" "nvidia-cuda-nvrtc==$cuda_toolkit_version" \
    "nvidia-cuda-runtime==13.0.96" "nvidia-cuda-cccl==13.0.85" \
    "nvidia-cublas==13.0.2.14" "nvidia-curand==10.4.0.35"
fi
cuda_toolkit_link="$cuda_toolkit_dir/link/lib"
if [ ! -f "$cuda_toolkit_link/libcuda.so" ]; then
  mkdir -p "$cuda_toolkit_link"
  python3 - "$cuda_toolkit_cu13/include/cuda.h" > "$cuda_toolkit_link/cuda_stub.c" <<'EOF'
import re, subprocess, sys
header = sys.argv[1]
text = open(header).read()
# The header's names after its macros (cuMemAlloc -> cuMemAlloc_v2, the per-thread-stream
# variants), and as written.
for flags in ([], ["-DCUDA_API_PER_THREAD_DEFAULT_STREAM"]):
    text += subprocess.run(["cc", "-E", "-P", *flags, "-x", "c", header],
                           capture_output=True, text=True, check=True).stdout
names = sorted(set(re.findall(r"\b(cu[A-Z]\w*)\s*\(", text)))
assert len(names) > 300, f"only {len(names)} functions found in {header}"
print("/* A link-time stub of libcuda.so.1, generated from cuda.h by ci/cuda-toolkit.sh. */")
for name in names:
    print(f"void {name}(void) {{}}")
EOF
  cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$cuda_toolkit_link/libcuda.so" "$cuda_toolkit_link/cuda_stub.c"
  for lib in cublas.so.13 cublasLt.so.13 curand.so.10 nvrtc.so.13 cudart.so.13; do
    ln -sf "$cuda_toolkit_cu13/lib/lib$lib" "$cuda_toolkit_link/lib${lib%.so.*}.so"
  done
fi
export NVCC="$cuda_toolkit_cu13/bin/nvcc"
export PATH="$cuda_toolkit_cu13/bin:$PATH"
export CUDA_COMPUTE_CAP=90
export CUDA_ROOT="$cuda_toolkit_dir/link"
