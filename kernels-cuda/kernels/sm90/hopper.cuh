// Tessera CUDA kernels: header-free Hopper (sm_90a) primitives.
//
// Each function is a thin layer over one PTX instruction (PTX ISA 8.x), so that kernels compiled
// by NVRTC without any CUDA header can use the asynchronous machinery of Hopper:
//   - mbarrier: init, arrive, arrive with an expected transaction count, parity wait, remote
//     arrive on a peer CTA of the cluster;
//   - TMA: tensor maps (built on the host with cuTensorMapEncodeTiled, passed by value as
//     `const __grid_constant__ TmaDesc`), 2D tiled loads completing on an mbarrier, with an
//     optional cluster multicast, 2D stores from shared memory with bulk-group completion;
//   - wgmma: shared-memory matrix descriptors, fence / commit / wait, operand register fences
//     (the generated wrappers for every N are in sm90/wgmma.cuh);
//   - setmaxnreg, stmatrix, cluster rank / barrier (programmatic dependent launch: common.cuh);
//   - global f32 reductions (red.global.add.v2.f32) and gpu-scope acquire / release flags.
// Prepended after common.cuh; usable only when compiling for sm_90a.

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 900
#error "sm90/hopper.cuh needs sm_90a (wgmma, TMA, setmaxnreg)"
#endif

// ---- addresses -------------------------------------------------------------------------------

// The 32-bit shared-memory address of a generic pointer into shared memory.
__device__ __forceinline__ u32 smem_u32(const void* p) { return (u32)__cvta_generic_to_shared(p); }

// ---- mbarrier --------------------------------------------------------------------------------

// Initializes the barrier at `bar` for `count` arrivals per phase.
__device__ __forceinline__ void mbar_init(u64* bar, u32 count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(smem_u32(bar)), "r"(count) : "memory");
}

// Makes barrier initializations visible to the async proxy and to the other CTAs of the cluster.
__device__ __forceinline__ void mbar_fence_init() {
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
}

// One arrival (release semantics: this thread's earlier shared-memory writes are visible to
// threads that observe the phase completing).
__device__ __forceinline__ void mbar_arrive(u64* bar) {
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(smem_u32(bar)) : "memory");
}

// One arrival that also adds `bytes` to the transactions the current phase waits for (the TMA
// copies completing on this barrier will count them down).
__device__ __forceinline__ void mbar_arrive_expect_tx(u64* bar, u32 bytes) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(smem_u32(bar)), "r"(bytes)
                 : "memory");
}

// One arrival on the barrier at the same offset in the shared memory of cluster CTA `cta_rank`.
// CTA-scope release (no cluster-wide fence): enough to say "this CTA has finished reading a
// stage" when those reads were wgmma operands already waited for.
__device__ __forceinline__ void mbar_arrive_cluster(u64* bar, u32 cta_rank) {
    u32 remote;
    asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(remote) : "r"(smem_u32(bar)), "r"(cta_rank));
    asm volatile("mbarrier.arrive.shared::cluster.b64 _, [%0];" ::"r"(remote) : "memory");
}

// True once the phase of parity `parity` has completed (a fresh barrier is in phase 0, so
// waiting for parity 1 returns at once: the "previous" phase counts as complete).
__device__ __forceinline__ bool mbar_try_wait(u64* bar, u32 parity) {
    u32 done;
    asm volatile(
        "{\n .reg .pred p;\n mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n selp.u32 %0, 1, 0, p;\n}"
        : "=r"(done)
        : "r"(smem_u32(bar)), "r"(parity)
        : "memory");
    return done != 0;
}

// Waits (acquire) until the phase of parity `parity` has completed.
__device__ __forceinline__ void mbar_wait(u64* bar, u32 parity) {
    while (!mbar_try_wait(bar, parity)) {
    }
}

// ---- cp.async completing on an mbarrier ------------------------------------------------------

// Copies 4 bytes global -> shared asynchronously; when !valid, writes 4 zero bytes (src not read).
__device__ __forceinline__ void cp_async_4(void* dst, const void* src, bool valid) {
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;" ::"r"(smem_u32(dst)), "l"(src), "r"(valid ? 4 : 0)
                 : "memory");
}

