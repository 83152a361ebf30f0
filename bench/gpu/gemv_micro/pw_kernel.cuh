// Experimental: the persistent-warp NF4 GEMVs measured by gemv_micro.cu in session 10 (not used
// by the engine: slower than kernels/nf4.cu's GEMVs on every Mistral-7B part; see
// docs/BENCHMARKS.md, "Session 10"). Included after kernels/nf4.cu.
// ---------------------------------------------------------------- persistent-warp GEMV (one row of x)
// The GEMVs above run one short-lived block per few rows: at Mistral-7B's k = 4096 each warp
// reads one 512-byte step of each row, so a block is a chain of latencies (block scales, the
// wait, the weights, the reductions) and the PC samples (session 7) found 41% of warps waiting
// on global loads, 29% at the wait and the barrier, 4.5% issuing. Here each warp owns a
// contiguous range of row groups (PW_NRO output rows; the GLU's are PW_NRO / 2 gate rows with
// the matching up rows) and streams them as one pipeline of steps (a step: 16 bytes a lane of
// each of its 4 weight rows, with their block scales' q byte and nested absmax):
//  * the next step's loads are issued before the current step's arithmetic, across group ends;
//  * at the start of each group, lane 0 asks L2 for the group PW_PD ahead (weights and q bytes,
//    one bulk prefetch each), so DRAM streams while the registers wait only on L2;
//  * the first groups' prefetches and the first step's loads go out before the programmatic
//    launch wait (the weights do not depend on the previous kernel);
//  * no block barrier: each warp reduces its rows with shuffles and writes them.
// The arithmetic per step is dot_rows_w's with W = 4 (32 weights a lane, 8 products per word in
// f32, times the block scale into the row's sum); the sums are reduced in another order.
// Needs (the micro-benchmark's shapes meet it; nothing checks it): one row of x, k % 32 == 0,
// blocksize >= 32, every segment with the same blocksize, nested blocksize and dq, segment rows
// a multiple of the group's rows, packed rows 16-byte aligned; pwa also k / blocksize % 4 == 0.
#ifndef PW_NR
#define PW_NR 4
#endif
#ifndef PW_PD
#define PW_PD 1
#endif
struct PwBuf {
    uint32_t w[PW_NR][4];
    uint32_t q[PW_NR];
    float nv[PW_NR];
};
// The weight rows of group g: rows r0 .. r0 + PW_NR of segment si (multi), or gate rows and
// up rows (GLU: segment 0 and 1, PW_NR / 2 each); `lr0` is the first row inside the segment.
template <bool GLU>
__device__ __forceinline__ void pw_group(const Nf4Multi& p, unsigned g, unsigned* si, unsigned* lr0) {
    if (GLU) { *si = 0; *lr0 = g * (PW_NR / 2); return; }
    *si = locate(p, g * PW_NR, lr0);
}
template <bool GLU>
__device__ __forceinline__ const Nf4Seg& pw_seg(const Nf4Multi& p, unsigned si, int r) {
    return GLU ? p.seg[r < PW_NR / 2 ? 0 : 1] : p.seg[si];
}
template <bool GLU>
__device__ __forceinline__ unsigned pw_row(unsigned lr0, int r) {
    return GLU ? lr0 + (r % (PW_NR / 2)) : lr0 + r;
}
#ifndef PW_PFL
#define PW_PFL 0
#endif
// Asks L2 for `bytes` at p: lane 0's bulk prefetch, or (PW_PFL) one line prefetch a lane per 128 bytes.
__device__ __forceinline__ void pw_prefetch_l2(const uint8_t* p, unsigned bytes) {
    const unsigned lane = threadIdx.x & 31u;
    if (PW_PFL) {
        for (unsigned o = lane * 128u; o < bytes; o += 32u * 128u) asm volatile("prefetch.global.L2 [%0];" ::"l"(p + o));
    } else if (lane == 0) {
        prefetch_l2(p, bytes);
    }
}
// The warp: group g's weight rows and q bytes into L2.
template <bool GLU>
__device__ __forceinline__ void pw_prefetch(const Nf4Multi& p, unsigned g, unsigned rb, unsigned kb) {
    unsigned si, lr0;
    pw_group<GLU>(p, g, &si, &lr0);
    constexpr int NP = GLU ? 2 : 1, RP = PW_NR / NP;
#pragma unroll
    for (int h = 0; h < NP; h++) {
        const Nf4Seg& s = pw_seg<GLU>(p, si, h * RP);
        pw_prefetch_l2(s.packed + (size_t)lr0 * rb, RP * rb);
        if (s.dq) {
            const size_t q0 = (size_t)lr0 * kb, q1 = q0 + RP * kb;
            const size_t a0 = q0 & ~(size_t)15, a1 = (q1 + 15) & ~(size_t)15;
            pw_prefetch_l2(s.q + a0, (unsigned)(a1 - a0));
        }
    }
}
template <bool GLU>
__device__ __forceinline__ void pw_issue(const Nf4Multi& p, unsigned g, unsigned step, unsigned rb, unsigned kb, PwBuf& b) {
    const unsigned lane = threadIdx.x & 31u, off = step * 512u + lane * 16u;
    unsigned si, lr0;
    pw_group<GLU>(p, g, &si, &lr0);
#pragma unroll
    for (int r = 0; r < PW_NR; r++) {
        const Nf4Seg& s = pw_seg<GLU>(p, si, r);
        const unsigned row = pw_row<GLU>(lr0, r);
        if (off < rb) {
            ld_stream<4>(s.packed + (size_t)row * rb + off, b.w[r]);
            const size_t blk = (size_t)row * kb + ((off * 2u) >> s.bs_log2);
            if (s.dq) {
                b.q[r] = __ldg(s.q + blk);
                b.nv[r] = __ldg(s.nested + (blk >> s.nbs_log2));
            } else {
                b.q[r] = 0u;
                b.nv[r] = __ldg(s.absmax + blk);
            }
        }
    }
}
// A step's arithmetic (dot_rows_w's with W = 4): pr[r] = the lane's 32 weights of row r (words
// w[r]) times x[e .. e + 32).
template <typename T>
__device__ __forceinline__ void pw_dot(const uint32_t (&w)[PW_NR][4], const T* __restrict__ x, unsigned e, const float* s_code,
                                       float (&pr)[PW_NR]) {
#pragma unroll
    for (int r = 0; r < PW_NR; r++) pr[r] = 0.f;
#pragma unroll
    for (int j = 0; j < 4; j++) {
        float xv[8];
        load_x8(x + e + 8u * j, xv);
#pragma unroll
        for (int r = 0; r < PW_NR; r++) {
            const uint32_t hi = (w[r][j] >> 2) & 0x3c3c3c3cu, lo = (w[r][j] << 2) & 0x3c3c3c3cu;
#pragma unroll
            for (int q = 0; q < 4; q++) {
                pr[r] = fmaf(code_at(s_code, __byte_perm(hi, 0u, 0x4440u + q)), xv[2 * q], pr[r]);
                pr[r] = fmaf(code_at(s_code, __byte_perm(lo, 0u, 0x4440u + q)), xv[2 * q + 1], pr[r]);
            }
        }
    }
}
template <typename T, bool GLU>
__device__ __forceinline__ void pw_compute(const Nf4Multi& p, unsigned g, unsigned step, unsigned rb, const T* __restrict__ x,
                                           const float* s_code, const float* s_ncode, const PwBuf& b, float (&acc)[PW_NR]) {
    const unsigned lane = threadIdx.x & 31u, off = step * 512u + lane * 16u;
    if (off >= rb) return;
    unsigned si, lr0;
    pw_group<GLU>(p, g, &si, &lr0);
    const unsigned e = off * 2u;
    float pr[PW_NR];
    pw_dot<T>(b.w, x, e, s_code, pr);
#pragma unroll
    for (int r = 0; r < PW_NR; r++) {
        const Nf4Seg& s = pw_seg<GLU>(p, si, r);
        const float sc = s.dq ? __fadd_rn(__fmul_rn(s_ncode[b.q[r]], b.nv[r]), s.offset) : b.nv[r];
        acc[r] = fmaf(sc, pr[r], acc[r]);
    }
}
// Group g's sums (acc, per lane) reduced and written: y[col0 + row] (multi) or the GLU's product.
template <typename T, bool GLU>
__device__ __forceinline__ void pw_finish(const Nf4Multi& p, int act, unsigned g, T* __restrict__ y, float (&acc)[PW_NR]) {
    const unsigned lane = threadIdx.x & 31u;
#pragma unroll
    for (int r = 0; r < PW_NR; r++) acc[r] = warp_sum_bfly(acc[r]);
    unsigned si, lr0;
    pw_group<GLU>(p, g, &si, &lr0);
    constexpr int NRO = GLU ? PW_NR / 2 : PW_NR;
    if (lane < NRO) {
        float v = 0.f, u = 0.f;
#pragma unroll
        for (int r = 0; r < NRO; r++)
            if (lane == (unsigned)r) { v = acc[r]; if (GLU) u = acc[NRO + r]; }
        const unsigned row = lr0 + lane;
        if (GLU) {
            if (row < p.ntotal) {
                const float a = round_t<T>(glu_act(round_t<T>(with_bias<T>(p.seg[0], row, v)), act));
                y[row] = from_f32<T>(__fmul_rn(a, round_t<T>(with_bias<T>(p.seg[1], row, u))));
            }
        } else {
            const Nf4Seg& s = p.seg[si];
            if (row < s.rows) y[s.col0 + row] = from_f32<T>(with_bias<T>(s, row, v));
        }
    }
#pragma unroll
    for (int r = 0; r < PW_NR; r++) acc[r] = 0.f;
}
// GLU: p.seg[0] is the gate, p.seg[1] the up, p.ntotal their rows (n).
template <typename T, bool GLU>
__device__ void gemv_pw_impl(const Nf4Multi& p, int act, const T* __restrict__ x, T* __restrict__ y, unsigned k) {
    constexpr unsigned NRO = GLU ? PW_NR / 2 : PW_NR;
    __shared__ float s_code[16];
    __shared__ float s_ncode[256];
    for (unsigned i = threadIdx.x; i < TABLE_LEN; i += blockDim.x) {
        const float v = p.tables[i];
        if (i < 16) s_code[i] = v; else s_ncode[i - 16] = v;
    }
    const unsigned lane = threadIdx.x & 31u, wpb = blockDim.x >> 5;
    const unsigned gw = blockIdx.x * wpb + (threadIdx.x >> 5), nw = gridDim.x * wpb;
    (void)lane;
    const unsigned rb = k >> 1, kb = k >> p.seg[0].bs_log2, spr = (rb + 511u) >> 9;
    const unsigned ngroups = (p.ntotal + NRO - 1u) / NRO;
    const unsigned g0 = (unsigned)(((unsigned long long)ngroups * gw) / nw);
    const unsigned g1 = (unsigned)(((unsigned long long)ngroups * (gw + 1)) / nw);
    for (unsigned g = g0; g < g1 && g < g0 + 1u + PW_PD; g++) pw_prefetch<GLU>(p, g, rb, kb);
    PwBuf a, b;
    float acc[PW_NR];
#pragma unroll
    for (int r = 0; r < PW_NR; r++) acc[r] = 0.f;
    // Items (group, step) in order; `a` holds item i, `b` item i + 1.
    unsigned ig = g0, is = 0;  // the next item to issue
    auto advance = [&](unsigned& g, unsigned& s) { if (++s == spr) { s = 0; g++; if (g + PW_PD < g1) pw_prefetch<GLU>(p, g + PW_PD, rb, kb); } };
    if (ig < g1) { pw_issue<GLU>(p, ig, is, rb, kb, a); advance(ig, is); }
    pdl_wait();
    pdl_launch_dependents();
    __syncthreads();  // the tables
    unsigned cg = g0, cs = 0;  // the item to compute
    while (cg < g1) {
        if (ig < g1) { pw_issue<GLU>(p, ig, is, rb, kb, b); advance(ig, is); }
        pw_compute<T, GLU>(p, cg, cs, rb, x, s_code, s_ncode, a, acc);
        if (++cs == spr) { pw_finish<T, GLU>(p, act, cg, y, acc); cs = 0; cg++; }
        if (cg >= g1) break;
        if (ig < g1) { pw_issue<GLU>(p, ig, is, rb, kb, a); advance(ig, is); }
        pw_compute<T, GLU>(p, cg, cs, rb, x, s_code, s_ncode, b, acc);
        if (++cs == spr) { pw_finish<T, GLU>(p, act, cg, y, acc); cs = 0; cg++; }
    }
}
#ifndef PW_MINB
#define PW_MINB 4
#endif
// The stacked and the gated entries of one persistent kernel (NAME: pw or pwa).
#define GEMV_PW_ENTRIES(T, SUFFIX, NAME, MINB)                                                          \
    extern "C" __global__ void __launch_bounds__(GW * 32, MINB) nf4_gemv_##NAME##_##SUFFIX(              \
        Nf4Multi p, const T* x, T* y, unsigned k) {                                                      \
        gemv_##NAME##_impl<T, false>(p, 0, x, y, k);                                                     \
    }                                                                                                    \
    extern "C" __global__ void __launch_bounds__(GW * 32, MINB) nf4_gemv_##NAME##_glu_##SUFFIX(          \
        Nf4Multi p, int act, const T* x, T* y, unsigned k) {                                             \
        gemv_##NAME##_impl<T, true>(p, act, x, y, k);                                                    \
    }
