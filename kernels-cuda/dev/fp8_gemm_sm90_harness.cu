// Development harness for kernels/sm90/fp8_gemm.cu on the GPU machine (nvcc, no Rust there).
// Built once per variant by dev/fp8_gemm_sm90.sh with -DBLOCK_M=... etc.; checks the kernel
// against a plain f32 GPU reference and times it (CUDA events per launch, median, operand sets
// rotated so that L2 is not what is measured).
//   harness [--check] M N K [M N K ...]
// MOE_ROWS="r0 r1 ..." (timing only): each N K pair of the arguments (M ignored) is timed as a
// mixture of experts, group g computing r_g rows against its own B: GROUPING 1 as contiguous
// groups (rows stacked, offsets), GROUPING 2 as masked groups (a buffer of MOE_ROOM rows per group,
// default the largest r_g), GROUPING 0 as the plain GEMM of the same total rows (one B).
// REPS=N times N launches per shape (default: about 0.3 s of work, 5..100, which keeps large
// shapes below the H200's power cap); GRID_CTAS=N caps the persistent grid at N CTAs.
#include <cuda.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "../kernels/common.cuh"
#include "../kernels/sm90/hopper.cuh"
#include "../kernels/sm90/wgmma.cuh"
#include "../kernels/sm90/fp8_gemm.cu"
#include "harness.cuh"


__global__ void fill_e4m3(u8* p, size_t n, u64 seed) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        u64 x = (i + 1) * 0x9E3779B97F4A7C15ull ^ seed;
        x ^= x >> 31; x *= 0xBF58476D1CE4E5B9ull; x ^= x >> 29;
        // exponent field 4..9 (values ~2^-3..2^2), any mantissa, random sign: no NaN.
        u8 e = 4 + (x >> 8) % 6;
        p[i] = (u8)(((x >> 16) & 0x80) | (e << 3) | (x & 7));
    }
}

__global__ void fill_scale(float* p, size_t n, u64 seed) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        u64 x = (i + 7) * 0xD1B54A32D192ED03ull ^ seed;
        x ^= x >> 29; x *= 0x94D049BB133111EBull; x ^= x >> 32;
        p[i] = 0.5f + (float)(x % 1000) / 1000.0f;  // 0.5 .. 1.5
    }
}

__global__ void fill_nan(u16* p, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        p[i] = 0x7fc0;
}

// Plain reference: one thread per output, f32 partial sums per 128-block, promoted with the scales.
__global__ void ref_gemm(const u8* a, const float* sa, const u8* b, const float* sb, float* d, int m, int n, int k) {
    int col = blockIdx.x * blockDim.x + threadIdx.x, row = blockIdx.y;
    if (col >= n || row >= m) return;
    int nkb = (k + 127) / 128;
    float acc = 0.f;
    for (int kb = 0; kb < nkb; ++kb) {
        float part = 0.f;
        for (int kk = kb * 128; kk < min(k, kb * 128 + 128); ++kk)
            part += e4m3_to_f32(a[(size_t)row * k + kk]) * e4m3_to_f32(b[(size_t)col * k + kk]);
        acc += sa[(size_t)row * nkb + kb] * sb[(size_t)(col / 128) * nkb + kb] * part;
    }
    d[(size_t)row * n + col] = acc;
}

typedef CUresult (*EncodeTiledFn)(CUtensorMap*, CUtensorMapDataType, cuuint32_t, void*, const cuuint64_t*,
                                  const cuuint64_t*, const cuuint32_t*, const cuuint32_t*, CUtensorMapInterleave,
                                  CUtensorMapSwizzle, CUtensorMapL2promotion, CUtensorMapFloatOOBfill);
static EncodeTiledFn encode_fn() {
    static EncodeTiledFn fn = nullptr;
    if (!fn) {
        cudaDriverEntryPointQueryResult q;
        CK(cudaGetDriverEntryPoint("cuTensorMapEncodeTiled", (void**)&fn, cudaEnableDefault, &q));
    }
    return fn;
}

