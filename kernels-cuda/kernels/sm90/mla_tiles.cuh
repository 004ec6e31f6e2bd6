// Tessera CUDA kernels: copying bf16 MLA cache records into a Hopper decode kernel's key tiles,
// shared by sm90/mla_decode.cu (the cp.async producer) and sm90/mla_decode_fp8.cu (FMT 0's
// loaders). Prepended after sm90/hopper.cuh.
//
// A key tile is 9 column blocks of [64 keys][64 dims] bf16, each 128-byte swizzled (swizzle128);
// a record is 72 chunks of 16 bytes, chunk c of column block cb at byte (cb * 8 + c) * 16.

// Copies chunk `chunk` of column block `cb` of N records into `block` (that column block of a
// tile) with 16-byte cp.async: record k (byte offset rec[k] in the cache, or -1: zeros, nothing
// read) goes to key row key0 + key_stride * k.
template <int N>
__device__ __forceinline__ void mla_copy_record_chunks(u8* block, const u8* __restrict__ cache, const i64 (&rec)[N],
                                                       int cb, int key0, int key_stride, int chunk) {
#pragma unroll
    for (int k = 0; k < N; ++k) {
        const bool valid = rec[k] >= 0;
        cp_async_16(block + swizzle128(key_stride * k + key0, chunk),
                    valid ? cache + rec[k] + (cb * 8 + chunk) * 16 : cache, valid);
    }
}
