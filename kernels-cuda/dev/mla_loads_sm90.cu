// Loads-only microbenchmark for the MLA decode's key tiles on sm_90a (issue 10, h_q 128): how
// fast can a CTA stream 64-key tiles (64 records x 1152 bytes of a paged bf16 cache, 9 column
// blocks of [64 keys][64 dims], 128-byte swizzled) into two shared-memory stages, by
//   mode 0  128 producer threads of 16-byte cp.async, one full barrier per stage (the library's
//           sm90/mla_decode.cu producer, without its per-block barriers);
//   mode 1  TMA: one thread, 9 boxes of [64 keys][64 dims] per tile from a 2-D tensor map of the
//           cache (pages of 64 keys: a tile is one page);
//   mode 2  TMA multicast in a cluster of 2 (the two row groups of h_q 128, which read the same
//           keys): CTA rank r loads the blocks cb with cb % 2 == r into both CTAs.
// The two math warpgroups only wait for each tile and release it. Grid: (request, split, row
// group), each CTA streams its split's tiles; h_q 128 = 2 row groups per (request, split).
// Prints GB/s of tile bytes landed in shared memory (all CTAs) and of distinct cache bytes.
//
//   nvcc -O3 -std=c++17 -gencode arch=compute_90a,code=sm_90a -o mla_loads mla_loads_sm90.cu -lcuda
//   ./mla_loads [batch 64] [s_k 8192] [splits 0 = auto]
#include <cuda.h>
#include <cuda_runtime.h>

// common.cuh asks for the plan's launch constants (unused here).
#define TESSERA_SMEM_BYTES 0
#define TESSERA_THREADS 384
#include "../kernels/common.cuh"
#include "../kernels/sm90/hopper.cuh"
#include "harness.cuh"

constexpr int KEYS = 64, BLOCKS = 9, BLOCK_BYTES = KEYS * 128, TILE = BLOCKS * BLOCK_BYTES, REC = 1152;
constexpr int SMEM = 2 * TILE + 64 + 1024;  // two stages, barriers, alignment slack

template <int MODE>
__global__ void __launch_bounds__(384, 1)
    mla_loads(const u8* __restrict__ cache, const int* __restrict__ block_table, const __grid_constant__ TmaDesc map,
              int max_pages, int s_k, int splits, int row_groups) {
    extern __shared__ u8 smem_raw[];
    u8* smem = (u8*)(((size_t)smem_raw + 1023) & ~(size_t)1023);
    u64* full = (u64*)(smem + 2 * TILE);
    u64* empty = full + 2;
    const int rg = blockIdx.x % row_groups;
    const int unit = blockIdx.x / row_groups;
    const int b = unit / splits, split = unit % splits;
    const int tiles_total = s_k / KEYS;
    const int t_begin = split * tiles_total / splits, t_end = (split + 1) * tiles_total / splits;
    const int ntiles = t_end - t_begin;
    const int tid = threadIdx.x, wg = tid / 128;
    u32 rank = 0;
    if (MODE == 2) asm volatile("mov.u32 %0, %%cluster_ctarank;" : "=r"(rank));
    (void)rg;
    if (tid == 0) {
        for (int s = 0; s < 2; ++s) {
            mbar_init(&full[s], MODE == 0 ? 128 : 1);
            mbar_init(&empty[s], MODE == 2 ? 4 : 2);
        }
        mbar_fence_init();
    }
    if (MODE == 2) {
        asm volatile("barrier.cluster.arrive.release.aligned; barrier.cluster.wait.acquire.aligned;" ::: "memory");
    } else {
        __syncthreads();
    }
    if (wg == 0) {
        const int t128 = tid;
        for (int t = 0; t < ntiles; ++t) {
            const int s = t % 2;
            mbar_wait(&empty[s], ((t / 2) & 1) ^ 1);
            const int page = __ldg(block_table + (size_t)b * max_pages + t_begin + t);
            u8* stage = smem + s * TILE;
            if (MODE == 0) {
                const int key0 = t128 / 8, chunk = t128 % 8;
#pragma unroll
                for (int cb = 0; cb < BLOCKS; ++cb)
#pragma unroll
                    for (int k = 0; k < 4; ++k) {
                        const int key = 16 * k + key0;
                        cp_async_16(stage + cb * BLOCK_BYTES + swizzle128(key, chunk),
                                    cache + ((size_t)page * KEYS + key) * REC + (cb * 8 + chunk) * 16, true);
                    }
                cp_async_mbar_arrive(&full[s]);
            } else if (t128 == 0) {
                mbar_arrive_expect_tx(&full[s], TILE);
#pragma unroll 1
                for (int cb = 0; cb < BLOCKS; ++cb) {
                    if (MODE == 1)
                        tma_load_2d(stage + cb * BLOCK_BYTES, &map, &full[s], cb * 64, page * KEYS);
                    else if (cb % 2 == (int)rank)
                        tma_load_2d_multicast(stage + cb * BLOCK_BYTES, &map, &full[s], cb * 64, page * KEYS, 3);
                }
            }
        }
        if (MODE == 0) asm volatile("cp.async.wait_all;" ::: "memory");
    } else if (tid % 128 == 0) {
        for (int t = 0; t < ntiles; ++t) {
            const int s = t % 2;
            mbar_wait(&full[s], (t / 2) & 1);
            if (MODE == 2) {
                mbar_arrive_cluster(&empty[s], 0);
                mbar_arrive_cluster(&empty[s], 1);
            } else {
                mbar_arrive(&empty[s]);
            }
        }
    }
    // No CTA of a cluster leaves while the other may still multicast into it or arrive on it.
    if (MODE == 2)
        asm volatile("barrier.cluster.arrive.release.aligned; barrier.cluster.wait.acquire.aligned;" ::: "memory");
}

