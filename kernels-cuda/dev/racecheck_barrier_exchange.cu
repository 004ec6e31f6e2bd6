// Does compute-sanitizer's racecheck accept a named-barrier arrive/sync exchange between two
// warpgroups? The exchange of the MLA seesaw (sm90/mla_decode.cu, SEESAW 1), cut down: per pair
// of tiles, warpgroup 0 publishes the running maximum and its factor (s_m, s0) and arrives on
// barrier 4; warpgroup 1 syncs on 4, reads them, publishes its own (s_m, s1) and arrives on
// barrier 5; warpgroup 0 syncs on 5 and reads s1. racecheck reported the s1 exchange (check-11,
// sanitizer/racecheck-every_mla_candidate.log) but not the s0 one.
//   nvcc -O3 -std=c++17 -gencode arch=compute_90a,code=sm_90a -o rc racecheck_barrier_exchange.cu
//   compute-sanitizer --tool racecheck ./rc [mode]
// mode 0: the seesaw's pattern (membar.cta before each arrive); 1: without the membar;
// 2: bar.sync on both sides (a control that must be clean).
// Result (H200, CUDA 13.0, session 14): modes 0 and 1 report 12 hazards each, mode 2 none; the
// outputs are the same in all three. racecheck does not take barrier.arrive as ordering the
// arriving threads' earlier writes before the syncing threads' later reads.
#include <cstdio>
#include <cstdlib>

__device__ __forceinline__ void bar_arrive(unsigned id, unsigned n) {
    asm volatile("barrier.arrive %0, %1;" ::"r"(id), "r"(n) : "memory");
}
__device__ __forceinline__ void bar_sync(unsigned id, unsigned n) {
    asm volatile("barrier.sync %0, %1;" ::"r"(id), "r"(n) : "memory");
}

__global__ void exchange(float* out, int npairs, int mode) {
    __shared__ float s_m[64], s0[64], s1[64];
    const int tid = threadIdx.x, wg = tid / 128, t = tid % 128;
    const int warp = t / 32, lane = t % 32, g = lane / 4, tq = lane % 4;
    const int row = warp * 16 + g;  // one of each thread's rows, as in the kernel's fragments
    if (tid < 64) s_m[tid] = -1e30f;
    __syncthreads();
    float acc = 0.0f;
    auto signal = [&](unsigned id) {
        if (mode != 1) __threadfence_block();
        if (mode == 2)
            bar_sync(id, 256);
        else
            bar_arrive(id, 256);
    };
    for (int pr = 0; pr < npairs; ++pr) {
        if (wg == 0) {
            const float m_prev = s_m[row];
            const float m = fmaxf(m_prev, (float)(pr + lane));
            __syncwarp();  // the quad's reads of s_m before its lane 0 writes
            if (tq == 0) {
                s_m[row] = m;
                s0[row] = m * 0.5f;
            }
            signal(4);
            acc += m;
            bar_sync(5, 256);
            acc += s1[row];
        } else {
            bar_sync(4, 256);
            const float m_a = s_m[row], f0 = s0[row];
            const float m = fmaxf(m_a, (float)(pr + 2 * lane));
            __syncwarp();
            if (tq == 0) {
                s_m[row] = m;
                s1[row] = f0 + m;
            }
            signal(5);
            acc += m;
        }
    }
    out[blockIdx.x * blockDim.x + tid] = acc;
}

int main(int argc, char** argv) {
    const int mode = argc > 1 ? atoi(argv[1]) : 0;
    float* out;
    if (cudaMalloc(&out, 4 * 256 * sizeof(float)) != cudaSuccess) return 1;
    exchange<<<4, 256>>>(out, 8, mode);
    const cudaError_t e = cudaDeviceSynchronize();
    float h[256];
    cudaMemcpy(h, out, sizeof(h), cudaMemcpyDeviceToHost);
    printf("mode %d: %s, out[0] %g out[128] %g\n", mode, cudaGetErrorString(e), h[0], h[128]);
    return e == cudaSuccess ? 0 : 1;
}
