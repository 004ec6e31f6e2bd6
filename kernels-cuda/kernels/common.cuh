// Tessera CUDA kernels: shared device helpers.
//
// Prepended to every kernel source before NVRTC compiles it. No CUDA headers are included (NVRTC
// from PyPI ships none), so the 16-bit and 8-bit float types are plain integers here and every
// conversion is one PTX instruction, rounding to nearest even as the specification asks.

// ---- the plan layer's contract (kernels-cuda/src/plan) ----------------------------------------
//
// Every kernel variant is compiled with these two constants, rendered on the host from the same
// description that launches it; each kernel checks them against its own layout with
// static_assert, so that a host and a kernel that disagree fail to compile (in CI, without a GPU):
//   TESSERA_SMEM_BYTES  dynamic shared memory per CTA the host launches with, in bytes (0 for
//                       none; a kernel sized at run time says so and checks it on the device)
//   TESSERA_THREADS     threads per CTA
// Kernels never default a missing constant: each required one is checked with #error.

#ifndef TESSERA_SMEM_BYTES
#error "TESSERA_SMEM_BYTES is required (dynamic shared memory per CTA, rendered by the plan layer)"
#endif
#ifndef TESSERA_THREADS
#error "TESSERA_THREADS is required (threads per CTA, rendered by the plan layer)"
#endif
#if TESSERA_THREADS < 32 || TESSERA_THREADS > 1024 || TESSERA_THREADS % 32 != 0
#error "TESSERA_THREADS must be a multiple of 32 in 32..1024"
#endif

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;
typedef long long i64;

#define TESSERA_INF __int_as_float(0x7f800000)
#define TESSERA_NEG_INF __int_as_float(0xff800000)
#define TESSERA_NAN __int_as_float(0x7fffffff)

// The dynamic shared memory this CTA was launched with, in bytes.
__device__ __forceinline__ u32 dynamic_smem_size() {
    u32 r;
    asm("mov.u32 %0, %%dynamic_smem_size;" : "=r"(r));
    return r;
}

// ---- 16-bit floats -----------------------------------------------------------------------

__device__ __forceinline__ float bf16_to_f32(u16 x) { return __uint_as_float(((u32)x) << 16); }

__device__ __forceinline__ u16 f32_to_bf16(float x) {
#if __CUDA_ARCH__ >= 800
    u16 r;
    asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(r) : "f"(x));
    return r;
#else
    u32 u = __float_as_uint(x);
    if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fc0;
    u += 0x7fffu + ((u >> 16) & 1u);
    return (u16)(u >> 16);
#endif
}

__device__ __forceinline__ float f16_to_f32(u16 x) {
    float r;
    asm("cvt.f32.f16 %0, %1;" : "=f"(r) : "h"(x));
    return r;
}

__device__ __forceinline__ u16 f32_to_f16(float x) {
    u16 r;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(r) : "f"(x));
    return r;
}

// Packs two f32 into a 32-bit register of two 16-bit values (lo in the low half), as the mma
// operands expect. IS_BF16 selects the format.
template <bool IS_BF16>
__device__ __forceinline__ u32 pack2(float lo, float hi) {
    u32 r;
    if (IS_BF16) {
        asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    } else {
        asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    }
    return r;
}

template <bool IS_BF16>
__device__ __forceinline__ float half_to_f32(u16 x) {
    return IS_BF16 ? bf16_to_f32(x) : f16_to_f32(x);
}

template <bool IS_BF16>
__device__ __forceinline__ u16 f32_to_half(float x) {
    return IS_BF16 ? f32_to_bf16(x) : f32_to_f16(x);
}

// ---- FP8 (OCP E4M3FN) ----------------------------------------------------------------------

// f32 -> e4m3 with round-to-nearest-even, saturation to +-448 and NaN -> 0x7f, exactly as PTX
// cvt.rn.satfinite does (which is used where the architecture has it).
__device__ __forceinline__ u8 f32_to_e4m3(float x) {
#if __CUDA_ARCH__ >= 890
    u16 r;
    asm("cvt.rn.satfinite.e4m3x2.f32 %0, %1, %2;" : "=h"(r) : "f"(0.0f), "f"(x));
    return (u8)(r & 0xff);
#else
    if (x != x) return 0x7f;
    u32 sign = (__float_as_uint(x) >> 24) & 0x80u;
    float a = fabsf(x);
    if (a >= 448.0f) return (u8)(sign | 0x7eu);
    int e = (int)((__float_as_uint(a) >> 23) & 0xff) - 127;
    u32 mag;
    if (a == 0.0f || e < -6) {
        mag = (u32)__float2int_rn(a * 512.0f);  // subnormal: multiples of 2^-9
    } else {
        int r = __float2int_rn(ldexpf(a, 3 - e));  // in [8, 16]
        mag = (u32)(((e + 7) << 3) + (r - 8));
    }
    return (u8)(sign | mag);
#endif
}

