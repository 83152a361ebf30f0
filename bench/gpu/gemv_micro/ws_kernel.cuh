// Experimental: the warp-specialized NF4 GEMV measured by gemv_micro.cu (not used by the engine;
// see docs/BENCHMARKS.md, "GEMV micro-benchmark"). Included after kernels/nf4.cu.
// ---------------------------------------------------------------- warp-specialized GEMV (sm_90, one row of x)
// Decode at batch 1 (measured on an H100 with bench/gpu/gemv_micro): the one-shot blocks above
// spend most of their life in latency chains (block scales, then weights, then a block-wide
// reduction), about 11 weights a clock an SM whatever the weights' source, against about 30
// the inner loop could issue. Here each block is persistent (a contiguous range of tiles, two
// blocks an SM) and split by role:
//  * one producer warp streams tiles into a ring of WS_STAGES stages of shared memory with bulk
//    asynchronous copies (cp.async.bulk, one per weight row, counted on the stage's `full`
//    mbarrier) and, while they fly, resolves the tile's block scales (double quantization
//    included, seg_scale's arithmetic) into the stage, then arrives on `full`;
//  * WS_CW consumer warps each own RW output rows of every tile (a k-part of them when CS = 2)
//    and compute their dot products from shared memory with the W = 4 core's arithmetic (a
//    lane's 32 weights times 32 values of x summed, times the block scale, into the row's sum),
//    reduce them within the warp (with the other k-part through shared memory and a named
//    barrier when CS = 2), write the outputs and arrive on the stage's `empty` mbarrier.
// No block-wide barrier in the loop: a warp waits only for its stage's bytes. The weights and
// scales do not depend on the previous kernel, so the producer starts before the PDL wait;
// the consumers wait before reading x. Host: `ws_plan` in src/cuda/fused.rs (RW, CS by k).
#define WS_CW 8           // consumer warps
#define WS_NEST 128       // nested absmax values a segment's window holds (host-checked)
#ifndef WS_MAX_STAGES
#define WS_MAX_STAGES 6
#endif

__device__ __forceinline__ uint32_t smem_addr(const void* p) { return (uint32_t)__cvta_generic_to_shared(p); }
__device__ __forceinline__ void mbar_init(uint64_t* bar, unsigned count) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(smem_addr(bar)), "r"(count) : "memory");
#endif
}
__device__ __forceinline__ void mbar_init_fence() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
#endif
}
__device__ __forceinline__ void mbar_expect_tx(uint64_t* bar, unsigned bytes) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("mbarrier.expect_tx.relaxed.cta.shared::cta.b64 [%0], %1;" ::"r"(smem_addr(bar)), "r"(bytes) : "memory");
#endif
}
__device__ __forceinline__ void mbar_arrive(uint64_t* bar) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(smem_addr(bar)) : "memory");
#endif
}
__device__ __forceinline__ void mbar_wait(uint64_t* bar, unsigned parity) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile(
        "{\n .reg .pred P;\n WAIT_%=:\n"
        " mbarrier.try_wait.parity.shared::cta.b64 P, [%0], %1;\n"
        " @!P bra WAIT_%=;\n}" ::"r"(smem_addr(bar)), "r"(parity) : "memory");
#endif
}
// `bytes` (a multiple of 16) from global src to shared dst (both 16-byte aligned), counted on bar.
__device__ __forceinline__ void bulk_copy(void* dst, const void* src, unsigned bytes, uint64_t* bar) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];"
                 ::"r"(smem_addr(dst)), "l"(src), "r"(bytes), "r"(smem_addr(bar)) : "memory");
#endif
}
__device__ __forceinline__ void named_sync(unsigned id, unsigned threads) {
    asm volatile("bar.sync %0, %1;" ::"r"(id), "r"(threads) : "memory");
}

