// Experiment (session 19, issue 9's quantizer at >= 80 % of the copy ceiling): the 1x128
// quantizer with bulk copies. CTA c of G takes rows c, c + G, ...; a row of x (cols x 2 bytes)
// comes into one of STAGES shared-memory buffers by one cp.async.bulk (thread 0, an mbarrier per
// stage, STAGES rows in flight per CTA without registers); teams of 8 threads quantize one
// 128-column group each (16 columns a thread) into a codes row in shared memory (two, used in
// turn) and store the scales; thread 0 writes the codes row back by one bulk store. Needs
// cols % 16 == 0 (16-byte rows of codes) and 16-byte aligned x and q. bf16 / f16 inputs.
// Included by dev/fp8_quantize_sm90_harness.cu with WITH_BULK=1 (after the library kernel,
// whose In8, group_scale and pack8 it uses), needs sm90/hopper.cuh.
namespace bulk {
constexpr int CODE_BUFS = 2;
__host__ __device__ inline size_t smem_bytes(int stages, int cols) {
    return (size_t)stages * cols * sizeof(in_t) + (size_t)CODE_BUFS * cols + 64;
}
template <int STAGES, int THREADS, int MINB>
__global__ void __launch_bounds__(THREADS, MINB) q1x128(const in_t* __restrict__ x, u8* __restrict__ q,
                                                        float* __restrict__ scales, int rows, int cols) {
    extern __shared__ __align__(128) u8 sm[];
    const size_t row_bytes = (size_t)cols * sizeof(in_t);
    u8* const in_buf = sm;
    u8* const code_buf = sm + STAGES * row_bytes;
    u64* const full = reinterpret_cast<u64*>(code_buf + CODE_BUFS * cols);
    const int tid = threadIdx.x, team = tid / 8, sub = tid % 8;
    const int groups = (cols + 127) / 128;
    const int G = gridDim.x;
    auto load_row = [&](int stage, int row) {
        mbar_arrive_expect_tx(&full[stage], (u32)row_bytes);
        asm volatile(
            "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::"r"(
                smem_u32(in_buf + stage * row_bytes)),
            "l"(x + (size_t)row * cols), "r"((u32)row_bytes), "r"(smem_u32(&full[stage]))
            : "memory");
    };
    if (tid == 0) {
        for (int s = 0; s < STAGES; ++s) mbar_init(&full[s], 1);
        mbar_fence_init();
    }
    __syncthreads();
    if (tid == 0)
        for (int s = 0; s < STAGES; ++s)
            if ((int)blockIdx.x + s * G < rows) load_row(s, blockIdx.x + s * G);
    int i = 0;
    for (int row = blockIdx.x; row < rows; row += G, ++i) {
        const int stage = i % STAGES;
        mbar_wait(&full[stage], (u32)((i / STAGES) & 1));
        if (tid == 0) tma_store_wait_read<CODE_BUFS - 1>();  // this codes row's previous store
        __syncthreads();
        const u8* const src = in_buf + stage * row_bytes;
        u8* const dst = code_buf + (i % CODE_BUFS) * cols;
        // Warp-uniform trips (the shuffles take every lane): teams past the groups idle.
        for (int g0 = 0; g0 < groups; g0 += THREADS / 8) {
            const int g = g0 + team;
            const int c0 = g < groups ? g * 128 + sub * 16 : cols;
            In8 a = zero8(), b = zero8();
            if (c0 < cols) {
                const uint4 u = *reinterpret_cast<const uint4*>(src + (size_t)c0 * sizeof(in_t));
                const uint4 v = *reinterpret_cast<const uint4*>(src + (size_t)(c0 + 8) * sizeof(in_t));
                a.w[0] = u.x, a.w[1] = u.y, a.w[2] = u.z, a.w[3] = u.w;
                b.w[0] = v.x, b.w[1] = v.y, b.w[2] = v.z, b.w[3] = v.w;
            }
            float m = fmaxf(amax8(a), amax8(b));
            m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, 1));
            m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, 2));
            m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, 4));
            const GroupScale gs = group_scale(m);
            if (c0 < cols) {
                const uint2 lo = pack8(a, gs), hi = pack8(b, gs);
                *reinterpret_cast<uint4*>(dst + c0) = make_uint4(lo.x, lo.y, hi.x, hi.y);
            }
            if (sub == 0 && g < groups) __stcs(scales + (size_t)row * groups + g, gs.s);
        }
        fence_proxy_async_smem();
        __syncthreads();
        if (tid == 0) {
            asm volatile("cp.async.bulk.global.shared::cta.bulk_group [%0], [%1], %2;" ::"l"(q + (size_t)row * cols),
                         "r"(smem_u32(dst)), "r"((u32)cols)
                         : "memory");
            tma_store_commit();
            if (row + STAGES * G < rows) load_row(stage, row + STAGES * G);
        }
    }
    if (tid == 0) tma_store_wait<0>();
}
}  // namespace bulk