// One arrival on `bar` once every cp.async this thread issued before has landed (the arrival is
// counted in the barrier's expected count: .noinc).
__device__ __forceinline__ void cp_async_mbar_arrive(u64* bar) {
    asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];" ::"r"(smem_u32(bar)) : "memory");
}

// ---- TMA (bulk tensor copies) ----------------------------------------------------------------

// A CUtensorMap: 128 opaque bytes made by cuTensorMapEncodeTiled on the host. Kernels take it as
// `const __grid_constant__ TmaDesc` so that its address is a parameter-space address TMA can use.
struct __align__(64) TmaDesc {
    u64 opaque[16];
};

// Prefetches the descriptor into the constant cache (once per CTA, before the first copy).
__device__ __forceinline__ void tma_prefetch_desc(const TmaDesc* desc) {
    asm volatile("prefetch.tensormap [%0];" ::"l"((u64)desc) : "memory");
}

// Copies the box at element coordinates (c0 innermost, c1) of `desc` into shared memory at `dst`,
// counting its bytes down on `bar` (rows or columns outside the tensor arrive as zeros, and
// still count).
__device__ __forceinline__ void tma_load_2d(void* dst, const TmaDesc* desc, u64* bar, int c0, int c1) {
    asm volatile(
        "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%3, %4}], [%2];" ::"r"(
            smem_u32(dst)),
        "l"((u64)desc), "r"(smem_u32(bar)), "r"(c0), "r"(c1)
        : "memory");
}

// As tma_load_2d for a 3-D tensor map (coordinates c0 innermost, c1, c2 outermost).
__device__ __forceinline__ void tma_load_3d(void* dst, const TmaDesc* desc, u64* bar, int c0, int c1, int c2) {
    asm volatile(
        "cp.async.bulk.tensor.3d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%3, %4, %5}], [%2];" ::"r"(
            smem_u32(dst)),
        "l"((u64)desc), "r"(smem_u32(bar)), "r"(c0), "r"(c1), "r"(c2)
        : "memory");
}

// As tma_load_2d, but the box lands at the same offset in the shared memory of every CTA of the
// cluster in `cta_mask`, and completes on the barrier at `bar`'s offset in each of them.
__device__ __forceinline__ void tma_load_2d_multicast(void* dst, const TmaDesc* desc, u64* bar, int c0, int c1,
                                                      u16 cta_mask) {
    asm volatile(
        "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes.multicast::cluster"
        " [%0], [%1, {%3, %4}], [%2], %5;" ::"r"(smem_u32(dst)),
        "l"((u64)desc), "r"(smem_u32(bar)), "r"(c0), "r"(c1), "h"(cta_mask)
        : "memory");
}

// Stores the shared-memory box at `src` to element coordinates (c0, c1) of `desc` (elements
// outside the tensor are not written). Completion is tracked by bulk groups (below).
__device__ __forceinline__ void tma_store_2d(const TmaDesc* desc, const void* src, int c0, int c1) {
    asm volatile("cp.async.bulk.tensor.2d.global.shared::cta.bulk_group [%0, {%2, %3}], [%1];" ::"l"((u64)desc),
                 "r"(smem_u32(src)), "r"(c0), "r"(c1)
                 : "memory");
}

__device__ __forceinline__ void tma_store_commit() { asm volatile("cp.async.bulk.commit_group;" ::: "memory"); }

// Waits until at most N committed store groups still read shared memory (the global writes may
// still be in flight; they are complete at kernel exit).
template <int N>
__device__ __forceinline__ void tma_store_wait_read() {
    asm volatile("cp.async.bulk.wait_group.read %0;" ::"n"(N) : "memory");
}

// Waits until at most N committed store groups are incomplete (writes done).
template <int N>
__device__ __forceinline__ void tma_store_wait() {
    asm volatile("cp.async.bulk.wait_group %0;" ::"n"(N) : "memory");
}

