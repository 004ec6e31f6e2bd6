// One kernel of the attention backward as a compile unit of the sm90 backward harness
// (dev/sparse_attention_bwd_sm90.sh builds it once per kernel, each with its own defines, and
// links them with sparse_attention_bwd_sm90_harness.cu). UNIT selects the kernel:
//   0 mma.sync delta, 1 mma.sync dk/dv, 2 mma.sync dq (kernels/sparse_attention_backward.cu)
//   11 wgmma dk/dv, 12 wgmma dq (kernels/sm90/sparse_attention_backward.cu)
//   13 wgmma dk/dv with fused dq (BWD90_FUSED_DQ, atomic adds), 14 the same, deterministic
//   (BWD90_DQ_DETERMINISTIC), 15 the fused dq's conversion (PASS 3)
//   16, 17 the fused pass with the dQ writer warps (BWD90_DQ_WRITER: atomic, deterministic),
//   18 the conversion of their tiled dq_accum (PASS 3, BWD90_DQ_WRITER)
// and defines the host launcher bwd_launch_<UNIT>(const BwdArgs&, stream).
#include <cuda.h>
#include <cuda_runtime.h>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "../kernels/common.cuh"
#include "../kernels/attention_constants.cuh"
#if UNIT >= 10
#include "../kernels/sm90/hopper.cuh"
#include "../kernels/sm90/wgmma.cuh"
#include "../kernels/sm90/sparse_attention_backward.cu"
#else
#include "../kernels/attention_tiles.cuh"
#include "../kernels/sparse_attention_backward.cu"
#endif
#include "sparse_attention_bwd_sm90_args.h"

#define CAT_(a, b) a##b
#define CAT(a, b) CAT_(a, b)

#if UNIT >= 11 && UNIT != 15 && UNIT != 18
#include "tma_token_map.cuh"
// x as the wgmma passes' streamed-tile map (64-token boxes).
static TmaDesc stream_map(const unsigned short* x, const BwdArgs& a) {
    return encode_token_map(x, a.batch, a.tokens, a.heads, HEAD_DIM, 64);
}
#endif

extern "C" void CAT(bwd_launch_, UNIT)(const BwdArgs& a, cudaStream_t st) {
#if UNIT == 0
    const long long rows = (long long)a.batch * a.tokens * a.heads;
    sparse_attention_bwd_delta<<<(unsigned)((rows + 15) / 16), 128, 0, st>>>(a.o, a.d_o, a.delta, a.tokens, a.heads,
                                                                            rows);
#elif UNIT == 1 || UNIT == 2
    const dim3 grid((a.tokens + 63) / 64, a.heads, a.batch);
    static bool once = false;
#if UNIT == 1
    if (!once) cudaFuncSetAttribute(sparse_attention_bwd_dkdv, cudaFuncAttributeMaxDynamicSharedMemorySize, TESSERA_SMEM_BYTES);
    sparse_attention_bwd_dkdv<<<grid, 128, TESSERA_SMEM_BYTES, st>>>(a.q, a.k, a.v, a.d_o, a.lse, a.delta, a.dk, a.dv,
                                                                    a.t_indptr, a.t_indices, a.tokens, a.heads, a.scale,
                                                                    a.scale * 1.4426950408889634f);
#else
    if (!once) cudaFuncSetAttribute(sparse_attention_bwd_dq, cudaFuncAttributeMaxDynamicSharedMemorySize, TESSERA_SMEM_BYTES);
    sparse_attention_bwd_dq<<<grid, 128, TESSERA_SMEM_BYTES, st>>>(a.q, a.k, a.v, a.d_o, a.lse, a.delta, a.dq, a.indptr,
                                                                  a.indices, a.tokens, a.heads, a.scale,
                                                                  a.scale * 1.4426950408889634f);
#endif
    once = true;
#elif UNIT == 15 || UNIT == 18
    const long long groups = (long long)a.batch * a.tokens * a.heads * HEAD_DIM / 8;
#if UNIT == 18
#define BWD90_CONVERT sparse_attention_bwd_dq_convert_tiled_sm90
#else
#define BWD90_CONVERT sparse_attention_bwd_dq_convert_sm90
#endif
    BWD90_CONVERT<<<(unsigned)((groups + 255) / 256), 256, 0, st>>>(a.dq_accum, a.dq, a.tokens,
                                                                                        a.heads, a.scale, groups);
#else
    const dim3 grid((a.tokens + 127) / 128, a.heads, a.batch);
    static bool once = false;
#if UNIT == 13 || UNIT == 14 || UNIT == 16 || UNIT == 17
    if (!once) cudaFuncSetAttribute(BWD90_ENTRY, cudaFuncAttributeMaxDynamicSharedMemorySize, TESSERA_SMEM_BYTES);
    BWD90_ENTRY<<<grid, 384, TESSERA_SMEM_BYTES, st>>>(
        a.q, a.k, a.v, a.d_o, a.lse, a.delta, a.dk, a.dv, a.dq_accum, a.dq_turns, a.t_rank, a.t_indptr, a.t_indices,
        a.tokens, a.heads, a.scale, a.scale * 1.4426950408889634f, stream_map(a.q, a), stream_map(a.d_o, a));
#elif UNIT == 11
    if (!once) cudaFuncSetAttribute(sparse_attention_bwd_dkdv_sm90, cudaFuncAttributeMaxDynamicSharedMemorySize, TESSERA_SMEM_BYTES);
    sparse_attention_bwd_dkdv_sm90<<<grid, 384, TESSERA_SMEM_BYTES, st>>>(
        a.q, a.k, a.v, a.d_o, a.lse, a.delta, a.dk, a.dv, a.t_indptr, a.t_indices, a.tokens, a.heads, a.scale,
        a.scale * 1.4426950408889634f, stream_map(a.q, a), stream_map(a.d_o, a));
#else
    if (!once) cudaFuncSetAttribute(sparse_attention_bwd_dq_sm90, cudaFuncAttributeMaxDynamicSharedMemorySize, TESSERA_SMEM_BYTES);
    sparse_attention_bwd_dq_sm90<<<grid, 384, TESSERA_SMEM_BYTES, st>>>(a.q, a.k, a.v, a.d_o, a.lse, a.delta, a.dq,
                                                                       a.indptr, a.indices, a.tokens, a.heads, a.scale,
                                                                       a.scale * 1.4426950408889634f,
                                                                       stream_map(a.k, a), stream_map(a.v, a));
#endif
    once = true;
#endif
}
