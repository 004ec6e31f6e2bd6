// The issue rate of small-N wgmma on the GPU machine: m64nNk16 bf16 with A from registers (RS) or
// shared memory (SS), N 16 and 32, one CTA per SM with 1 or 2 warpgroups each issuing groups of 8
// wgmmas then waiting. (Operands are constants: this measures the tensor pipe, not the data.)
//   nvcc -O3 -std=c++17 -gencode arch=compute_90a,code=sm_90a -o wgmma_rate wgmma_rate.cu && ./wgmma_rate
// H200, session 14 (ns per wgmma per SM; TFLOPS over 132 SMs):
//   m64n16k16  1 WG: RS 14.5 ns (299), SS 14.7 (293); 2 WGs: RS 10.7 (404), SS 11.4 (379)
//   m64n32k16  1 WG: RS 15.5 ns (560), SS 17.3 (500); 2 WGs: RS 11.9 (725), SS 13.6 (635)
// So at N = 16 a 64-key tile's 68 wgmmas (the FP8 register-operand MLA decode at 16 rows) take
// about 0.73 us of tensor time per SM with two warpgroups issuing.
#include <cstdio>
#include <cstdint>
#include <cuda_runtime.h>
typedef unsigned long long u64;
__device__ __forceinline__ u64 desc(const void* p) {
  u64 a = (u64)(__cvta_generic_to_shared(p));
  return ((a & 0x3FFFF) >> 4) | ((u64)(16 >> 4) << 16) | ((u64)(1024 >> 4) << 32) | (1ull << 62);
}
#define FENCE asm volatile("wgmma.fence.sync.aligned;" ::: "memory")
#define COMMIT asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory")
#define WAIT0 asm volatile("wgmma.wait_group.sync.aligned 0;" ::: "memory")
template <int N, bool RS> struct W;
template <> struct W<16, true> { static __device__ void mma(float* d, const unsigned* a, u64 b) {
  asm volatile("wgmma.mma_async.sync.aligned.m64n16k16.f32.bf16.bf16 {%0,%1,%2,%3,%4,%5,%6,%7}, {%8,%9,%10,%11}, %12, 1, 1, 1, 0;"
    : "+f"(d[0]),"+f"(d[1]),"+f"(d[2]),"+f"(d[3]),"+f"(d[4]),"+f"(d[5]),"+f"(d[6]),"+f"(d[7]) : "r"(a[0]),"r"(a[1]),"r"(a[2]),"r"(a[3]),"l"(b)); } };
// SS: A from the same shared memory as B (its descriptor + 2^30 * a[0], a[0] being 0 at run time).
template <> struct W<16, false> { static __device__ void mma(float* d, const unsigned* a, u64 b) {
  asm volatile("wgmma.mma_async.sync.aligned.m64n16k16.f32.bf16.bf16 {%0,%1,%2,%3,%4,%5,%6,%7}, %8, %9, 1, 1, 1, 0, 0;"
    : "+f"(d[0]),"+f"(d[1]),"+f"(d[2]),"+f"(d[3]),"+f"(d[4]),"+f"(d[5]),"+f"(d[6]),"+f"(d[7]) : "l"((u64)b + 0x40000000ull * a[0]),"l"(b)); } };
template <> struct W<32, true> { static __device__ void mma(float* d, const unsigned* a, u64 b) {
  asm volatile("wgmma.mma_async.sync.aligned.m64n32k16.f32.bf16.bf16 {%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15}, {%16,%17,%18,%19}, %20, 1, 1, 1, 0;"
    : "+f"(d[0]),"+f"(d[1]),"+f"(d[2]),"+f"(d[3]),"+f"(d[4]),"+f"(d[5]),"+f"(d[6]),"+f"(d[7]),"+f"(d[8]),"+f"(d[9]),"+f"(d[10]),"+f"(d[11]),"+f"(d[12]),"+f"(d[13]),"+f"(d[14]),"+f"(d[15])
    : "r"(a[0]),"r"(a[1]),"r"(a[2]),"r"(a[3]),"l"(b)); } };
template <> struct W<32, false> { static __device__ void mma(float* d, const unsigned* a, u64 b) {
  asm volatile("wgmma.mma_async.sync.aligned.m64n32k16.f32.bf16.bf16 {%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15}, %16, %17, 1, 1, 1, 0, 0;"
    : "+f"(d[0]),"+f"(d[1]),"+f"(d[2]),"+f"(d[3]),"+f"(d[4]),"+f"(d[5]),"+f"(d[6]),"+f"(d[7]),"+f"(d[8]),"+f"(d[9]),"+f"(d[10]),"+f"(d[11]),"+f"(d[12]),"+f"(d[13]),"+f"(d[14]),"+f"(d[15])
    : "l"((u64)b + 0x40000000ull * a[0]),"l"(b)); } };
template <int N, bool RS, int ITERS>
__global__ void k(float* out) {
  extern __shared__ __align__(1024) unsigned char sm[];
  for (int i = threadIdx.x; i < 65536 / 4; i += blockDim.x) ((unsigned*)sm)[i] = 0x3f803f80u;
  __syncthreads();
  float d[N / 2];
  for (int i = 0; i < N / 2; ++i) d[i] = 0.f;
  unsigned a[4] = {0x3f803f80u * (threadIdx.x == 999), 0x3f803f80u, 0x3f803f80u, 0x3f803f80u};
  const u64 b = desc(sm + 8192 * (threadIdx.x / 128));
  for (int it = 0; it < ITERS; it += 8) {
    FENCE;
#pragma unroll
    for (int j = 0; j < 8; ++j) W<N, RS>::mma(d, a, b + 2 * j);
    COMMIT;
    WAIT0;
  }
  float s = 0; for (int i = 0; i < N / 2; ++i) s += d[i];
  if (s == 12345.f) out[0] = s;
}
template <int N, bool RS> void run(int wgs) {
  constexpr int IT = 8192;
  float* o; cudaMalloc(&o, 4);
  auto f = k<N, RS, IT>;
  cudaFuncSetAttribute(f, cudaFuncAttributeMaxDynamicSharedMemorySize, 65536 + 1024);
  f<<<132, 128 * wgs, 65536>>>(o);
  cudaEvent_t e0, e1; cudaEventCreate(&e0); cudaEventCreate(&e1);
  cudaEventRecord(e0);
  for (int r = 0; r < 5; ++r) f<<<132, 128 * wgs, 65536>>>(o);
  cudaEventRecord(e1); cudaEventSynchronize(e1);
  float ms; cudaEventElapsedTime(&ms, e0, e1); ms /= 5;
  double flop = 2.0 * 64 * N * 16 * (double)IT * wgs * 132;
  int clk; cudaDeviceGetAttribute(&clk, cudaDevAttrClockRate, 0);
  printf("wgmma m64n%dk16 %s wgs %d: %.3f ms  %.0f TFLOPS  %.1f ns per wgmma per SM (err %s)\n", N, RS ? "RS" : "SS", wgs, ms,
         flop / ms / 1e9, ms * 1e6 / (IT * wgs), cudaGetErrorString(cudaGetLastError()));
}
int main() {
  for (int w = 1; w <= 2; ++w) { run<16, true>(w); run<16, false>(w); run<32, true>(w); run<32, false>(w); }
  return 0;
}