// Orders this thread's ordinary shared-memory writes before later async-proxy reads (TMA store,
// wgmma operands written by st.shared or stmatrix).
__device__ __forceinline__ void fence_proxy_async_smem() {
    asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
}

// ---- wgmma -----------------------------------------------------------------------------------

// Swizzle modes of a shared-memory matrix descriptor (bits 62-63).
#define WGMMA_SWIZZLE_128B 1
#define WGMMA_SWIZZLE_64B 2
#define WGMMA_SWIZZLE_32B 3

// Byte offset of 16-byte chunk c (0..7) of row r in a 128-byte-swizzled tile (rows of 128 bytes,
// 8-row atoms of 1024 bytes): the layout WGMMA_SWIZZLE_128B reads, chunk c of row r stored at
// chunk c ^ (r % 8).
__device__ __forceinline__ u32 swizzle128(int r, int c) { return (u32)(r * 128 + ((c ^ (r & 7)) << 4)); }

// A wgmma shared-memory matrix descriptor: start address, leading and stride byte offsets (all
// in 16-byte units), swizzle mode. For a K-major operand with a 128-byte swizzle (rows of 128
// bytes of K, 8-row atoms of 1024 bytes, atoms 1024-byte aligned): lbo is unused, sbo = 1024.
__device__ __forceinline__ u64 wgmma_desc(const void* smem, u32 lbo_bytes, u32 sbo_bytes, u32 swizzle) {
    u64 d = 0;
    d |= (u64)((smem_u32(smem) & 0x3FFFF) >> 4);
    d |= (u64)((lbo_bytes >> 4) & 0x3FFF) << 16;
    d |= (u64)((sbo_bytes >> 4) & 0x3FFF) << 32;
    d |= (u64)swizzle << 62;
    return d;
}

// Orders register accesses of the accumulators before the next wgmma (required before the first
// wgmma that reads registers written by ordinary instructions).
__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;" ::: "memory"); }

__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory"); }

// Waits until at most N committed wgmma groups of this warpgroup are pending.
template <int N>
__device__ __forceinline__ void wgmma_wait() {
    asm volatile("wgmma.wait_group.sync.aligned %0;" ::"n"(N) : "memory");
}

// Keeps the compiler from moving reads of an accumulator register across wgmma_wait (the wgmma
// asm only "writes" the register when issued; this ties later uses to a point after the wait).
__device__ __forceinline__ void reg_fence(float& r) { asm volatile("" : "+f"(r)::"memory"); }

// The same for a 32-bit operand register (e.g. the A fragment of a wgmma with A from registers:
// fenced after the wait, its register cannot be reused while the wgmma still reads it).
__device__ __forceinline__ void reg_fence(u32& r) { asm volatile("" : "+r"(r)::"memory"); }

template <int N>
__device__ __forceinline__ void reg_fence_all(float (&r)[N]) {
#pragma unroll
    for (int i = 0; i < N; ++i) reg_fence(r[i]);
}

// ---- registers, stmatrix, cluster -----------------------------------------------------------

// Gives back registers (a producer warpgroup that only issues copies) / takes more (math
// warpgroups). Takes effect only with a register cap at entry (__launch_bounds__(T, 1)).
template <int REGS>
__device__ __forceinline__ void setmaxnreg_dec() {
    asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;" ::"n"(REGS));
}
template <int REGS>
__device__ __forceinline__ void setmaxnreg_inc() {
    asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;" ::"n"(REGS));
}

// Stores four 8x8 b16 matrices (one 32-bit register of each per lane) to shared memory; lane i
// gives the address of row i % 8 of matrix i / 8.
__device__ __forceinline__ void stmatrix_x4(void* smem_row, u32 r0, u32 r1, u32 r2, u32 r3) {
    asm volatile("stmatrix.sync.aligned.x4.m8n8.shared.b16 [%0], {%1, %2, %3, %4};" ::"r"(smem_u32(smem_row)), "r"(r0),
                 "r"(r1), "r"(r2), "r"(r3)
                 : "memory");
}

