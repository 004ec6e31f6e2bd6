// What the nvcc development harnesses of this folder share (included after the kernel headers,
// which define u8/u16/u64): the CUDA error check and a seeded hash fill of device buffers.
#pragma once
#include <cstdio>
#include <cstdlib>

#define CK(x)                                                                                      \
    do {                                                                                           \
        cudaError_t err_ = (x);                                                                    \
        if (err_ != cudaSuccess) {                                                                 \
            fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(err_)); \
            exit(1);                                                                               \
        }                                                                                          \
    } while (0)

// A value in [-1, 1] (steps of 1/1000) from element i and a seed: the same on every run.
__device__ __forceinline__ float dev_uniform(size_t i, u64 seed) {
    u64 x = (i + 1) * 0x9E3779B97F4A7C15ull ^ seed;
    x ^= x >> 31;
    x *= 0xBF58476D1CE4E5B9ull;
    x ^= x >> 29;
    return ((int)(x % 2001) - 1000) / 1000.0f;
}

// p[i] = scale * dev_uniform(i, seed) as bf16 (bf16 = 1, truncated) or f16 (bf16 = 0).
__global__ void fill_half(u16* p, size_t n, u64 seed, float scale, int bf16) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        const float f = scale * dev_uniform(i, seed);
        u16 h;
        if (bf16)
            h = (u16)(__float_as_uint(f) >> 16);
        else
            asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
        p[i] = h;
    }
}
