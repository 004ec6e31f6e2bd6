// Development harness for kernels/sm90/sparse_attention_backward.cu on the GPU machine (nvcc,
// no Rust there), built by dev/sparse_attention_bwd_sm90.sh for one (HEAD_DIM, ELEM_BF16) pair
// and linked with five compile units (sparse_attention_bwd_sm90_unit.cu): the mma.sync passes 0
// (delta), 1 (dk/dv), 2 (dq) and the wgmma passes 1 and 2; with FUSED (1), three more: the
// fused dk/dv/dq pass (BWD90_FUSED_DQ) with atomic adds (13) and deterministic (14), and the
// conversion of its f32 dq (15); with WRITER (1 when FUSED), three more: the fused pass with the
// dQ writer warps (BWD90_DQ_WRITER) atomic (16) and deterministic (17), its tiled dq conversion (18).
//   harness --check    random BSR masks (token counts not multiples of 128, a key block no
//                      query attends, rows with one block, an empty row), NaN-prefilled
//                      gradients: the wgmma dq/dk/dv against the mma.sync ones and against an
//                      f64 CPU reference (relative L2 error over each gradient). FUSED: the
//                      fused pass's dq/dk/dv the same way, its dk/dv bitwise equal to the
//                      two-pass wgmma ones, the deterministic mode's dq bitwise equal over two
//                      runs and its turn counters at the number of key blocks per query block.
//   harness --time TOKENS HEADS DENSITY   batch 1, a random mask of that block density and the
//                      dense mask: each tile pass of both kernels, CUDA events, median of 10
//                      (FUSED: the fused pass alone and with the zeroing and conversion).
// TFLOPS count the matmuls each pass runs, 2 * 128 * 128 * HEAD_DIM flops each per attended
// (128 x 128) block: dk/dv 4 (S, dP, dV, dK), dq 3 (S, dP, dQ); "bwd" counts the 5 matmuls of
// a backward that computes S and dP once (FlashAttention's convention: 2.5 x the forward), over
// the time of both passes.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

typedef unsigned short u16;  // the kernels' names (common.cuh is a kernel header), for harness.cuh
typedef unsigned int u32;
typedef unsigned long long u64;
#include "harness.cuh"
#include "sparse_attention_bwd_sm90_args.h"

extern "C" void bwd_launch_0(const BwdArgs&, cudaStream_t);
extern "C" void bwd_launch_1(const BwdArgs&, cudaStream_t);
extern "C" void bwd_launch_2(const BwdArgs&, cudaStream_t);
extern "C" void bwd_launch_11(const BwdArgs&, cudaStream_t);
extern "C" void bwd_launch_12(const BwdArgs&, cudaStream_t);
#ifndef FUSED
#define FUSED 0
#endif
#if FUSED
extern "C" void bwd_launch_13(const BwdArgs&, cudaStream_t);
extern "C" void bwd_launch_14(const BwdArgs&, cudaStream_t);
extern "C" void bwd_launch_15(const BwdArgs&, cudaStream_t);
#endif
#ifndef WRITER
#define WRITER 0
#endif
#if WRITER
extern "C" void bwd_launch_16(const BwdArgs&, cudaStream_t);
extern "C" void bwd_launch_17(const BwdArgs&, cudaStream_t);
extern "C" void bwd_launch_18(const BwdArgs&, cudaStream_t);
#endif
#if FUSED
// Fused modes: 0 atomic, 1 deterministic, with WRITER 2 writer atomic, 3 writer deterministic.
static const int FUSED_MODES = WRITER ? 4 : 2;
static const char* const FUSED_MODE_NAMES[4] = {"atomic", "deterministic", "writer atomic", "writer determ."};
static bool mode_deterministic(int mode) { return mode & 1; }
#endif

static const int D = HEAD_DIM;
static const int BLK = 128;

struct Mask {
    int nb = 0;
    std::vector<u32> indptr, indices;
    // Transposed masks only: rank[e] (parallel to indices) is the rank of key block c (this row)
    // among the key blocks of mask row indices[e], i.e. c's position in that sorted row: the turn
    // of the fused kernel's deterministic dq adds (BWD90_DQ_DETERMINISTIC).
    std::vector<u32> rank;
};