static TmaDesc make_map(const void* ptr, int inner, int outer, int box_inner, int box_outer, int elem_bytes,
                        CUtensorMapSwizzle swz) {
    CUtensorMap map;
    cuuint64_t dims[2] = {(cuuint64_t)inner, (cuuint64_t)outer};
    cuuint64_t strides[1] = {(cuuint64_t)inner * elem_bytes};
    cuuint32_t box[2] = {(cuuint32_t)box_inner, (cuuint32_t)box_outer};
    cuuint32_t estr[2] = {1, 1};
    CUresult r = encode_fn()(&map, elem_bytes == 1 ? CU_TENSOR_MAP_DATA_TYPE_UINT8 : CU_TENSOR_MAP_DATA_TYPE_BFLOAT16,
                             2, (void*)ptr, dims, strides, box, estr, CU_TENSOR_MAP_INTERLEAVE_NONE, swz,
                             CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
    if (r != CUDA_SUCCESS) {
        fprintf(stderr, "cuTensorMapEncodeTiled failed %d\n", (int)r);
        exit(1);
    }
    TmaDesc t;
    memcpy(&t, &map, sizeof(t));
    return t;
}

struct Set {
    u8 *a, *b;
    float *sa, *sb;
    TmaDesc ta, tb;
};

// One operand set: A [a_rows, k] and B [b_rows, k] e4m3 with their scales (sA [a_rows, k/128],
// sB [sb_rows, k/128]), filled from seed s, and their tensor maps.
static Set make_set(int a_rows, int b_rows, int sb_rows, int k, int s) {
    using namespace fp8_gemm_sm90;
    const int nkb = (k + 127) / 128;
    Set r;
    CK(cudaMalloc(&r.a, (size_t)a_rows * k));
    CK(cudaMalloc(&r.b, (size_t)b_rows * k));
    CK(cudaMalloc(&r.sa, (size_t)a_rows * nkb * 4));
    CK(cudaMalloc(&r.sb, (size_t)sb_rows * nkb * 4));
    fill_e4m3<<<1024, 256>>>(r.a, (size_t)a_rows * k, 11 + s);
    fill_e4m3<<<1024, 256>>>(r.b, (size_t)b_rows * k, 101 + s);
    fill_scale<<<64, 256>>>(r.sa, (size_t)a_rows * nkb, 5 + s);
    fill_scale<<<64, 256>>>(r.sb, (size_t)sb_rows * nkb, 9 + s);
    r.ta = make_map(r.a, k, a_rows, 128, BLOCK_M, 1, CU_TENSOR_MAP_SWIZZLE_128B);
    r.tb = make_map(r.b, k, b_rows, 128, BLOCK_N / CLUSTER_M, 1, CU_TENSOR_MAP_SWIZZLE_128B);
    return r;
}

static void free_set(Set& s) {
    CK(cudaFree(s.a));
    CK(cudaFree(s.b));
    CK(cudaFree(s.sa));
    CK(cudaFree(s.sb));
}

// The epilogue's tensor map of D [rows, n] bf16 (zeros when the build stores from registers).
static TmaDesc make_d_map(u16* d, int n, int rows) {
    using namespace fp8_gemm_sm90;
    TmaDesc td;
    memset(&td, 0, sizeof(td));
    if (EPI_SWIZZLE)
        td = make_map(d, n, rows, EPI_SWIZZLE / 2, 64 * SUB, 2,
                      EPI_SWIZZLE == 128 ? CU_TENSOR_MAP_SWIZZLE_128B
                                         : (EPI_SWIZZLE == 64 ? CU_TENSOR_MAP_SWIZZLE_64B : CU_TENSOR_MAP_SWIZZLE_32B));
    return td;
}

// The launch configuration of `grid` CTAs of this build in clusters of CLUSTER (attr: its one
// attribute).
static cudaLaunchConfig_t cluster_config(int grid, cudaLaunchAttribute* attr) {
    using namespace fp8_gemm_sm90;
    return cluster_launch_config(dim3(grid), dim3(THREADS), SMEM_BYTES, CLUSTER, attr);
}

// MOE_ROWS mode: one timed run of the grouping this binary was built for (see the header).
static void time_moe(int n, int k, const std::vector<int>& rows, int room, int sms) {
    using namespace fp8_gemm_sm90;
    const int groups = GROUPING == 0 ? 1 : (int)rows.size();
    int total = 0;
    for (int r : rows) total += r;
    const int sb_rows = (n + 127) / 128;
    const int a_rows = GROUPING == 2 ? groups * room : total;  // rows of A, sA and D
    const int m = GROUPING == 2 ? room : total;                // the kernel's m
    std::vector<int> layout;
    if (GROUPING == 1) {
        layout.push_back(0);
        for (int r : rows) layout.push_back(layout.back() + r);
    } else if (GROUPING == 2) {
        layout = rows;
    }
    int* groups_dev = nullptr;
    if (GROUPING != 0) {
        CK(cudaMalloc(&groups_dev, layout.size() * 4));
        CK(cudaMemcpy(groups_dev, layout.data(), layout.size() * 4, cudaMemcpyHostToDevice));
    }
    const size_t set_bytes = (size_t)a_rows * k + (size_t)groups * n * k;
    const int nsets = (int)std::min<size_t>(8, (400ull << 20) / set_bytes + 1);
    std::vector<Set> sets;
    for (int s = 0; s < nsets; ++s) sets.push_back(make_set(a_rows, groups * n, groups * sb_rows, k, s));
    u16* d;
    CK(cudaMalloc(&d, (size_t)a_rows * n * 2));
    const TmaDesc td = make_d_map(d, n, a_rows);
    const int grid = sms / CLUSTER * CLUSTER;  // persistent: every SM (the kernel skips what it lacks)
    auto launch = [&](int s) {
        cudaLaunchAttribute attr[1];
        const cudaLaunchConfig_t cfg = cluster_config(grid, attr);
        CK(cudaLaunchKernelEx(&cfg, fp8_gemm_sm90_kernel, sets[s].ta, sets[s].tb, td, (const float*)sets[s].sa,
                              (const float*)sets[s].sb, d, m, n, k, groups_dev, groups));
    };
    for (int w = 0; w < 3; ++w) launch(w % nsets);
    CK(cudaGetLastError());
    CK(cudaDeviceSynchronize());
    const double flop = 2.0 * total * n * k;
    float best = 1e30f;
    for (int rep = 0; rep < 3; ++rep) best = std::min(best, median_event_ms([&](int i) { launch(i % nsets); }, 50));
    printf("MOE BM%d BN%d G%d groups %d rows %d N%d K%d: %.4f ms %.0f TFLOPS (best median of 3 x 50, %d sets)\n", BLOCK_M,
           BLOCK_N, GROUPING, groups, total, n, k, best, flop / best / 1e9, nsets);
    for (auto& s : sets) free_set(s);
    CK(cudaFree(d));
    if (groups_dev) CK(cudaFree(groups_dev));
}

int main(int argc, char** argv) {
    using namespace fp8_gemm_sm90;
    bool check = false, plain = getenv("PLAIN_LAUNCH") != nullptr;
    std::vector<int> shapes;
    for (int i = 1; i < argc; ++i) {
        if (!strcmp(argv[i], "--check")) check = true;
        else shapes.push_back(atoi(argv[i]));
    }
    int sms = 0;
    CK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
    CK(cudaFuncSetAttribute(fp8_gemm_sm90_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, SMEM_BYTES));
    cudaFuncAttributes fa;
    CK(cudaFuncGetAttributes(&fa, fp8_gemm_sm90_kernel));
    printf("# variant BM%d BN%d ST%d WG%d EPI%d CM%d SK%d: regs %d, smem %d, local %zu\n", BLOCK_M, BLOCK_N, STAGES, MATH_WG, EPI_SWIZZLE,
           CLUSTER_M, SPLIT_K, fa.numRegs, SMEM_BYTES, (size_t)fa.localSizeBytes);
    if (const char* moe = getenv("MOE_ROWS")) {
        std::vector<int> rows;
        for (const char* p = moe; *p;) {
            char* end;
            const long r = strtol(p, &end, 10);
            if (end == p) break;
            rows.push_back((int)r);
            p = end;
        }
        int room = 0;
        for (int r : rows) room = std::max(room, r);
        if (const char* rm = getenv("MOE_ROOM")) room = atoi(rm);
        for (size_t si = 0; si + 3 <= shapes.size(); si += 3) time_moe(shapes[si + 1], shapes[si + 2], rows, room, sms);
        return 0;
    }
    for (size_t si = 0; si + 3 <= shapes.size(); si += 3) {
        int m = shapes[si], n = shapes[si + 1], k = shapes[si + 2];
        int nkb = (k + 127) / 128;
        size_t set_bytes = (size_t)m * k + (size_t)n * k + (size_t)m * nkb * 4 + (size_t)((n + 127) / 128) * nkb * 4;
        int nsets = check ? 1 : (int)std::min<size_t>(64, std::max<size_t>(1, (400ull << 20) / set_bytes + 1));
        std::vector<Set> sets;
        for (int s = 0; s < nsets; ++s) sets.push_back(make_set(m, n, (n + 127) / 128, k, s));
        u16* d;
        CK(cudaMalloc(&d, (size_t)m * n * 2));
        const TmaDesc td = make_d_map(d, n, m);
        // One group (GROUPING 1: offsets {0, m}; GROUPING 2: count {m}): the grouped builds
        // compute the plain GEMM.
        int* groups_dev = nullptr;
        if (GROUPING != 0) {
            const int layout[2] = {GROUPING == 1 ? 0 : m, m};
            CK(cudaMalloc(&groups_dev, sizeof(layout)));
            CK(cudaMemcpy(groups_dev, layout, sizeof(layout), cudaMemcpyHostToDevice));
        }
        int tiles_mc = ((m + BLOCK_M - 1) / BLOCK_M + CLUSTER_M - 1) / CLUSTER_M;
        int tiles = tiles_mc * ((n + BLOCK_N - 1) / BLOCK_N);
        int max_clusters = sms / CLUSTER;
        {
            cudaLaunchAttribute attr[1];
            const cudaLaunchConfig_t cfg = cluster_config(sms / CLUSTER * CLUSTER, attr);
            CK(cudaOccupancyMaxActiveClusters(&max_clusters, fp8_gemm_sm90_kernel, &cfg));
        }
        // Split-K: one tile per cluster (not persistent).
        int grid = (SPLIT_K > 1 ? tiles : std::min(tiles, max_clusters)) * CLUSTER;
        // GRID_CTAS=N: at most N CTAs for the persistent grid (whole clusters), e.g. the fewest
        // that keep the same rounds of tiles, to see what a smaller grid does under the power cap.
        if (const char* g = getenv("GRID_CTAS"); g && SPLIT_K == 1)
            grid = std::max(CLUSTER, std::min(grid, atoi(g) / CLUSTER * CLUSTER));
        auto launch = [&](int s) {
            if (CLUSTER == 1 && plain) {
                fp8_gemm_sm90_kernel<<<grid, THREADS, SMEM_BYTES>>>(sets[s].ta, sets[s].tb, td, sets[s].sa, sets[s].sb, d,
                                                                    m, n, k, groups_dev, 1);
                return;
            }
            cudaLaunchAttribute attr[1];
            const cudaLaunchConfig_t cfg = cluster_config(grid, attr);
            CK(cudaLaunchKernelEx(&cfg, fp8_gemm_sm90_kernel, sets[s].ta, sets[s].tb, td, (const float*)sets[s].sa,
                                  (const float*)sets[s].sb, d, m, n, k, groups_dev, 1));
        };
        if (check) {
            fill_nan<<<1024, 256>>>(d, (size_t)m * n);
            launch(0);
            CK(cudaGetLastError());
            CK(cudaDeviceSynchronize());
            float* r;
            CK(cudaMalloc(&r, (size_t)m * n * 4));
            ref_gemm<<<dim3((n + 127) / 128, m), 128>>>(sets[0].a, sets[0].sa, sets[0].b, sets[0].sb, r, m, n, k);
            CK(cudaDeviceSynchronize());
            std::vector<u16> hd((size_t)m * n);
            std::vector<float> hr((size_t)m * n);
            CK(cudaMemcpy(hd.data(), d, hd.size() * 2, cudaMemcpyDeviceToHost));
            CK(cudaMemcpy(hr.data(), r, hr.size() * 4, cudaMemcpyDeviceToHost));
            double sxy = 0, sxx = 0, syy = 0, maxrel = 0;
            size_t nan = 0, first_bad = (size_t)-1;
            for (size_t i = 0; i < hd.size(); ++i) {
                u32 bits = (u32)hd[i] << 16;
                float x;
                memcpy(&x, &bits, 4);
                double y = hr[i];
                if (x != x) {
                    nan++;
                    if (first_bad == (size_t)-1) first_bad = i;
                    continue;
                }
                sxy += x * y, sxx += (double)x * x, syy += y * y;
                double rel = fabs(x - y) / (fabs(y) + 1e-2 * sqrt(syy / (i + 1) + 1e-30));
                if (rel > maxrel) maxrel = rel;
                if (rel > 0.05 && first_bad == (size_t)-1) first_bad = i;
            }
            double diff = 1 - 2 * sxy / (sxx + syy);
            bool ok = nan == 0 && diff < 1e-5;
            printf("CHECK BM%d BN%d ST%d WG%d E%dC%dA%dS%d M%d N%d K%d: diff %.3e nan %zu first_bad %lld -> %s\n", BLOCK_M,
                   BLOCK_N, STAGES, MATH_WG, EPI_SWIZZLE, CLUSTER_M, ACC_STAGES, SPLIT_K, m, n, k, diff, nan, first_bad == (size_t)-1 ? -1ll : (long long)first_bad,
                   ok ? "PASS" : "FAIL");
            CK(cudaFree(r));
        } else {
            for (int w = 0; w < 3; ++w) launch(w % nsets);
            CK(cudaGetLastError());
            CK(cudaDeviceSynchronize());
            double flop = 2.0 * m * n * k;
            int reps = (int)std::max(5.0, std::min(100.0, 0.3 / (flop / 1e15)));
            if (const char* r = getenv("REPS")) reps = std::max(1, atoi(r));  // e.g. 100: at the power cap
            float med = median_event_ms([&](int i) { launch(i % nsets); }, reps);
            double bytes = (double)m * k + (double)n * k + 2.0 * m * n;
            printf("TIME BM%d BN%d ST%d WG%d E%dC%dA%dS%d M%d N%d K%d: %.4f ms %.0f TFLOPS %.0f GB/s (grid %d, tiles %d, max clusters %d)\n",
                   BLOCK_M, BLOCK_N, STAGES, MATH_WG, EPI_SWIZZLE, CLUSTER_M, ACC_STAGES, SPLIT_K, m, n, k, med, flop / med / 1e9, bytes / med / 1e6, grid, tiles, max_clusters);
        }
        for (auto& s : sets) free_set(s);
        CK(cudaFree(d));
        if (groups_dev) CK(cudaFree(groups_dev));
    }
    return 0;
}