typedef CUresult (*EncodeTiledFn)(CUtensorMap*, CUtensorMapDataType, cuuint32_t, void*, const cuuint64_t*,
                                  const cuuint64_t*, const cuuint32_t*, const cuuint32_t*, CUtensorMapInterleave,
                                  CUtensorMapSwizzle, CUtensorMapL2promotion, CUtensorMapFloatOOBfill);

int main(int argc, char** argv) {
    const int batch = argc > 1 ? atoi(argv[1]) : 64;
    const int s_k = argc > 2 ? atoi(argv[2]) : 8192;
    int sms = 0;
    CK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
    const int max_pages = s_k / KEYS, num_pages = batch * max_pages;
    // Splits as the library's schedule would: enough (request, split) units for the SMs.
    int splits = argc > 3 ? atoi(argv[3]) : 0;
    if (splits <= 0) splits = std::max(1, std::min(max_pages, (2 * sms + batch - 1) / batch));
    u8* cache;
    const size_t cache_bytes = (size_t)num_pages * KEYS * REC;
    CK(cudaMalloc(&cache, cache_bytes));
    fill_half<<<1024, 256>>>((u16*)cache, cache_bytes / 2, 7, 1.0f, 1);
    std::vector<int> table(num_pages);
    for (int i = 0; i < num_pages; ++i) table[i] = i;
    std::srand(11);
    for (int i = num_pages - 1; i > 0; --i) std::swap(table[i], table[std::rand() % (i + 1)]);
    int* d_table;
    CK(cudaMalloc(&d_table, num_pages * sizeof(int)));
    CK(cudaMemcpy(d_table, table.data(), num_pages * sizeof(int), cudaMemcpyHostToDevice));
    EncodeTiledFn encode;
    cudaDriverEntryPointQueryResult q;
    CK(cudaGetDriverEntryPoint("cuTensorMapEncodeTiled", (void**)&encode, cudaEnableDefault, &q));
    CUtensorMap cmap;
    cuuint64_t dims[2] = {REC / 2, (cuuint64_t)num_pages * KEYS};
    cuuint64_t strides[1] = {REC};
    cuuint32_t box[2] = {64, KEYS}, estr[2] = {1, 1};
    if (encode(&cmap, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2, cache, dims, strides, box, estr,
               CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
               CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) != CUDA_SUCCESS) {
        fprintf(stderr, "cuTensorMapEncodeTiled failed\n");
        return 1;
    }
    TmaDesc map;
    memcpy(&map, &cmap, sizeof(map));
    printf("batch %d s_k %d splits %d, cache %.0f MB, %d SMs\n", batch, s_k, splits, cache_bytes / 1e6, sms);
    printf("%-28s %9s %12s %12s\n", "mode", "us", "CTA GB/s", "cache GB/s");
    for (int row_groups : {1, 2}) {
        for (int mode = 0; mode < 3; ++mode) {
            if (mode == 2 && row_groups != 2) continue;
            const int grid = batch * splits * row_groups;
            auto launch = [&](int) {
                cudaLaunchConfig_t cfg = {};
                cfg.gridDim = dim3(grid);
                cfg.blockDim = dim3(384);
                cfg.dynamicSmemBytes = SMEM;
                cudaLaunchAttribute attr[1];
                attr[0].id = cudaLaunchAttributeClusterDimension;
                attr[0].val.clusterDim.x = mode == 2 ? 2 : 1;
                attr[0].val.clusterDim.y = 1;
                attr[0].val.clusterDim.z = 1;
                cfg.attrs = attr;
                cfg.numAttrs = mode == 2 ? 1 : 0;
                if (mode == 0)
                    CK(cudaLaunchKernelEx(&cfg, mla_loads<0>, (const u8*)cache, (const int*)d_table, map, max_pages, s_k,
                                          splits, row_groups));
                else if (mode == 1)
                    CK(cudaLaunchKernelEx(&cfg, mla_loads<1>, (const u8*)cache, (const int*)d_table, map, max_pages, s_k,
                                          splits, row_groups));
                else
                    CK(cudaLaunchKernelEx(&cfg, mla_loads<2>, (const u8*)cache, (const int*)d_table, map, max_pages, s_k,
                                          splits, row_groups));
            };
            CK(cudaFuncSetAttribute(mla_loads<0>, cudaFuncAttributeMaxDynamicSharedMemorySize, SMEM));
            CK(cudaFuncSetAttribute(mla_loads<1>, cudaFuncAttributeMaxDynamicSharedMemorySize, SMEM));
            CK(cudaFuncSetAttribute(mla_loads<2>, cudaFuncAttributeMaxDynamicSharedMemorySize, SMEM));
            launch(0);
            CK(cudaDeviceSynchronize());
            const float ms = median_event_ms(launch, 15, 200000);
            const double tile_bytes = (double)grid / (batch * splits) * cache_bytes;
            const char* names[3] = {"cp.async (128 threads)", "TMA 9 boxes", "TMA multicast (cluster 2)"};
            char name[64];
            snprintf(name, sizeof name, "%s, %d row group%s", names[mode], row_groups, row_groups > 1 ? "s" : "");
            printf("%-40s %9.1f %12.0f %12.0f\n", name, ms * 1e3, tile_bytes / (ms * 1e-3) / 1e9,
                   cache_bytes / (ms * 1e-3) / 1e9);
        }
    }
    return 0;
}
