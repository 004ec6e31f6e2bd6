// Dev harnesses (nvcc, host side): the TMA tensor map through which the Hopper attention kernels
// read a [batch, tokens, heads, head_dim] tensor of 16-bit elements: the 3-D tensor (heads x
// head_dim, tokens, batch), boxes of [box_tokens tokens][64], 128-byte swizzle (zeros past a
// batch's tokens): what kernels-cuda/src/ops/attention.rs's token_tile_map encodes in the
// library. Needs cuda.h, cuda_runtime.h, cstdio, cstdlib, cstring and TmaDesc (sm90/hopper.cuh).
#pragma once

static TmaDesc encode_token_map(const void* x, int batch, int tokens, int heads, int head_dim, unsigned box_tokens) {
    typedef CUresult (*EncodeTiledFn)(CUtensorMap*, CUtensorMapDataType, cuuint32_t, void*, const cuuint64_t*,
                                      const cuuint64_t*, const cuuint32_t*, const cuuint32_t*, CUtensorMapInterleave,
                                      CUtensorMapSwizzle, CUtensorMapL2promotion, CUtensorMapFloatOOBfill);
    static EncodeTiledFn encode = nullptr;
    if (!encode) {
        cudaDriverEntryPointQueryResult qr;
        cudaGetDriverEntryPoint("cuTensorMapEncodeTiled", (void**)&encode, cudaEnableDefault, &qr);
    }
    CUtensorMap cmap;
    const cuuint64_t row = (cuuint64_t)heads * head_dim;
    cuuint64_t dims[3] = {row, (cuuint64_t)tokens, (cuuint64_t)batch};
    cuuint64_t strides[2] = {row * 2, row * 2 * (cuuint64_t)tokens};
    cuuint32_t box[3] = {64, box_tokens, 1}, estr[3] = {1, 1, 1};
    if (!encode || encode(&cmap, CU_TENSOR_MAP_DATA_TYPE_UINT16, 3, (void*)x, dims, strides, box, estr,
                          CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                          CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) != CUDA_SUCCESS) {
        fprintf(stderr, "cuTensorMapEncodeTiled failed\n");
        exit(1);
    }
    TmaDesc t;
    memcpy(&t, &cmap, sizeof(t));
    return t;
}