static Mask transpose(const Mask& m) {
    Mask t;
    t.nb = m.nb;
    std::vector<std::vector<u32>> cols(m.nb), ranks(m.nb);
    for (int r = 0; r < m.nb; ++r)
        for (u32 i = m.indptr[r]; i < m.indptr[r + 1]; ++i) {
            cols[m.indices[i]].push_back(r);
            ranks[m.indices[i]].push_back(i - m.indptr[r]);
        }
    t.indptr.push_back(0);
    for (int c = 0; c < m.nb; ++c) {
        for (u32 r : cols[c]) t.indices.push_back(r);
        for (u32 k : ranks[c]) t.rank.push_back(k);
        t.indptr.push_back((u32)t.indices.size());
    }
    return t;
}

template <class T>
static T* dalloc(size_t n) {
    T* p;
    CK(cudaMalloc(&p, std::max<size_t>(n, 1) * sizeof(T)));
    return p;
}

struct Bufs {
    BwdArgs a;
    u16 *q, *k, *v, *o, *d_o, *dq, *dk, *dv;
    float *lse, *delta, *dq_accum;
    u32 *indptr, *indices, *t_indptr, *t_indices, *dq_turns, *t_rank;
    size_t n, turns;
    size_t n_acc;  // dq_accum's floats: the tiled (writer) layout's, >= n (rows padded to 64)
};