GEMV_PW_ENTRIES(float, f32, pw, PW_MINB) GEMV_PW_ENTRIES(__nv_bfloat16, bf16, pw, PW_MINB) GEMV_PW_ENTRIES(__half, f16, pw, PW_MINB)
// ---- persistent warps fed by cp.async (PWA): each warp streams its steps through a ring of
// PWA_D stages of its own shared memory (weights, the block scales' q bytes or absmax, and the
// nested absmax values the step needs), so PWA_D - 1 steps are in flight without registers.
#ifndef PWA_D
#define PWA_D 4
#endif
#define PWA_SLOT 656  // a row's step: 512 weight bytes, up to 128 scale bytes, 2 nested values
__device__ __forceinline__ void cp_async16(void* dst, const void* src) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"((uint32_t)__cvta_generic_to_shared(dst)), "l"(src) : "memory");
}
__device__ __forceinline__ void cp_async4(void* dst, const void* src) {
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4;" ::"r"((uint32_t)__cvta_generic_to_shared(dst)), "l"(src) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
template <int N> __device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory"); }

template <bool GLU>
__device__ __forceinline__ void pwa_issue(const Nf4Multi& p, unsigned g, unsigned step, unsigned rb, unsigned kb, uint8_t* stage) {
    const unsigned lane = threadIdx.x & 31u, off = step * 512u + lane * 16u;
    unsigned si, lr0;
    pw_group<GLU>(p, g, &si, &lr0);
#pragma unroll
    for (int r = 0; r < PW_NR; r++) {
        const Nf4Seg& s = pw_seg<GLU>(p, si, r);
        const unsigned row = pw_row<GLU>(lr0, r);
        uint8_t* slot = stage + r * PWA_SLOT;
        if (off < rb) cp_async16(slot + lane * 16u, s.packed + (size_t)row * rb + off);
        const unsigned bps = 1024u >> s.bs_log2;  // scale blocks a step
        const size_t b0 = (size_t)row * kb + step * bps;
        if (s.dq) {
            const unsigned words = bps >> 2;  // q bytes, 4 a lane (host: kb % 4 == 0)
            if (lane < words) {
                if (step * bps + lane * 4u < kb) cp_async4(slot + 512u + lane * 4u, s.q + b0 + lane * 4u);
            } else if (lane < words + 2u) {
                const size_t nmax = ((size_t)s.rows * kb - 1u) >> s.nbs_log2;
                const size_t n = (b0 >> s.nbs_log2) + (lane - words);
                if (n <= nmax) cp_async4(slot + 640u + (lane - words) * 4u, s.nested + n);
            }
        } else if (lane < bps && step * bps + lane < kb) {
            cp_async4(slot + 512u + lane * 4u, s.absmax + b0 + lane);
        }
    }
}
template <typename T, bool GLU>
__device__ __forceinline__ void pwa_compute(const Nf4Multi& p, unsigned g, unsigned step, unsigned rb, unsigned kb, const T* __restrict__ x,
                                            const float* s_code, const float* s_ncode, const uint8_t* stage, float (&acc)[PW_NR]) {
    const unsigned lane = threadIdx.x & 31u, off = step * 512u + lane * 16u;
    if (off >= rb) return;
    unsigned si, lr0;
    pw_group<GLU>(p, g, &si, &lr0);
    const unsigned e = off * 2u;
    uint32_t wv[PW_NR][4];
#pragma unroll
    for (int r = 0; r < PW_NR; r++) {
        const uint4 v = *reinterpret_cast<const uint4*>(stage + r * PWA_SLOT + lane * 16u);
        wv[r][0] = v.x; wv[r][1] = v.y; wv[r][2] = v.z; wv[r][3] = v.w;
    }
    float pr[PW_NR];
    pw_dot<T>(wv, x, e, s_code, pr);
#pragma unroll
    for (int r = 0; r < PW_NR; r++) {
        const Nf4Seg& s = pw_seg<GLU>(p, si, r);
        const uint8_t* slot = stage + r * PWA_SLOT;
        const unsigned bi = e >> s.bs_log2;  // the lane's block in the step
        float sc;
        if (s.dq) {
            const unsigned row = pw_row<GLU>(lr0, r), bps = 1024u >> s.bs_log2;
            const size_t b0 = (size_t)row * kb + step * bps - 0u;
            const unsigned rel = (unsigned)(((b0 + (bi - step * bps)) >> s.nbs_log2) - (b0 >> s.nbs_log2));
            sc = __fadd_rn(__fmul_rn(s_ncode[slot[512u + bi - step * bps]], reinterpret_cast<const float*>(slot + 640u)[rel]), s.offset);
        } else {
            sc = reinterpret_cast<const float*>(slot + 512u)[bi - step * (1024u >> s.bs_log2)];
        }
        acc[r] = fmaf(sc, pr[r], acc[r]);
    }
}
template <typename T, bool GLU>
__device__ void gemv_pwa_impl(const Nf4Multi& p, int act, const T* __restrict__ x, T* __restrict__ y, unsigned k) {
    constexpr unsigned NRO = GLU ? PW_NR / 2 : PW_NR;
    __shared__ float s_code[16];
    __shared__ float s_ncode[256];
    __shared__ __align__(16) uint8_t s_ring[GW][PWA_D][PW_NR * PWA_SLOT];
    for (unsigned i = threadIdx.x; i < TABLE_LEN; i += blockDim.x) {
        const float v = p.tables[i];
        if (i < 16) s_code[i] = v; else s_ncode[i - 16] = v;
    }
    const unsigned warp = threadIdx.x >> 5, wpb = blockDim.x >> 5;
    const unsigned gw = blockIdx.x * wpb + warp, nw = gridDim.x * wpb;
    const unsigned rb = k >> 1, kb = k >> p.seg[0].bs_log2, spr = (rb + 511u) >> 9;
    const unsigned ngroups = (p.ntotal + NRO - 1u) / NRO;
    const unsigned g0 = (unsigned)(((unsigned long long)ngroups * gw) / nw);
    const unsigned g1 = (unsigned)(((unsigned long long)ngroups * (gw + 1)) / nw);
    uint8_t (*ring)[PW_NR * PWA_SLOT] = s_ring[warp];
    unsigned ig = g0, is = 0;  // the next item to issue
#pragma unroll
    for (int d = 0; d < PWA_D - 1; d++) {
        if (ig < g1) { pwa_issue<GLU>(p, ig, is, rb, kb, ring[d]); if (++is == spr) { is = 0; ig++; } }
        cp_async_commit();
    }
    float acc[PW_NR];
#pragma unroll
    for (int r = 0; r < PW_NR; r++) acc[r] = 0.f;
    pdl_wait();
    pdl_launch_dependents();
    __syncthreads();  // the tables
    unsigned cg = g0, cs = 0, st = 0;
    while (cg < g1) {
        if (ig < g1) { pwa_issue<GLU>(p, ig, is, rb, kb, ring[st == 0 ? PWA_D - 1 : st - 1]); if (++is == spr) { is = 0; ig++; } }
        cp_async_commit();
        cp_async_wait<PWA_D - 1>();
        __syncwarp();
        pwa_compute<T, GLU>(p, cg, cs, rb, kb, x, s_code, s_ncode, ring[st], acc);
        __syncwarp();
        if (++cs == spr) { pw_finish<T, GLU>(p, act, cg, y, acc); cs = 0; cg++; }
        st = st + 1 == PWA_D ? 0 : st + 1;
    }
}
#ifndef PWA_MINB
#define PWA_MINB 5
#endif
GEMV_PW_ENTRIES(float, f32, pwa, PWA_MINB) GEMV_PW_ENTRIES(__nv_bfloat16, bf16, pwa, PWA_MINB) GEMV_PW_ENTRIES(__half, f16, pwa, PWA_MINB)