// As stmatrix_x4, each 8x8 matrix stored transposed: lane i gives the address of row i % 8 of
// the stored matrix i / 8, which holds column i % 8 of the lanes' fragments (element (r, c) of
// the fragment matrix lands at element r of stored row c).
__device__ __forceinline__ void stmatrix_x4_trans(void* smem_row, u32 r0, u32 r1, u32 r2, u32 r3) {
    asm volatile("stmatrix.sync.aligned.m8n8.x4.trans.shared.b16 [%0], {%1, %2, %3, %4};" ::"r"(smem_u32(smem_row)),
                 "r"(r0), "r"(r1), "r"(r2), "r"(r3)
                 : "memory");
}

__device__ __forceinline__ u32 cluster_cta_rank() {
    u32 r;
    asm volatile("mov.u32 %0, %%cluster_ctarank;" : "=r"(r));
    return r;
}

// 16 bytes at the address `p` has in the shared memory of cluster CTA `cta_rank` (distributed
// shared memory; order it after the owner's writes with a cluster barrier).
__device__ __forceinline__ float4 ld_shared_cluster_f32x4(const void* p, u32 cta_rank) {
    u32 remote;
    asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(remote) : "r"(smem_u32(p)), "r"(cta_rank));
    float4 v;
    asm volatile("ld.shared::cluster.v4.f32 {%0, %1, %2, %3}, [%4];"
                 : "=f"(v.x), "=f"(v.y), "=f"(v.z), "=f"(v.w)
                 : "r"(remote)
                 : "memory");
    return v;
}

// A barrier over every thread of every CTA of the cluster (release / acquire).
__device__ __forceinline__ void cluster_sync() {
    asm volatile("barrier.cluster.arrive.release.aligned;\nbarrier.cluster.wait.acquire.aligned;" ::: "memory");
}

// A named barrier over `threads` threads (a multiple of 32) of this CTA. The non-aligned form
// (`barrier.sync`, not `bar.sync` = `barrier.sync.aligned`): a warp may arrive diverged, e.g.
// right after a branch on the lane (compute-sanitizer's synccheck reports that for the aligned
// form).
__device__ __forceinline__ void named_barrier_sync(u32 id, u32 threads) {
    asm volatile("barrier.sync %0, %1;" ::"r"(id), "r"(threads) : "memory");
}

// Arrives on a named barrier without waiting (the other `threads - 32 * warps` come with
// named_barrier_sync); non-aligned like it.
__device__ __forceinline__ void named_barrier_arrive(u32 id, u32 threads) {
    asm volatile("barrier.arrive %0, %1;" ::"r"(id), "r"(threads) : "memory");
}

// ---- global reductions and flags -------------------------------------------------------------

// p[0] += a, p[1] += b (f32, relaxed, gpu scope, performed in L2; no value returned). p 8-byte
// aligned.
__device__ __forceinline__ void red_add_f32x2(float* p, float a, float b) {
    asm volatile("red.global.add.v2.f32 [%0], {%1, %2};" ::"l"(p), "f"(a), "f"(b) : "memory");
}

// A load with gpu-scope acquire semantics (what other CTAs released before the value it returns
// is visible to this thread afterwards).
__device__ __forceinline__ u32 ld_acquire_gpu(const u32* p) {
    u32 v;
    asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
    return v;
}

// A load with gpu-scope relaxed semantics (read from L2, no L1 invalidation): for polling a flag,
// followed by one ld_acquire_gpu once the value is the awaited one.
__device__ __forceinline__ u32 ld_relaxed_gpu(const u32* p) {
    u32 v;
    asm volatile("ld.relaxed.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
    return v;
}

// *p += v with gpu-scope release semantics (cumulative: it orders after it whatever this thread,
// and the threads it synchronized with through a barrier before, wrote or reduced).
__device__ __forceinline__ void red_release_gpu_add(u32* p, u32 v) {
    asm volatile("red.release.gpu.global.add.u32 [%0], %1;" ::"l"(p), "r"(v) : "memory");
}