static Bufs make_bufs(int batch, int tokens, int heads, const Mask& m) {
    Bufs b;
    b.n = (size_t)batch * tokens * heads * D;
    b.q = dalloc<u16>(b.n), b.k = dalloc<u16>(b.n), b.v = dalloc<u16>(b.n), b.o = dalloc<u16>(b.n);
    b.d_o = dalloc<u16>(b.n), b.dq = dalloc<u16>(b.n), b.dk = dalloc<u16>(b.n), b.dv = dalloc<u16>(b.n);
    const size_t rows = (size_t)batch * heads * tokens;
    b.lse = dalloc<float>(rows), b.delta = dalloc<float>(rows);
    const Mask t = transpose(m);
    b.indptr = dalloc<u32>(m.indptr.size()), b.indices = dalloc<u32>(m.indices.size());
    b.t_indptr = dalloc<u32>(t.indptr.size()), b.t_indices = dalloc<u32>(t.indices.size());
    b.n_acc = (size_t)batch * heads * ((tokens + 63) / 64) * 64 * D;
    b.t_rank = dalloc<u32>(t.rank.size()), b.dq_accum = dalloc<float>(b.n_acc);
    b.turns = (size_t)batch * heads * ((tokens + 63) / 64) * (D / 64);
    b.dq_turns = dalloc<u32>(b.turns);
    CK(cudaMemcpy(b.indptr, m.indptr.data(), m.indptr.size() * 4, cudaMemcpyHostToDevice));
    if (!m.indices.empty()) CK(cudaMemcpy(b.indices, m.indices.data(), m.indices.size() * 4, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(b.t_indptr, t.indptr.data(), t.indptr.size() * 4, cudaMemcpyHostToDevice));
    if (!t.indices.empty()) {
        CK(cudaMemcpy(b.t_indices, t.indices.data(), t.indices.size() * 4, cudaMemcpyHostToDevice));
        CK(cudaMemcpy(b.t_rank, t.rank.data(), t.rank.size() * 4, cudaMemcpyHostToDevice));
    }
    b.a = BwdArgs{b.q,        b.k,         b.v,      b.o,       b.d_o,      b.lse,    b.delta,
                  b.dq,       b.dk,        b.dv,     b.indptr,  b.indices,  b.t_indptr, b.t_indices,
                  b.dq_accum, b.dq_turns,  b.t_rank, batch,     tokens,     heads,    1.0f / sqrtf((float)D)};
    return b;
}

static void free_bufs(Bufs& b) {
    for (void* p : {(void*)b.q, (void*)b.k, (void*)b.v, (void*)b.o, (void*)b.d_o, (void*)b.dq, (void*)b.dk,
                    (void*)b.dv, (void*)b.lse, (void*)b.delta, (void*)b.indptr, (void*)b.indices, (void*)b.t_indptr,
                    (void*)b.t_indices, (void*)b.t_rank, (void*)b.dq_accum, (void*)b.dq_turns})
        cudaFree(p);
}

template <class T>
static std::vector<T> fetch(const T* d, size_t n) {
    std::vector<T> h(n);
    CK(cudaMemcpy(h.data(), d, n * sizeof(T), cudaMemcpyDeviceToHost));
    return h;
}

#if FUSED
// The fused pass of `mode` (above) alone: unit 13, 14, 16 or 17.
static void fused_pass(const BwdArgs& a, int mode, cudaStream_t st) {
    void (*const passes[4])(const BwdArgs&, cudaStream_t) = {bwd_launch_13, bwd_launch_14,
#if WRITER
                                                             bwd_launch_16, bwd_launch_17
#else
                                                             nullptr, nullptr
#endif
    };
    passes[mode](a, st);
}
// The fused pass: zero dq_accum (and the turn counters), then the pass, then the conversion (15,
// or 18 for the writer's tiled dq_accum).
static void fused_launch(const Bufs& b, int mode, cudaStream_t st) {
    CK(cudaMemsetAsync(b.dq_accum, 0, b.n_acc * 4, st));
    if (mode_deterministic(mode)) CK(cudaMemsetAsync(b.dq_turns, 0, b.turns * 4, st));
    fused_pass(b.a, mode, st);
#if WRITER
    if (mode >= 2) return bwd_launch_18(b.a, st);
#endif
    bwd_launch_15(b.a, st);
}
#endif

// Relative L2 error of `got` against `ref` over the rows < tokens (NaN counts as infinite).
static double rel_l2(const std::vector<u16>& got, const std::vector<double>& ref) {
    double num = 0, den = 0;
    for (size_t i = 0; i < ref.size(); ++i) {
        const double g = h2f(got[i]);
        if (!std::isfinite(g)) return INFINITY;
        num += (g - ref[i]) * (g - ref[i]);
        den += ref[i] * ref[i];
    }
    return sqrt(num / std::max(den, 1e-30));
}
static std::vector<double> to_f64(const std::vector<u16>& x) {
    std::vector<double> r(x.size());
    for (size_t i = 0; i < x.size(); ++i) r[i] = h2f(x[i]);
    return r;
}

// A random mask: block row r attends r, and each other block with probability 1/3; key block
// `dead` (if >= 0) is attended by nobody; row `one` has one block; row `empty` none.
static Mask random_mask(int nb, std::mt19937& rng, int dead, int one, int empty) {
    Mask m;
    m.nb = nb;
    m.indptr.push_back(0);
    for (int r = 0; r < nb; ++r) {
        if (r == empty) {
            m.indptr.push_back((u32)m.indices.size());
            continue;
        }
        if (r == one) {
            int c = (r + 1) % nb;
            if (c == dead) c = (c + 1) % nb;
            m.indices.push_back(c);
        } else {
            for (int c = 0; c < nb; ++c)
                if (c != dead && (c == r || rng() % 3 == 0)) m.indices.push_back(c);
        }
        m.indptr.push_back((u32)m.indices.size());
    }
    return m;
}

static int check_case(int batch, int tokens, int heads, int seed, int dead, int one, int empty) {
    std::mt19937 rng(seed);
    const int nb = (tokens + BLK - 1) / BLK;
    const Mask m = random_mask(nb, rng, dead, one, empty);
    const size_t n = (size_t)batch * tokens * heads * D;
    std::vector<u16> q(n), k(n), v(n), d_o(n), o(n);
    std::uniform_real_distribution<float> u(-1.f, 1.f);
    for (size_t i = 0; i < n; ++i) q[i] = f2h(2 * u(rng)), k[i] = f2h(2 * u(rng)), v[i] = f2h(u(rng)), d_o[i] = f2h(u(rng));
    const double scale = 1.0 / sqrt((double)D);
    auto at = [&](const std::vector<u16>& x, int b, int t, int h, int c) {
        return (double)h2f(x[(((size_t)b * tokens + t) * heads + h) * D + c]);
    };
    // f64 reference: forward (o rounded to 16 bits, lse), then the backward.
    const size_t rows = (size_t)batch * heads * tokens;
    std::vector<float> lse(rows);
    std::vector<double> rdq(n, 0.0), rdk(n, 0.0), rdv(n, 0.0);
    std::vector<double> s, p, dp;
    for (int b = 0; b < batch; ++b)
        for (int h = 0; h < heads; ++h) {
            std::vector<double> delta(tokens, 0.0);
            std::vector<std::vector<int>> keys_of(tokens);
            std::vector<std::vector<double>> probs(tokens);
            for (int t = 0; t < tokens; ++t) {
                const int r = t / BLK;
                std::vector<int>& keys = keys_of[t];
                for (u32 i = m.indptr[r]; i < m.indptr[r + 1]; ++i)
                    for (int j = m.indices[i] * BLK; j < std::min(tokens, (int)(m.indices[i] + 1) * BLK); ++j)
                        keys.push_back(j);
                s.assign(keys.size(), 0.0);
                double mx = -INFINITY;
                for (size_t i = 0; i < keys.size(); ++i) {
                    double dot = 0;
                    for (int c = 0; c < D; ++c) dot += at(q, b, t, h, c) * at(k, b, keys[i], h, c);
                    s[i] = dot * scale;
                    mx = std::max(mx, s[i]);
                }
                double l = 0;
                for (double x : s) l += exp(x - mx);
                lse[((size_t)b * heads + h) * tokens + t] = keys.empty() ? -INFINITY : (float)(mx + log(l));
                probs[t].resize(keys.size());
                for (size_t i = 0; i < keys.size(); ++i) probs[t][i] = exp(s[i] - mx) / l;
                for (int c = 0; c < D; ++c) {
                    double acc = 0;
                    for (size_t i = 0; i < keys.size(); ++i) acc += probs[t][i] * at(v, b, keys[i], h, c);
                    o[(((size_t)b * tokens + t) * heads + h) * D + c] = f2h((float)acc);
                }
                for (int c = 0; c < D; ++c) delta[t] += at(d_o, b, t, h, c) * at(o, b, t, h, c);
            }
            for (int t = 0; t < tokens; ++t) {
                const std::vector<int>& keys = keys_of[t];
                for (size_t i = 0; i < keys.size(); ++i) {
                    double dpv = 0;
                    for (int c = 0; c < D; ++c) dpv += at(d_o, b, t, h, c) * at(v, b, keys[i], h, c);
                    const double pv = probs[t][i];
                    const double ds = pv * (dpv - delta[t]);
                    for (int c = 0; c < D; ++c) {
                        rdq[(((size_t)b * tokens + t) * heads + h) * D + c] += scale * ds * at(k, b, keys[i], h, c);
                        rdk[(((size_t)b * tokens + keys[i]) * heads + h) * D + c] += scale * ds * at(q, b, t, h, c);
                        rdv[(((size_t)b * tokens + keys[i]) * heads + h) * D + c] += pv * at(d_o, b, t, h, c);
                    }
                }
            }
        }
    Bufs bf = make_bufs(batch, tokens, heads, m);
    CK(cudaMemcpy(bf.q, q.data(), n * 2, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(bf.k, k.data(), n * 2, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(bf.v, v.data(), n * 2, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(bf.o, o.data(), n * 2, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(bf.d_o, d_o.data(), n * 2, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(bf.lse, lse.data(), rows * 4, cudaMemcpyHostToDevice));
    auto nan_fill = [&]() {
        CK(cudaMemset(bf.dq, 0xff, n * 2));
        CK(cudaMemset(bf.dk, 0xff, n * 2));
        CK(cudaMemset(bf.dv, 0xff, n * 2));
    };
    nan_fill();
    bwd_launch_0(bf.a, 0);
    bwd_launch_1(bf.a, 0);
    bwd_launch_2(bf.a, 0);
    CK(cudaGetLastError());
    CK(cudaDeviceSynchronize());
    const auto odq = fetch(bf.dq, n), odk = fetch(bf.dk, n), odv = fetch(bf.dv, n);
    nan_fill();
    bwd_launch_11(bf.a, 0);
    bwd_launch_12(bf.a, 0);
    CK(cudaGetLastError());
    CK(cudaDeviceSynchronize());
    const auto ndq = fetch(bf.dq, n), ndk = fetch(bf.dk, n), ndv = fetch(bf.dv, n);
#if FUSED
    // [mode][run]: the fused pass's gradients (atomic modes once, deterministic twice).
    std::vector<u16> fdq[4][2], fdk[4], fdv[4];
    std::vector<float> facc[4][2];
    int bad_turns[4] = {0, 0, 0, 0};
    for (int mode = 0; mode < FUSED_MODES; ++mode) {
        const bool det = mode_deterministic(mode);
        std::vector<u32> turns;
        for (int run = 0; run < 1 + det; ++run) {
            nan_fill();
            fused_launch(bf, mode, 0);
            CK(cudaGetLastError());
            CK(cudaDeviceSynchronize());
            fdq[mode][run] = fetch(bf.dq, n);
            if (run == 0) fdk[mode] = fetch(bf.dk, n), fdv[mode] = fetch(bf.dv, n);
            if (det) facc[mode][run] = fetch(bf.dq_accum, bf.n_acc);
            if (det && run == 0) turns = fetch(bf.dq_turns, bf.turns);
        }
        // The deterministic modes' counters end at the number of key blocks of each query
        // tile's mask row.
        for (size_t i = 0; i < turns.size(); ++i) {
            const size_t tile = i / (D / 64) % ((tokens + 63) / 64);
            const int qb = (int)(tile * 64 / BLK);
            bad_turns[mode] += turns[i] != m.indptr[qb + 1] - m.indptr[qb];
        }
    }
#endif
    free_bufs(bf);

    const double e_ref[3] = {rel_l2(ndq, rdq), rel_l2(ndk, rdk), rel_l2(ndv, rdv)};
    const double e_old_ref[3] = {rel_l2(odq, rdq), rel_l2(odk, rdk), rel_l2(odv, rdv)};
    const double e_old[3] = {rel_l2(ndq, to_f64(odq)), rel_l2(ndk, to_f64(odk)), rel_l2(ndv, to_f64(odv))};
    int dead_nonzero = 0;
    if (dead >= 0)
        for (int b = 0; b < batch; ++b)
            for (int t = dead * BLK; t < std::min(tokens, (dead + 1) * BLK); ++t)
                for (int h = 0; h < heads; ++h)
                    for (int c = 0; c < D; ++c) {
                        const size_t i = (((size_t)b * tokens + t) * heads + h) * D + c;
                        dead_nonzero += ndk[i] != 0 || ndv[i] != 0;
                    }
    const double tol = ELEM_BF16 ? 2e-2 : 5e-3;
    bool ok = dead_nonzero == 0;
    for (int i = 0; i < 3; ++i) ok = ok && e_ref[i] <= tol && e_old[i] <= tol;
    printf("  check b%d t%d h%d dead %d one %d empty %d: rel L2 vs f64 dq %.2e dk %.2e dv %.2e (mma.sync %.2e %.2e "
           "%.2e); vs mma.sync %.2e %.2e %.2e; dead block nonzero %d: %s\n",
           batch, tokens, heads, dead, one, empty, e_ref[0], e_ref[1], e_ref[2], e_old_ref[0], e_old_ref[1],
           e_old_ref[2], e_old[0], e_old[1], e_old[2], dead_nonzero, ok ? "ok" : "FAIL");
#if FUSED
    bool fused_ok = true;
    for (int mode = 0; mode < FUSED_MODES; ++mode) {
        const bool det = mode_deterministic(mode);
        const double f_ref[3] = {rel_l2(fdq[mode][0], rdq), rel_l2(fdk[mode], rdk), rel_l2(fdv[mode], rdv)};
        const double f_old[3] = {rel_l2(fdq[mode][0], to_f64(odq)), rel_l2(fdk[mode], to_f64(odk)),
                                 rel_l2(fdv[mode], to_f64(odv))};
        const bool dkdv_same = fdk[mode] == ndk && fdv[mode] == ndv;
        bool ok_mode = dkdv_same;
        for (int i = 0; i < 3; ++i) ok_mode = ok_mode && f_ref[i] <= tol && f_old[i] <= tol;
        const bool repeat = !det || (fdq[mode][0] == fdq[mode][1] && facc[mode][0] == facc[mode][1]);
        ok_mode = ok_mode && repeat && (!det || bad_turns[mode] == 0);
        printf("    fused %-13s: rel L2 vs f64 dq %.2e dk %.2e dv %.2e; vs mma.sync %.2e %.2e %.2e; dk/dv bitwise "
               "= two-pass wgmma: %s",
               FUSED_MODE_NAMES[mode], f_ref[0], f_ref[1], f_ref[2], f_old[0], f_old[1], f_old[2],
               dkdv_same ? "yes" : "NO");
        if (det)
            printf("; dq bitwise equal over 2 runs: %s; turn counters wrong: %d", repeat ? "yes" : "NO",
                   bad_turns[mode]);
        printf(": %s\n", ok_mode ? "ok" : "FAIL");
        fused_ok = fused_ok && ok_mode;
    }
    ok = ok && fused_ok;
#endif
    return ok ? 0 : 1;
}

static float time_ms(void (*f)(const BwdArgs&, cudaStream_t), const BwdArgs& a) {
    return median_launch_ms([&] { f(a, 0); });
}

static void time_mask(const char* name, const Mask& m, int tokens, int heads) {
    Bufs bf = make_bufs(1, tokens, heads, m);
    fill_half<<<1024, 256>>>(bf.q, bf.n, 1, 1.0f, ELEM_BF16);
    fill_half<<<1024, 256>>>(bf.k, bf.n, 2, 1.0f, ELEM_BF16);
    fill_half<<<1024, 256>>>(bf.v, bf.n, 3, 1.0f, ELEM_BF16);
    fill_half<<<1024, 256>>>(bf.o, bf.n, 4, 0.1f, ELEM_BF16);
    fill_half<<<1024, 256>>>(bf.d_o, bf.n, 5, 1.0f, ELEM_BF16);
    std::vector<float> lse((size_t)heads * tokens, 6.0f);
    CK(cudaMemcpy(bf.lse, lse.data(), lse.size() * 4, cudaMemcpyHostToDevice));
    bwd_launch_0(bf.a, 0);
    CK(cudaDeviceSynchronize());
    const double pairs = (double)m.indices.size() * BLK * BLK * heads;
    const double mm = 2.0 * pairs * D;  // flops of one matmul over the attended pairs
    // ONLY_FUSED=1: the fused passes alone (the two-pass kernels are not timed; their rows read 1).
    const bool only_fused = getenv("ONLY_FUSED") != nullptr;
    const float t_delta = time_ms(bwd_launch_0, bf.a);
    const float t1o = only_fused ? 1.0f : time_ms(bwd_launch_1, bf.a), t2o = only_fused ? 1.0f : time_ms(bwd_launch_2, bf.a);
    const float t1n = only_fused ? 1.0f : time_ms(bwd_launch_11, bf.a), t2n = only_fused ? 1.0f : time_ms(bwd_launch_12, bf.a);
    printf("TIME %-7s D%d %s tokens %d heads %d nnz %zu (density %.3f): delta %.3f ms\n", name, D,
           ELEM_BF16 ? "bf16" : "f16", tokens, heads, m.indices.size(),
           (double)m.indices.size() / ((double)m.nb * m.nb), t_delta);
    printf("  mma.sync dkdv %8.3f ms %6.1f TFLOPS | dq %8.3f ms %6.1f TFLOPS | both %6.1f (bwd-equiv %6.1f)\n", t1o,
           4 * mm / t1o / 1e9, t2o, 3 * mm / t2o / 1e9, 7 * mm / (t1o + t2o) / 1e9, 5 * mm / (t1o + t2o) / 1e9);
    printf("  wgmma    dkdv %8.3f ms %6.1f TFLOPS | dq %8.3f ms %6.1f TFLOPS | both %6.1f (bwd-equiv %6.1f)  "
           "speedup %.2fx\n",
           t1n, 4 * mm / t1n / 1e9, t2n, 3 * mm / t2n / 1e9, 7 * mm / (t1n + t2n) / 1e9, 5 * mm / (t1n + t2n) / 1e9,
           (t1o + t2o) / (t1n + t2n));
#if FUSED
    // The fused pass alone (dq_accum not re-zeroed between the timed launches: the atomic adds
    // cost the same; the deterministic counters are re-zeroed, else the turns never come), and
    // with the zeroing and the conversion: the figure to compare with the two tile passes.
    static const char* const labels[4] = {"fused    atomic", "fused    determ", "fused-w  atomic", "fused-w  determ"};
    for (int mode = 0; mode < FUSED_MODES; ++mode) {
        if (only_fused && mode != FUSED_MODES - 2) continue;  // fused-w atomic only
        const float tf = median_launch_ms([&] {
            if (mode_deterministic(mode)) CK(cudaMemsetAsync(bf.dq_turns, 0, bf.turns * 4, 0));
            fused_pass(bf.a, mode, 0);
        });
        const float tfa = median_launch_ms([&] { fused_launch(bf, mode, 0); });
        printf("  %s %8.3f ms %6.1f TFLOPS (with zeroing + conversion %8.3f ms, bwd-equiv %6.1f, %.2fx the "
               "two wgmma passes)\n",
               labels[mode], tf, 5 * mm / tf / 1e9, tfa, 5 * mm / tfa / 1e9, (t1n + t2n) / tfa);
    }
#endif
    free_bufs(bf);
}

int main(int argc, char** argv) {
    if (argc >= 2 && !strcmp(argv[1], "--check")) {
        int fails = 0;
        fails += check_case(1, 300, 2, 1, 1, 2, -1);    // partial last block, dead key block 1, row 2 one block
        fails += check_case(2, 1000, 1, 2, 3, 0, 5);    // dead block 3, row 0 one block, row 5 empty
        fails += check_case(1, 128, 1, 3, -1, -1, -1);  // one full block
        fails += check_case(1, 129, 2, 4, -1, 1, -1);   // a last block of one token, attending one block
        fails += check_case(1, 700, 3, 5, 5, 4, -1);    // the last block (60 tokens) dead
        printf("CHECKS %s (D %d, %s)\n", fails ? "FAILED" : "passed", D, ELEM_BF16 ? "bf16" : "f16");
        return fails ? 1 : 0;
    }
    if (argc >= 5 && !strcmp(argv[1], "--time")) {
        const int tokens = atoi(argv[2]), heads = atoi(argv[3]);
        const double density = atof(argv[4]);
        const int nb = (tokens + BLK - 1) / BLK;
        std::mt19937 rng(7);
        Mask m;
        m.nb = nb;
        m.indptr.push_back(0);
        for (int r = 0; r < nb; ++r) {
            for (int c = 0; c < nb; ++c)
                if (c == r || std::uniform_real_distribution<double>(0, 1)(rng) < density) m.indices.push_back(c);
            m.indptr.push_back((u32)m.indices.size());
        }
        time_mask("random", m, tokens, heads);
        if (!getenv("NO_DENSE")) {
            Mask dense;
            dense.nb = nb;
            dense.indptr.push_back(0);
            for (int r = 0; r < nb; ++r) {
                for (int c = 0; c < nb; ++c) dense.indices.push_back(c);
                dense.indptr.push_back((u32)dense.indices.size());
            }
            time_mask("dense", dense, tokens, heads);
        }
        return 0;
    }
    fprintf(stderr, "usage: %s --check | --time TOKENS HEADS DENSITY\n", argv[0]);
    return 2;
}