// Weight row r (tile-local) of tile t: its segment and row inside it. GLU: rows 0 .. nro are
// the gate's, nro .. 2 nro the up's. Rows past the end repeat the last (same copy sizes; their
// outputs are not written).
template <bool GLU>
__device__ __forceinline__ const Nf4Seg& ws_row(const Nf4Multi& p, unsigned t, unsigned r, unsigned nro, unsigned* lrow) {
    if (GLU) {
        const unsigned o = r < nro ? r : r - nro;
        *lrow = min(t * nro + o, p.ntotal - 1);
        return p.seg[r < nro ? 0 : 1];
    }
    return p.seg[locate(p, min(t * nro + r, p.ntotal - 1), lrow)];
}

// RW output rows a consumer warp, CS warps a row (k split between them).
template <typename T, bool GLU, int RW, int CS>
__device__ void gemv_ws_impl(const Nf4Multi& p, int act, const T* __restrict__ x, T* __restrict__ y, unsigned k,
                             unsigned stages) {
    constexpr unsigned NRO = WS_CW * RW / CS;         // output rows a tile
    constexpr unsigned NWR = GLU ? 2 * NRO : NRO;     // weight rows a tile
    constexpr int NA = GLU ? 2 * RW : RW;             // weight rows a consumer warp
    __shared__ float s_code[16];
    __shared__ float s_ncode[256];
    __shared__ float s_nest[MAX_SEGS][WS_NEST];       // the block's window of each nested absmax
    __shared__ unsigned s_nest0[MAX_SEGS];
    __shared__ float s_part[WS_CW][NA];
    __shared__ __align__(8) uint64_t s_full[WS_MAX_STAGES];
    __shared__ __align__(8) uint64_t s_empty[WS_MAX_STAGES];
    extern __shared__ __align__(16) uint8_t ws_smem[];
    const unsigned bs = p.seg[0].bs_log2, rb = k >> 1, kb = k >> bs;
    const bool dq = p.seg[0].dq != 0;
    const unsigned sbr = dq ? kb : 4u * kb;            // scale bytes a row (q bytes or f32 absmax)
    const unsigned wbytes = NWR * rb, stage_bytes = wbytes + NWR * sbr;
    const unsigned ntiles = (p.ntotal + NRO - 1) / NRO;
    const unsigned t0 = (unsigned)(((unsigned long long)ntiles * blockIdx.x) / gridDim.x);
    const unsigned t1 = (unsigned)(((unsigned long long)ntiles * (blockIdx.x + 1)) / gridDim.x);
    const unsigned lane = threadIdx.x & 31u, warp = threadIdx.x >> 5;

    if (threadIdx.x == 0) {
        for (unsigned s = 0; s < stages; s++) { mbar_init(&s_full[s], 1); mbar_init(&s_empty[s], WS_CW); }
        mbar_init_fence();
    }
    __syncthreads();
    // The producer issues one tile's copies: each weight row's packed bytes and its scale bytes.
    auto issue = [&](unsigned t, unsigned st) {
        uint8_t* dst = ws_smem + (size_t)st * stage_bytes;
        if (lane == 0) mbar_expect_tx(&s_full[st], stage_bytes);
        __syncwarp();
        for (unsigned r = lane; r < NWR; r += 32u) {
            unsigned lr;
            const Nf4Seg& s = ws_row<GLU>(p, t, r, NRO, &lr);
            bulk_copy(dst + r * rb, s.packed + (size_t)lr * rb, rb, &s_full[st]);
            const uint8_t* src = dq ? s.q + (size_t)lr * kb : reinterpret_cast<const uint8_t*>(s.absmax + (size_t)lr * kb);
            bulk_copy(dst + wbytes + r * sbr, src, sbr, &s_full[st]);
        }
        __syncwarp();
        if (lane == 0) mbar_arrive(&s_full[st]);
    };
    if (warp == WS_CW)
        for (unsigned i = 0; i < stages && t0 + i < t1; i++) issue(t0 + i, i);
    // Tables and the nested windows (rows [t0 * NRO, t1 * NRO) of each segment; host-checked to
    // fit WS_NEST) while the first copies fly.
    for (unsigned i = threadIdx.x; i < TABLE_LEN; i += blockDim.x) {
        const float v = p.tables[i];
        if (i < 16) s_code[i] = v; else s_ncode[i - 16] = v;
    }
    if (dq) {
        unsigned first = 0;
        for (unsigned si = 0; si < p.nseg; si++) {
            const Nf4Seg& s = p.seg[si];
            const unsigned rows = GLU ? p.ntotal : s.rows;
            const unsigned lo = GLU ? t0 * NRO : max(t0 * NRO, first) - first;
            const unsigned hi = GLU ? min(t1 * NRO, rows) : min(t1 * NRO, first + rows) - min(first, t1 * NRO);
            const unsigned n0 = (unsigned)(((size_t)lo * kb) >> s.nbs_log2);
            if (threadIdx.x == 0) s_nest0[si] = n0;
            if (hi > lo) {
                const unsigned n1 = (unsigned)((((size_t)hi * kb) - 1) >> s.nbs_log2);
                for (unsigned j = threadIdx.x; j <= n1 - n0 && j < WS_NEST; j += blockDim.x) s_nest[si][j] = __ldg(s.nested + n0 + j);
            }
            if (!GLU) first += rows;
        }
    }
    __syncthreads();

    if (warp == WS_CW) {  // producer: the rest of the tiles, a stage as soon as it is free
        for (unsigned i = stages, t = t0 + stages; t < t1; i++, t++) {
            const unsigned st = i % stages;
            mbar_wait(&s_empty[st], ((i / stages) - 1u) & 1u);
            issue(t, st);
        }
        return;
    }

    // consumers
    pdl_wait();
    pdl_launch_dependents();
    const unsigned part = warp % CS, slot = warp / CS;
    const unsigned nch = rb >> 4;  // 16-byte chunks a row
    for (unsigned i = 0, t = t0; t < t1; i++, t++) {
        const unsigned st = i % stages;
        const uint8_t* tile = ws_smem + (size_t)st * stage_bytes;
        const uint8_t* sb = tile + wbytes;
        unsigned wr[NA];       // tile-local weight rows of this warp
        size_t blk0[NA];       // their first block (over the whole weight)
        const float* nest[NA]; // their segment's nested window, from block (nest0 << nbs)
        unsigned nbs[NA];
        float off[NA];
#pragma unroll
        for (int a = 0; a < NA; a++) {
            wr[a] = (GLU && a >= RW) ? NRO + slot * RW + (a - RW) : slot * RW + a;
            unsigned lr;
            const Nf4Seg& s = ws_row<GLU>(p, t, wr[a], NRO, &lr);
            const unsigned si = (unsigned)(&s - p.seg);
            blk0[a] = (size_t)lr * kb;
            nest[a] = s_nest[si] - s_nest0[si];
            nbs[a] = s.nbs_log2;
            off[a] = s.offset;
        }
        float acc[NA];
#pragma unroll
        for (int a = 0; a < NA; a++) acc[a] = 0.f;
        mbar_wait(&s_full[st], (i / stages) & 1u);
        for (unsigned c = part * 32u + lane; c < nch; c += 32u * CS) {
            const unsigned o = c << 4, e = c << 5, b = e >> bs;
            uint4 wv[NA];
            float sc[NA];
#pragma unroll
            for (int a = 0; a < NA; a++) {
                wv[a] = *reinterpret_cast<const uint4*>(tile + wr[a] * rb + o);
                if (dq) {
                    const size_t blk = blk0[a] + b;
                    sc[a] = __fadd_rn(__fmul_rn(s_ncode[sb[wr[a] * kb + b]], nest[a][blk >> nbs[a]]), off[a]);
                } else {
                    sc[a] = reinterpret_cast<const float*>(sb)[wr[a] * kb + b];
                }
            }
            float pa[NA];
#pragma unroll
            for (int a = 0; a < NA; a++) pa[a] = 0.f;
#pragma unroll
            for (int j = 0; j < 4; j++) {
                float xv[8];
                load_x8(x + e + 8u * j, xv);
#pragma unroll
                for (int a = 0; a < NA; a++) {
                    const uint32_t w = j == 0 ? wv[a].x : j == 1 ? wv[a].y : j == 2 ? wv[a].z : wv[a].w;
                    const uint32_t hi = (w >> 2) & 0x3c3c3c3cu, lo = (w << 2) & 0x3c3c3c3cu;
#pragma unroll
                    for (int q = 0; q < 4; q++) {
                        pa[a] = fmaf(code_at(s_code, __byte_perm(hi, 0u, 0x4440u + q)), xv[2 * q], pa[a]);
                        pa[a] = fmaf(code_at(s_code, __byte_perm(lo, 0u, 0x4440u + q)), xv[2 * q + 1], pa[a]);
                    }
                }
            }
#pragma unroll
            for (int a = 0; a < NA; a++) acc[a] = fmaf(sc[a], pa[a], acc[a]);
        }
#pragma unroll
        for (int a = 0; a < NA; a++) {
#pragma unroll
            for (int o = 16; o > 0; o >>= 1) acc[a] += __shfl_xor_sync(0xffffffffu, acc[a], o);
        }
        __syncwarp();
        if (lane == 0) mbar_arrive(&s_empty[st]);
        if (CS > 1) {
            if (part != 0 && lane == 0) {
#pragma unroll
                for (int a = 0; a < NA; a++) s_part[warp][a] = acc[a];
            }
            named_sync(1u + slot, 32u * CS);
            if (part == 0) {
#pragma unroll
                for (int a = 0; a < NA; a++)
                    for (int q = 1; q < CS; q++) acc[a] += s_part[warp + q][a];
            }
        }
        if (part == 0 && lane < RW) {
            // lane r writes output row slot * RW + r (its sums picked from the registers)
            float g = 0.f, u = 0.f;
#pragma unroll
            for (int a = 0; a < RW; a++)
                if (lane == (unsigned)a) { g = acc[a]; if (GLU) u = acc[RW + a]; }
            const unsigned row = t * NRO + slot * RW + lane;
            if (row < p.ntotal) {
                if (GLU) {
                    const Nf4Seg& gs = p.seg[0];
                    const Nf4Seg& us = p.seg[1];
                    const float av = round_t<T>(glu_act(round_t<T>(with_bias<T>(gs, row, g)), act));
                    y[row] = from_f32<T>(__fmul_rn(av, round_t<T>(with_bias<T>(us, row, u))));
                } else {
                    unsigned lr;
                    const Nf4Seg& s = p.seg[locate(p, row, &lr)];
                    y[s.col0 + lr] = from_f32<T>(with_bias<T>(s, lr, g));
                }
            }
        }
        if (CS > 1) named_sync(1u + slot, 32u * CS);  // s_part free for the next tile
    }
}

#define GEMV_WS(T, SUFFIX, RW, CS)                                                                       \
    extern "C" __global__ void __launch_bounds__((WS_CW + 1) * 32) nf4_gemv_ws_##SUFFIX##_r##RW##_c##CS(  \
        Nf4Multi p, const T* x, T* y, unsigned k, unsigned stages) {                                    \
        gemv_ws_impl<T, false, RW, CS>(p, 0, x, y, k, stages);                                          \
    }                                                                                                   \
    extern "C" __global__ void __launch_bounds__((WS_CW + 1) * 32) nf4_gemv_ws_glu_##SUFFIX##_r##RW##_c##CS( \
        Nf4Multi p, int act, const T* x, T* y, unsigned k, unsigned stages) {                           \
        gemv_ws_impl<T, true, RW, CS>(p, act, x, y, k, stages);                                         \
    }
#define GEMV_WS_ALL(T, SUFFIX) GEMV_WS(T, SUFFIX, 1, 1) GEMV_WS(T, SUFFIX, 2, 1) GEMV_WS(T, SUFFIX, 1, 2)
GEMV_WS_ALL(float, f32)
GEMV_WS_ALL(__nv_bfloat16, bf16)
GEMV_WS_ALL(__half, f16)