// Two f32 -> e4m3 as f32_to_e4m3 does, packed: lo in the low byte (the lower address).
__device__ __forceinline__ u16 f32x2_to_e4m3x2(float lo, float hi) {
#if __CUDA_ARCH__ >= 890
    u16 r;
    asm("cvt.rn.satfinite.e4m3x2.f32 %0, %1, %2;" : "=h"(r) : "f"(hi), "f"(lo));
    return r;
#else
    return (u16)((u16)f32_to_e4m3(lo) | ((u16)f32_to_e4m3(hi) << 8));
#endif
}

// e4m3 -> f32, exact.
__device__ __forceinline__ float e4m3_to_f32(u8 x) {
    u32 sign = ((u32)x & 0x80u) << 24;
    u32 mag = x & 0x7fu;
    if (mag == 0x7fu) return TESSERA_NAN;
    float v;
    if ((mag >> 3) == 0) {
        v = (float)mag * 0.001953125f;  // 2^-9
    } else {
        v = __uint_as_float((((mag >> 3) + 120u) << 23) | ((mag & 7u) << 20));
    }
    return __uint_as_float(__float_as_uint(v) | sign);
}

// ---- warp reductions -----------------------------------------------------------------------

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// ---- tensor-core mma (warp-level, sm_80+) ---------------------------------------------------

// D(16x8, f32) += A(16x16, row) * B(16x8, col) in bf16 or f16. Fragment layout as in the PTX ISA
// for mma.m16n8k16: a[4], b[2] packed pairs, c[4] floats.
template <bool IS_BF16>
__device__ __forceinline__ void mma_16816(float c[4], const u32 a[4], const u32 b[2]) {
    if (IS_BF16) {
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
            "{%8,%9}, {%0,%1,%2,%3};"
            : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
    } else {
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
            "{%8,%9}, {%0,%1,%2,%3};"
            : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
    }
}

#if __CUDA_ARCH__ >= 890
// D(16x8, f32) += A(16x32, row) * B(32x8, col) in e4m3.
__device__ __forceinline__ void mma_16832_e4m3(float c[4], const u32 a[4], const u32 b[2]) {
    asm volatile(
        "mma.sync.aligned.m16n8k32.row.col.f32.e4m3.e4m3.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
#endif

// ldmatrix: four 8x8 b16 matrices from shared memory (each lane gives one row address).
__device__ __forceinline__ void ldmatrix_x4(u32 r[4], const void* smem_row) {
    u32 addr = (u32)__cvta_generic_to_shared(smem_row);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}

__device__ __forceinline__ void ldmatrix_x4_trans(u32 r[4], const void* smem_row) {
    u32 addr = (u32)__cvta_generic_to_shared(smem_row);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}

// ---- asynchronous copies (sm_80+) ---------------------------------------------------------

// Copies 16 bytes global -> shared; when !valid, writes 16 zero bytes instead (src not read).
__device__ __forceinline__ void cp_async_16(void* smem, const void* gmem, bool valid) {
    u32 addr = (u32)__cvta_generic_to_shared(smem);
    int src_size = valid ? 16 : 0;
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(addr), "l"(gmem), "r"(src_size));
}

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;"); }

template <int N>
__device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;" ::"n"(N));
}

// ---- programmatic dependent launch (sm_90+; no-ops before) ----------------------------------
//
// A kernel the host launches with programmatic stream serialization (LaunchOptions::
// programmatic_dependent_launch) may start before the previous grid on its stream has finished:
// it must call pdl_wait_dependencies() before it reads anything that grid writes (the wait
// returns once that grid has completed and its writes are visible; without such a launch it
// returns at once). pdl_launch_dependents() lets the next such grid start its CTAs (each CTA of
// this grid calls it, or exits) while this one runs.
__device__ __forceinline__ void pdl_wait_dependencies() {
#if __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
__device__ __forceinline__ void pdl_launch_dependents() {
#if __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}
