// Development probe for the GPU machine (nvcc): what one launch costs before any GEMM work, timed
// as the bench times (CUDA events around each launch, median), and how fast a plain streaming read
// of B-sized buffers runs (operands rotated over 400 MB so that L2 does not serve them).
//   nvcc -O3 -std=c++17 -arch=sm_90a -o floor launch_floor.cu && ./floor
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <vector>

typedef unsigned short u16;  // the kernels' names (common.cuh is a kernel header), for harness.cuh
typedef unsigned long long u64;
#include "harness.cuh"

__global__ void empty_kernel() {}

// Sums 16-byte words; one value per CTA is written so the loads are not removed.
__global__ void read_kernel(const uint4* __restrict__ p, size_t words, unsigned* out) {
    unsigned acc = 0;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < words; i += (size_t)gridDim.x * blockDim.x) {
        uint4 v = __ldcs(&p[i]);
        acc ^= v.x ^ v.y ^ v.z ^ v.w;
    }
    if (acc == 0x12345678u) out[blockIdx.x] = acc;
}

template <typename F>
static float median_ms(F launch, int reps = 200) {
    std::vector<cudaEvent_t> ev(2 * reps);
    for (auto& e : ev) cudaEventCreate(&e);
    for (int i = 0; i < 5; ++i) launch(i);
    cudaDeviceSynchronize();
    for (int i = 0; i < reps; ++i) {
        cudaEventRecord(ev[2 * i]);
        launch(i);
        cudaEventRecord(ev[2 * i + 1]);
    }
    cudaDeviceSynchronize();
    std::vector<float> ms(reps);
    for (int i = 0; i < reps; ++i) cudaEventElapsedTime(&ms[i], ev[2 * i], ev[2 * i + 1]);
    for (auto& e : ev) cudaEventDestroy(e);
    std::sort(ms.begin(), ms.end());
    return ms[reps / 2];
}

int main() {
    printf("FLOOR empty kernel, 132 CTAs: %.2f us\n", 1e3 * median_ms([](int) { empty_kernel<<<132, 128>>>(); }));
    for (int cluster : {2, 4}) {
        float ms = median_ms([&](int) {
            cudaLaunchAttribute attr[1];
            const cudaLaunchConfig_t cfg = cluster_launch_config(dim3(128), dim3(128), 0, cluster, attr);
            cudaLaunchKernelEx(&cfg, empty_kernel);
        });
        printf("FLOOR empty kernel, 128 CTAs in clusters of %d: %.2f us\n", cluster, 1e3 * ms);
    }
    unsigned* out;
    cudaMalloc(&out, 4096 * 4);
    for (size_t bytes : {(size_t)2112 * 7168, (size_t)7168 * 2048, (size_t)4096 * 7168, (size_t)24576 * 1536,
                         (size_t)7168 * 16384}) {
        int sets = (int)std::min<size_t>(64, (400ull << 20) / bytes + 1);
        std::vector<uint4*> bufs(sets);
        for (auto& b : bufs) {
            cudaMalloc(&b, bytes);
            cudaMemset(b, 1, bytes);
        }
        for (int ctas : {132, 264, 528, 1056}) {
            float ms = median_ms([&](int i) { read_kernel<<<ctas, 512>>>(bufs[i % sets], bytes / 16, out); });
            printf("FLOOR read %.1f MB, %d CTAs x 512: %.2f us = %.0f GB/s\n", bytes / 1e6, ctas, 1e3 * ms, bytes / ms / 1e6);
        }
        for (auto& b : bufs) cudaFree(b);
    }
    return 0;
}
