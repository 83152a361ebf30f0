// NF4 kernels for qlora-quant (compiled to PTX by build.rs, run through candle custom ops in
// src/cuda/). Layout, as bitsandbytes stores it: packed[i] holds elements 2i (HIGH nibble) and
// 2i+1 (low nibble) of the flattened weight; element e belongs to block e / blocksize, whose
// scale is absmax[block] (plain) or nested_code[q[block]] * nested_absmax[block / nbs] + offset
// (double quantization, two f32 roundings in that order, never fused).
//
// `tables` holds 16 + 256 f32: the NF4 code, then the nested (8-bit dynamic) code.
// Every product that the CPU twin computes is computed here with explicit round-to-nearest
// intrinsics (__fmul_rn / __fadd_rn), so no FMA contraction can change a bit.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>
#include <type_traits>

#define TABLE_LEN 272

__device__ __forceinline__ void load_tables(const float* __restrict__ tables, float* s_code, float* s_nested) {
    for (int i = threadIdx.x; i < TABLE_LEN; i += blockDim.x) {
        float v = tables[i];
        if (i < 16) s_code[i] = v; else s_nested[i - 16] = v;
    }
    __syncthreads();
}

// Scale of block `blk`.
__device__ __forceinline__ float block_scale(size_t blk, const float* __restrict__ absmax,
                                             const uint8_t* __restrict__ q, const float* __restrict__ nested,
                                             const float* s_nested, float offset, unsigned nbs_log2, int dq) {
    if (!dq) return absmax[blk];
    return __fadd_rn(__fmul_rn(s_nested[q[blk]], nested[blk >> nbs_log2]), offset);
}

template <typename T> __device__ __forceinline__ T from_f32(float v);
template <> __device__ __forceinline__ float from_f32<float>(float v) { return v; }
template <> __device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }
template <> __device__ __forceinline__ __half from_f32<__half>(float v) { return __float2half_rn(v); }

// 8 consecutive outputs, 16- or 32-byte aligned.
__device__ __forceinline__ void store8(float* out, const float* v) {
    reinterpret_cast<float4*>(out)[0] = make_float4(v[0], v[1], v[2], v[3]);
    reinterpret_cast<float4*>(out)[1] = make_float4(v[4], v[5], v[6], v[7]);
}
__device__ __forceinline__ void store8(__nv_bfloat16* out, const float* v) {
    uint4 r;
    __nv_bfloat162 p0 = __floats2bfloat162_rn(v[0], v[1]), p1 = __floats2bfloat162_rn(v[2], v[3]);
    __nv_bfloat162 p2 = __floats2bfloat162_rn(v[4], v[5]), p3 = __floats2bfloat162_rn(v[6], v[7]);
    r.x = *reinterpret_cast<uint32_t*>(&p0); r.y = *reinterpret_cast<uint32_t*>(&p1);
    r.z = *reinterpret_cast<uint32_t*>(&p2); r.w = *reinterpret_cast<uint32_t*>(&p3);
    *reinterpret_cast<uint4*>(out) = r;
}
__device__ __forceinline__ void store8(__half* out, const float* v) {
    uint4 r;
    __half2 p0 = __floats2half2_rn(v[0], v[1]), p1 = __floats2half2_rn(v[2], v[3]);
    __half2 p2 = __floats2half2_rn(v[4], v[5]), p3 = __floats2half2_rn(v[6], v[7]);
    r.x = *reinterpret_cast<uint32_t*>(&p0); r.y = *reinterpret_cast<uint32_t*>(&p1);
    r.z = *reinterpret_cast<uint32_t*>(&p2); r.w = *reinterpret_cast<uint32_t*>(&p3);
    *reinterpret_cast<uint4*>(out) = r;
}

// ---------------------------------------------------------------- dequantize
// Elements base .. base + n of the weight into out[0 .. n) (base > 0: a slab of rows, for
// `cuda::prefill`). One thread per 4 packed bytes (8 outputs; blocksize >= 32 keeps them in one
// block): a warp loads 128 contiguous bytes and stores 512 contiguous bytes (bf16) per
// instruction. (One thread per 16 bytes, four 16-byte stores at a 64-byte stride between
// lanes, was measured slower on an H100: 1.5 TB/s of 2.5 bytes per weight, the 512-token
// Mistral-7B NF4 forward 32.6 ms against 29.9 ms with this one.)
// `vec` = packed + base / 2 is 4-byte aligned (base % 8 == 0): then whole groups use one 32-bit
// load and one 16/32-byte store, the ragged tail the scalar path.
template <typename T>
__device__ void dequant_impl(const uint8_t* __restrict__ packed, const float* __restrict__ absmax,
                             const uint8_t* __restrict__ q, const float* __restrict__ nested,
                             const float* __restrict__ tables, float offset, unsigned bs_log2,
                             unsigned nbs_log2, int dq, int vec, T* __restrict__ out, size_t n, size_t base) {
    __shared__ float s_code[16];
    __shared__ float s_nested[256];
    load_tables(tables, s_code, s_nested);
    size_t g = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    size_t e0 = g * 8;
    if (e0 >= n) return;
    if (vec && e0 + 8 <= n) {
        const size_t ge0 = base + e0;
        float s = block_scale(ge0 >> bs_log2, absmax, q, nested, s_nested, offset, nbs_log2, dq);
        uint32_t w = *reinterpret_cast<const uint32_t*>(packed + (ge0 >> 1));
        float v[8];
#pragma unroll
        for (int j = 0; j < 4; j++) {
            uint32_t b = (w >> (8 * j)) & 0xffu;
            v[2 * j] = __fmul_rn(s_code[b >> 4], s);
            v[2 * j + 1] = __fmul_rn(s_code[b & 15u], s);
        }
        store8(out + e0, v);
    } else {
        for (size_t e = e0; e < e0 + 8 && e < n; e++) {
            const size_t ge = base + e;
            float s = block_scale(ge >> bs_log2, absmax, q, nested, s_nested, offset, nbs_log2, dq);
            uint32_t b = packed[ge >> 1];
            uint32_t c = (ge & 1) ? (b & 15u) : (b >> 4);
            out[e] = from_f32<T>(__fmul_rn(s_code[c], s));
        }
    }
}

#define DEQUANT(NAME, T)                                                                              \
    extern "C" __global__ void NAME(const uint8_t* packed, const float* absmax, const uint8_t* q,    \
                                    const float* nested, const float* tables, float offset,          \
                                    unsigned bs_log2, unsigned nbs_log2, int dq, int vec, T* out,    \
                                    unsigned long long n, unsigned long long base) {                 \
        dequant_impl<T>(packed, absmax, q, nested, tables, offset, bs_log2, nbs_log2, dq, vec, out,  \
                        (size_t)n, (size_t)base);                                                    \
    }
DEQUANT(nf4_dequant_f32, float)
DEQUANT(nf4_dequant_bf16, __nv_bfloat16)
DEQUANT(nf4_dequant_f16, __half)

// ---------------------------------------------------------------- GEMV (decode)
// y[m, r] = sum_k x[m, k] * W[r, k] for M <= 8 rows of x: 1..3 weights that read the same x as
// one GEMV over their stacked rows (`nf4_gemv_multi`: q/k/v; a single weight is the one-segment
// case), or gate/up with the gated activation applied on the way out (`nf4_gemv_glu`). Each
// weight is an Nf4Seg passed by value (its own scales, double-quant offset, optional bias); the
// tables (NF4 code + nested code) are shared. Rounding follows the unfused path: the product is
// rounded to T, then the bias added and rounded again; the GLU rounds gate and up to T, the
// activation once, then the product.
//
// Why this shape: the first version (one warp per row, 16 weight bytes per lane, x read at a
// 64-byte stride between lanes, the scale resolved per chunk through global loads) moved ~1 TB/s
// on an H100, held by the L1/shared-memory pipe rather than by DRAM. Here
// * a block of GW warps reads NR weight rows (R output rows; the GLU reads R gate + R up rows),
//   the warps splitting k into 128-byte steps: lane l reads packed bytes 4l..4l+3 of a step, so a
//   warp's weight load is one coalesced line and its x load (8 values a lane) one contiguous run;
// * each piece of x is loaded once for all NR rows;
// * the block scales (double quantization resolved) are computed once per block into shared
//   memory: one broadcast load per piece;
// * nibbles become byte offsets into the 16-entry code table (two LOPs per 4 bytes, one byte
//   permute per nibble); equal codes broadcast, so the table has no bank conflicts.
// Sums: 8 products per piece in f32, times the block scale into the lane's accumulator; lanes
// reduced by shuffles, then the warps in a fixed order.
// Needs: k % 32 == 0, k % blocksize == 0, packed rows 16-byte aligned, x rows 16-byte aligned,
// NR * (k / 32) floats of dynamic shared memory.
struct Nf4Seg {
    const uint8_t* packed;
    const float* absmax;
    const uint8_t* q;
    const float* nested;
    const void* bias;  // T[rows] or null
    float offset;
    unsigned bs_log2;
    unsigned nbs_log2;
    int dq;
    unsigned rows;
    unsigned col0;  // first output column of this weight (multi) / unused (glu)
};

#define MAX_SEGS 3
struct Nf4Multi {
    Nf4Seg seg[MAX_SEGS];
    const float* tables;
    unsigned nseg;
    unsigned ntotal;
    unsigned prefetch;  // prefetch the block's weight rows into L2 before the wait (prefetch_rows)
};

#define GW 4  // warps per block, splitting k

// Output rows per block (R) and 128-byte steps in flight per warp (U), by rows of x (host:
// `rows_per_block` in src/cuda/fused.rs must agree).
template <int M> struct Tile {
    static constexpr int R = M <= 1 ? 4 : (M <= 4 ? 2 : 1);
    static constexpr int U = M <= 2 ? 4 : 2;
};

// Programmatic dependent launch (src/cuda/pdl.rs): wait until the previous kernel of the stream
// has completed and its writes are visible (a no-op when launched without PDL or before sm_90),
// and let the next kernel be scheduled.
__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
__device__ __forceinline__ void pdl_launch_dependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

__device__ __forceinline__ uint32_t ld_stream32(const uint8_t* p) {
    uint32_t r;
    asm("ld.global.nc.L1::no_allocate.u32 %0, [%1];" : "=r"(r) : "l"(p));
    return r;
}

__device__ __forceinline__ void load_x8(const float* p, float* v) {
    float4 a = __ldg(reinterpret_cast<const float4*>(p)), b = __ldg(reinterpret_cast<const float4*>(p) + 1);
    v[0] = a.x; v[1] = a.y; v[2] = a.z; v[3] = a.w; v[4] = b.x; v[5] = b.y; v[6] = b.z; v[7] = b.w;
}
__device__ __forceinline__ void load_x8(const __nv_bfloat16* p, float* v) {
    uint4 r = __ldg(reinterpret_cast<const uint4*>(p));
    uint32_t w[4] = {r.x, r.y, r.z, r.w};
#pragma unroll
    for (int i = 0; i < 4; i++) {
        v[2 * i] = __uint_as_float(w[i] << 16);
        v[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
    }
}
__device__ __forceinline__ void load_x8(const __half* p, float* v) {
    uint4 r = __ldg(reinterpret_cast<const uint4*>(p));
    uint32_t w[4] = {r.x, r.y, r.z, r.w};
#pragma unroll
    for (int i = 0; i < 4; i++) {
        float2 f = __half22float2(*reinterpret_cast<__half2*>(&w[i]));
        v[2 * i] = f.x; v[2 * i + 1] = f.y;
    }
}

// The code at a byte offset (nibble * 4) into the shared table.
__device__ __forceinline__ float code_at(const float* s_code, uint32_t byte_off) {
    return *reinterpret_cast<const float*>(reinterpret_cast<const char*>(s_code) + byte_off);
}

// One weight row as the core reads it.
struct RowRef {
    const uint8_t* w;  // packed bytes of the row
    unsigned bs_log2;
};

// Scale of block `blk` (index over the whole weight) of segment s.
__device__ __forceinline__ float seg_scale(const Nf4Seg& s, size_t blk, const float* __restrict__ nested_code) {
    if (!s.dq) return __ldg(s.absmax + blk);
    return __fadd_rn(__fmul_rn(__ldg(nested_code + __ldg(s.q + blk)), __ldg(s.nested + (blk >> s.nbs_log2))), s.offset);
}

// fill_row_scales<true> first asks L2 for the row's packed bytes. Measured on an H100 (session
// 5, same call, NF4 b1 us a step, wide core, on for every GEMV): TinyLlama 926.8 with vs 963.2
// without, Mistral-7B 3476.8 vs 3103.4 (its o and down GEMVs slower). So it is a kernel of its
// own (the `_pf` GEMVs, picked by the host for short rows: `bulk_prefetch` in
// src/cuda/fused.rs), not a runtime flag: a per-weight flag read in fill_row_scales (5dbd32d,
// reverted) took the single-weight GEMV from 64 to 80 registers (ptxas -v, sm_90: 6 blocks a SM
// instead of 8) and the Mistral-7B step from 3095 to 3565 us on an H100, same call. The build
// switch below turns it on in every GEMV (for A/B runs).
#ifndef QLORA_GEMV_BULK_PREFETCH
#define QLORA_GEMV_BULK_PREFETCH 0
#endif

// Asks L2 for `bytes` (a multiple of 16) at p (16-byte aligned): one bulk prefetch on sm_90,
// no registers held and nothing waited for.
__device__ __forceinline__ void prefetch_l2(const uint8_t* p, unsigned bytes) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(p), "r"(bytes));
#else
    for (unsigned o = 0; o < bytes; o += 128u) asm volatile("prefetch.global.L2 [%0];" ::"l"(p + o));
#endif
}

// The block scales of row `lrow` of s into dst[0 .. k >> bs_log2) (block-wide loop).
// The GEMV wrappers call it before pdl_wait (the weights do not depend on the previous kernel);
// with QLORA_GEMV_BULK_PREFETCH it first asks L2 for the row's packed bytes (thread 0, one bulk
// prefetch per row), so DRAM streams them while the scales resolve and the previous kernel drains.
template <bool PF = QLORA_GEMV_BULK_PREFETCH != 0>
__device__ __forceinline__ void fill_row_scales(const Nf4Seg& s, unsigned lrow, unsigned k,
                                                const float* __restrict__ nested_code, float* dst) {
    if (PF && threadIdx.x == 0) prefetch_l2(s.packed + (size_t)lrow * (k >> 1), k >> 1);
    const unsigned kb = k >> s.bs_log2;
    const size_t blk0 = (size_t)lrow * kb;
    for (unsigned b = threadIdx.x; b < kb; b += blockDim.x) dst[b] = seg_scale(s, blk0 + b, nested_code);
}

// The block scales of a block's NR rows (row r: segment seg_at(r), its row lr[r]) into
// dst[r * stride + b], every thread's loads for all the rows issued before any is used: one
// DRAM round trip (the quantized scale and its nested absmax, then the nested code from L1)
// where fill_row_scales row by row took one a row, each behind its own loop (SASS, sm_90: the
// GLU's 8 rows were 8 such round trips before the wait, with one or two of its 4 warps busy).
// Rows of more than SC_PER(NR) * blockDim.x scale blocks resolve the rest one at a time (one
// pass for the GLU's 8 rows, up to hidden sizes of 8192: more took the GLU past its registers). With PF,
// thread 0 first asks L2 for every row's packed bytes (fill_row_scales<true>).
// RS (row scales) keeps the row-by-row fill: measured on an H100 (bench/gpu/results/
// h100-2026-11-27-s9-*), one pass took Mistral-7B's NF4 b1 step from 3110 / 3128 to 2908 / 2939
// us and TinyLlama's gate/up from 10.4 to 9.7 us a launch, but TinyLlama's o/down (with the
// norm tail) and q/k/v (`_pf`) 0.4 us a launch slower, so the `_pf` GEMVs and the norm-tail
// GEMV at k <= 2048 (`nf4_gemv_norm_rs_*`) keep the row-by-row fill.
// QLORA_GEMV_ROW_SCALES=1 builds it everywhere (for A/B runs).
#ifndef QLORA_GEMV_ROW_SCALES
#define QLORA_GEMV_ROW_SCALES 0
#endif
#define SC_PER(NR) ((NR) >= 8 ? 1 : 2)
template <int NR, bool PF, bool RS, typename SegAt>
__device__ __forceinline__ void fill_scales(SegAt seg_at, const unsigned (&lr)[NR], unsigned k,
                                            const float* __restrict__ nested_code, float* dst, unsigned stride) {
    if (RS || QLORA_GEMV_ROW_SCALES) {
#pragma unroll
        for (int r = 0; r < NR; r++) fill_row_scales<PF>(seg_at(r), lr[r], k, nested_code, dst + r * stride);
        return;
    }
    if (PF && threadIdx.x == 0) {
#pragma unroll
        for (int r = 0; r < NR; r++) prefetch_l2(seg_at(r).packed + (size_t)lr[r] * (k >> 1), k >> 1);
    }
    uint32_t qv[NR][SC_PER(NR)];
    float nv[NR][SC_PER(NR)];
#pragma unroll
    for (int r = 0; r < NR; r++) {
        const Nf4Seg& sg = seg_at(r);
        const unsigned kb = k >> sg.bs_log2;
        const size_t blk0 = (size_t)lr[r] * kb;
#pragma unroll
        for (int c = 0; c < SC_PER(NR); c++) {
            const unsigned b = threadIdx.x + c * blockDim.x;
            if (b < kb) {
                if (sg.dq) {
                    qv[r][c] = __ldg(sg.q + blk0 + b);
                    nv[r][c] = __ldg(sg.nested + ((blk0 + b) >> sg.nbs_log2));
                } else {
                    nv[r][c] = __ldg(sg.absmax + blk0 + b);
                }
            }
        }
    }
#pragma unroll
    for (int r = 0; r < NR; r++) {
        const Nf4Seg& sg = seg_at(r);
        const unsigned kb = k >> sg.bs_log2;
#pragma unroll
        for (int c = 0; c < SC_PER(NR); c++) {
            const unsigned b = threadIdx.x + c * blockDim.x;
            if (b < kb)
                dst[r * stride + b] = sg.dq ? __fadd_rn(__fmul_rn(__ldg(nested_code + qv[r][c]), nv[r][c]), sg.offset) : nv[r][c];
        }
        const size_t blk0 = (size_t)lr[r] * kb;
        for (unsigned b = threadIdx.x + SC_PER(NR) * blockDim.x; b < kb; b += blockDim.x) dst[r * stride + b] = seg_scale(sg, blk0 + b, nested_code);
    }
}

// Packed weight words of one lane: W consecutive 32-bit words (4 * W bytes, 8 * W weights),
// streamed past L1 (read once per step).
template <int W> __device__ __forceinline__ void ld_stream(const uint8_t* p, uint32_t (&w)[W]);
template <> __device__ __forceinline__ void ld_stream<1>(const uint8_t* p, uint32_t (&w)[1]) { w[0] = ld_stream32(p); }
template <> __device__ __forceinline__ void ld_stream<2>(const uint8_t* p, uint32_t (&w)[2]) {
    asm("ld.global.nc.L1::no_allocate.v2.u32 {%0, %1}, [%2];" : "=r"(w[0]), "=r"(w[1]) : "l"(p));
}
template <> __device__ __forceinline__ void ld_stream<4>(const uint8_t* p, uint32_t (&w)[4]) {
    asm("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];" : "=r"(w[0]), "=r"(w[1]), "=r"(w[2]), "=r"(w[3]) : "l"(p));
}

// The widest lane load the GEMV core uses, in 32-bit words (1, 2 or 4), and the weight bytes a
// thread of the wide core keeps in flight (its steps in flight follow from the rows). Build-time
// switches for A/B runs (nvcc -DQLORA_GEMV_WMAX=1 is the session-4 core).
#ifndef QLORA_GEMV_WMAX
#define QLORA_GEMV_WMAX 4
#endif
#ifndef QLORA_GEMV_INFLIGHT
#define QLORA_GEMV_INFLIGHT 64
#endif
// Steps in flight for NR rows of W-word lane loads.
__host__ __device__ constexpr int steps_in_flight(int nr, int w) {
    return QLORA_GEMV_INFLIGHT / (nr * 4 * w) > 0 ? QLORA_GEMV_INFLIGHT / (nr * 4 * w) : 1;
}

// One width of the core: acc[m][r] += the dot products over the steps this warp takes. A warp's
// step is 128 * W contiguous bytes of each row (lane l: words l * W .. l * W + W - 1, 8 * W
// weights, all in one scale block since blocksize >= 8 * W), its U steps' loads issued
// together; each 8 weights multiply the matching 8 values of x (loaded once for the NR rows),
// the sum over the lane's 8 * W weights times the block scale goes into the accumulator.
// No segments: the SegAt of dot_rows_w without lane scales (never called).
struct NoSegAt {
    const Nf4Seg* s;
    __device__ const Nf4Seg& operator()(int) const { return *s; }
};
// What the lane-scale core does around its work, every thread: right after its programmatic-
// launch wait (after_wait, once), before the block's reduction barrier (before_reduce), and to
// each row's block sum (finish). Nothing here; the folded norm's launches have their own
// (FoldHook, SumSqHook).
struct NoHook {
    __device__ void after_wait() const {}
    __device__ void before_reduce() const {}
    __device__ float finish(float v) const { return v; }
};
// LS (lane scales): false reads the block scales from s_scale (filled by the caller); true loads
// each lane's q byte and nested absmax (or absmax) with its weights, from row lr[r] of segment
// seg_at(r), the nested code from s_ncode (shared), and issues the first step's loads before the
// programmatic-launch wait, which it then does itself (every thread, once). The scale is the
// same float either way, so the results are bit for bit those of the scale phase.
template <typename T, int M, int NR, int U, int W, bool LS = false, typename SegAt = NoSegAt, typename Hook = NoHook>
__device__ __forceinline__ void dot_rows_w(const RowRef (&rows)[NR], const float* s_scale, const float* s_code,
                                           const T* __restrict__ x, unsigned k, float (&acc)[M][NR],
                                           SegAt seg_at = SegAt{}, const unsigned* lr = nullptr, const float* s_ncode = nullptr,
                                           Hook hooks = Hook{}) {
    bool waited = !LS;
    constexpr unsigned SB = 128u * W;  // bytes of one warp step
    // The GLU's 8 rows (gate and up, one row of x): loads without a branch each, which ptxas
    // then issues together (with the branches it issued 3 of 8 before the arithmetic; Mistral-7B
    // gate/up 40.2 -> 37.4 us, bench/gpu/results/h100-2026-11-27-s7-micro-clamp.jsonl). Not for
    // the single-weight GEMV's 4 rows: there it took 64 registers to 72 and was slower.
    constexpr bool CLAMP = NR >= 8;
    const unsigned lane = threadIdx.x & 31u, warp = threadIdx.x >> 5;
    const unsigned rb = k >> 1, stride = k >> 5, steps = (rb + SB - 1u) / SB;
    for (unsigned s0 = warp; s0 < steps; s0 += GW * U) {
        uint32_t wv[U][NR][W];
        uint32_t qv[LS ? U : 1][LS ? NR : 1];
        float nv[LS ? U : 1][LS ? NR : 1];
#pragma unroll
        for (int u = 0; u < U; u++) {
            const unsigned off = (s0 + u * GW) * SB + 4u * W * lane;
#pragma unroll
            for (int r = 0; r < NR; r++) {
                if (CLAMP) {
                    // One load a row whatever the offset (past the row's end: its start, zeroed
                    // after), so no branch stands between the NR loads.
                    ld_stream<W>(rows[r].w + (off < rb ? off : 0u), wv[u][r]);
#pragma unroll
                    for (int j = 0; j < W; j++) wv[u][r][j] = off < rb ? wv[u][r][j] : 0u;
                } else if (off < rb) ld_stream<W>(rows[r].w + off, wv[u][r]);
                else {
#pragma unroll
                    for (int j = 0; j < W; j++) wv[u][r][j] = 0u;
                }
                if constexpr (LS) {
                    const Nf4Seg& sg = seg_at(r);
                    const size_t blk = (size_t)lr[r] * (k >> sg.bs_log2) + (((off < rb ? off : 0u) * 2u) >> sg.bs_log2);
                    if (sg.dq) {
                        qv[u][r] = __ldg(sg.q + blk);
                        nv[u][r] = __ldg(sg.nested + (blk >> sg.nbs_log2));
                    } else {
                        qv[u][r] = 0u;
                        nv[u][r] = __ldg(sg.absmax + blk);
                    }
                }
            }
        }
        if (!waited) {
            pdl_wait();
            pdl_launch_dependents();
            hooks.after_wait();
            waited = true;
        }
#pragma unroll
        for (int u = 0; u < U; u++) {
            const unsigned off = (s0 + u * GW) * SB + 4u * W * lane;
            if (off >= rb) break;  // later steps lie further out
            const unsigned e = off * 2u;
            float p[M][NR];
#pragma unroll
            for (int m = 0; m < M; m++)
#pragma unroll
                for (int r = 0; r < NR; r++) p[m][r] = 0.f;
#pragma unroll
            for (int j = 0; j < W; j++) {
                float xv[M][8];
#pragma unroll
                for (int m = 0; m < M; m++) load_x8(x + (size_t)m * k + e + 8u * j, xv[m]);
#pragma unroll
                for (int r = 0; r < NR; r++) {
                    const uint32_t w = wv[u][r][j];
                    const uint32_t hi = (w >> 2) & 0x3c3c3c3cu, lo = (w << 2) & 0x3c3c3c3cu;
                    float wf[8];
#pragma unroll
                    for (int b = 0; b < 4; b++) {
                        wf[2 * b] = code_at(s_code, __byte_perm(hi, 0u, 0x4440u + b));
                        wf[2 * b + 1] = code_at(s_code, __byte_perm(lo, 0u, 0x4440u + b));
                    }
#pragma unroll
                    for (int m = 0; m < M; m++)
#pragma unroll
                        for (int i = 0; i < 8; i++) p[m][r] = fmaf(wf[i], xv[m][i], p[m][r]);
                }
            }
#pragma unroll
            for (int r = 0; r < NR; r++) {
                float sc;
                if constexpr (LS) {
                    const Nf4Seg& sg = seg_at(r);
                    sc = sg.dq ? __fadd_rn(__fmul_rn(s_ncode[qv[u][r]], nv[u][r]), sg.offset) : nv[u][r];
                } else {
                    sc = s_scale[r * stride + (e >> rows[r].bs_log2)];
                }
#pragma unroll
                for (int m = 0; m < M; m++) acc[m][r] = fmaf(sc, p[m][r], acc[m][r]);
            }
        }
    }
    if (!waited) {  // no step of this warp
        pdl_wait();
        pdl_launch_dependents();
        hooks.after_wait();
    }
}

// Block-wide: the dot products of the NR rows with the M rows of x into res[m * NR + r]
// (shared; every thread may read it after the call). s_scale[r * (k >> 5) + block] and s_code
// must be filled and synchronized by the caller.
// The lane load is as wide as the rows allow: 16 bytes (32 weights) when every warp gets at
// least one 512-byte step of each row (k >= 4096), 8 bytes from k >= 2048, else 4 bytes; the
// blocksize must hold a lane's weights (>= 32 for 16 bytes). The wider loads cut the load and
// address instructions and the scale lookups per weight 4-fold, keeping the bytes in flight.
// Measured on an H100 (session 5, same call, NF4 b1 decode, us a step, vs the 4-byte core):
// Mistral-7B 3103.4 vs 3177.1, TinyLlama 963.2 vs 960.6 (its GEMVs are latency-bound).
// (Issuing the first weight loads before the block scales are resolved was measured slower on
// an H100: 72 registers instead of 64 for the GLU, one block less per SM, Mistral-7B NF4 decode
// 245 tok/s against 260-268 with this order.)
// LSU: with lane scales, the steps a warp keeps in flight in the 16-byte core (0: as without).
// hooks (NoHook): with lane scales, what the block does after its wait (dot_rows_w), before the
// reduction barrier and to each row's sum.
template <typename T, int M, int NR, int U, bool LS = false, typename SegAt = NoSegAt, int LSU = 0, typename Hook = NoHook>
__device__ __forceinline__ void dot_rows(const RowRef (&rows)[NR], const float* s_scale, const float* s_code,
                                         const T* __restrict__ x, unsigned k, float* res,
                                         SegAt seg_at = SegAt{}, const unsigned* lr = nullptr, const float* s_ncode = nullptr,
                                         Hook hooks = Hook{}) {
    __shared__ float s_red[GW * M * NR];
    const unsigned lane = threadIdx.x & 31u, warp = threadIdx.x >> 5;
    float acc[M][NR];
#pragma unroll
    for (int m = 0; m < M; m++)
#pragma unroll
        for (int r = 0; r < NR; r++) acc[m][r] = 0.f;
    unsigned bs_min = rows[0].bs_log2;
#pragma unroll
    for (int r = 1; r < NR; r++) bs_min = min(bs_min, rows[r].bs_log2);
    const unsigned rb = k >> 1;
    // Wide loads for 1-2 rows of x; with more, the 4-byte core (more registers for x and the sums).
    constexpr int WM = M <= 2 ? QLORA_GEMV_WMAX : 1;
    if (WM >= 4 && rb >= GW * 512u && bs_min >= 5)
        dot_rows_w<T, M, NR, (LSU > 0 ? LSU : steps_in_flight(NR, 4)), 4, LS>(rows, s_scale, s_code, x, k, acc, seg_at, lr, s_ncode, hooks);
    else if (WM >= 2 && rb >= GW * 256u && bs_min >= 4)
        dot_rows_w<T, M, NR, LS ? 1 : steps_in_flight(NR, 2), 2, LS>(rows, s_scale, s_code, x, k, acc, seg_at, lr, s_ncode, hooks);
    else
        dot_rows_w<T, M, NR, LS ? 1 : U, 1, LS>(rows, s_scale, s_code, x, k, acc, seg_at, lr, s_ncode, hooks);
#pragma unroll
    for (int m = 0; m < M; m++)
#pragma unroll
        for (int r = 0; r < NR; r++) {
            float v = acc[m][r];
#pragma unroll
            for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
            if (lane == 0) s_red[(warp * M + m) * NR + r] = v;
        }
    hooks.before_reduce();
    __syncthreads();
    if (threadIdx.x < M * NR) {
        float v = 0.f;
#pragma unroll
        for (int w = 0; w < GW; w++) v += s_red[w * M * NR + threadIdx.x];
        res[threadIdx.x] = hooks.finish(v);
    }
    __syncthreads();
}

template <typename T> __device__ __forceinline__ float to_f32(T v);
template <> __device__ __forceinline__ float to_f32<float>(float v) { return v; }
template <> __device__ __forceinline__ float to_f32<__nv_bfloat16>(__nv_bfloat16 v) { return __bfloat162float(v); }
template <> __device__ __forceinline__ float to_f32<__half>(__half v) { return __half2float(v); }
template <typename T> __device__ __forceinline__ float round_t(float v) { return to_f32<T>(from_f32<T>(v)); }

template <typename T>
__device__ __forceinline__ float with_bias(const Nf4Seg& s, unsigned row, float v) {
    float r = round_t<T>(v);
    if (s.bias) r = __fadd_rn(r, to_f32<T>(reinterpret_cast<const T*>(s.bias)[row]));
    return r;
}

// Row `row` of the stacked weights: its segment and its row inside it.
__device__ __forceinline__ unsigned locate(const Nf4Multi& p, unsigned row, unsigned* lrow) {
    unsigned si = 0;
#pragma unroll
    for (int i = 0; i < MAX_SEGS - 1; i++) {
        if (si + 1 < p.nseg && row >= p.seg[si].rows) { row -= p.seg[si].rows; si++; }
    }
    *lrow = row;
    return si;
}

// ---------------------------------------------------------------- RMSNorm in the GEMV's prologue
// q/k/v and gate/up read the output of a residual add + RMSNorm (kernels/infer.cu
// add_rms_norm_vec). Here every block computes that norm itself, right after its wait, from
// the residual x and the pending block output a (M rows of k, from L2 / L1: the same few KB for
// every block of an SM), into shared memory as T, and its dot products read x from there: the
// norm's launch (and its wait for the previous kernel to drain) is gone. Block 0 also writes
// the sum s = x + a for the later residual add. The arithmetic is add_rms_norm_vec's, step for
// step: thread t of that kernel (8 elements, fmaf chain, warp butterfly, the warp sums added by
// one more butterfly over 32 lanes) is emulated by lane t % 32 of warp (t / 32) % GW, so the
// normed x, and therefore the GEMV, equals the unfused pair bit for bit.
// Needs (host-checked): k % 8 == 0, k <= 8192, x, a, w, s 16-byte aligned, s overlapping neither.
struct NormIn {
    const void* x;  // T[M, k]: the residual stream
    const void* a;  // T[M, k]: the pending block output
    const void* w;  // T[k]: the norm's weight
    void* s;        // T[M, k]: x + a, written by block 0
    float eps;
    int one_plus;
    int prefetch;   // prefetch the block's weight rows into L2 before the wait
};

// The NR weight rows of a block into L2 (one 128-byte line a thread per step): issued before
// pdl_wait, while the previous kernel still runs, so the rows are on chip when the prologue ends.
template <int NR>
__device__ __forceinline__ void prefetch_rows(const RowRef (&rows)[NR], unsigned k) {
    const unsigned rb = k >> 1;
#pragma unroll
    for (int r = 0; r < NR; r++)
        for (unsigned off = threadIdx.x * 128u; off < rb; off += blockDim.x * 128u)
            asm volatile("prefetch.global.L2 [%0];" ::"l"(rows[r].w + off));
}

// Loads of the normed x from shared memory in dot_rows (found by argument-dependent lookup: the
// element type SmemX<T> selects this load_x8 instead of the global __ldg one).
template <typename T> struct SmemX { T v; };
template <typename T>
__device__ __forceinline__ void load_x8(const SmemX<T>* p, float* v) {
    const uint4 r = *reinterpret_cast<const uint4*>(p);
    const uint32_t w[4] = {r.x, r.y, r.z, r.w};
    const T* t = reinterpret_cast<const T*>(w);
#pragma unroll
    for (int i = 0; i < 8; i++) v[i] = to_f32<T>(t[i]);
}
__device__ __forceinline__ void load_x8(const SmemX<float>* p, float* v) {
    const float4 a = reinterpret_cast<const float4*>(p)[0], b = reinterpret_cast<const float4*>(p)[1];
    v[0] = a.x; v[1] = a.y; v[2] = a.z; v[3] = a.w; v[4] = b.x; v[5] = b.y; v[6] = b.z; v[7] = b.w;
}

template <typename T>
__device__ __forceinline__ void ld8(const T* p, float* v) {
    if constexpr (sizeof(T) == 4) {
        const float4 a = reinterpret_cast<const float4*>(p)[0], b = reinterpret_cast<const float4*>(p)[1];
        v[0] = a.x; v[1] = a.y; v[2] = a.z; v[3] = a.w; v[4] = b.x; v[5] = b.y; v[6] = b.z; v[7] = b.w;
    } else {
        const uint4 r = *reinterpret_cast<const uint4*>(p);
        const uint32_t w[4] = {r.x, r.y, r.z, r.w};
        const T* t = reinterpret_cast<const T*>(w);
#pragma unroll
        for (int i = 0; i < 8; i++) v[i] = to_f32<T>(t[i]);
    }
}
template <typename T>
__device__ __forceinline__ void st8(T* p, const float* v) { store8(p, v); }

__device__ __forceinline__ float warp_sum_bfly(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// The M normed rows of x into xs[M][k] (shared, as T). Call after pdl_wait, block-wide.
template <typename T, int M>
__device__ void norm_prologue(const NormIn& n, unsigned k, T* xs) {
    __shared__ float s_wsum[M * 32];
    const unsigned lane = threadIdx.x & 31u, warp = threadIdx.x >> 5;
    const unsigned nvt = min(1024u, max(32u, ((k >> 3) + 31u) & ~31u)), nvw = nvt >> 5;  // add_rms_norm's block
    const T* x = reinterpret_cast<const T*>(n.x);
    const T* a = reinterpret_cast<const T*>(n.a);
    T* s = blockIdx.x == 0 ? reinterpret_cast<T*>(n.s) : nullptr;
    for (int m = 0; m < M; m++) {
        // Two of the norm kernel's warps at a time, both loads issued before either is used.
        for (unsigned vw0 = warp; vw0 < nvw; vw0 += 2 * GW) {  // uniform over the warp
            float v[2][8], av[2][8], ss[2];
#pragma unroll
            for (int j = 0; j < 2; j++) {
                const unsigned d0 = ((vw0 + j * GW) * 32u + lane) * 8u;
                if (vw0 + j * GW < nvw && d0 < k) {
                    ld8<T>(x + (size_t)m * k + d0, v[j]);
                    ld8<T>(a + (size_t)m * k + d0, av[j]);
                }
            }
#pragma unroll
            for (int j = 0; j < 2; j++) {
                const unsigned vw = vw0 + j * GW, d0 = (vw * 32u + lane) * 8u;
                ss[j] = 0.f;
                if (vw < nvw && d0 < k) {
                    const size_t at = (size_t)m * k + d0;
#pragma unroll
                    for (int i = 0; i < 8; i++) v[j][i] = round_t<T>(__fadd_rn(v[j][i], av[j][i]));
                    st8<T>(xs + at, v[j]);
                    if (s) st8<T>(s + at, v[j]);
#pragma unroll
                    for (int i = 0; i < 8; i++) ss[j] = __fmaf_rn(v[j][i], v[j][i], ss[j]);
                }
            }
#pragma unroll
            for (int j = 0; j < 2; j++) {
                const float t = warp_sum_bfly(ss[j]);
                if (lane == 0 && vw0 + j * GW < nvw) s_wsum[m * 32 + vw0 + j * GW] = t;
            }
        }
    }
    __syncthreads();
    const T* w = reinterpret_cast<const T*>(n.w);
    for (int m = 0; m < M; m++) {
        const float ss = warp_sum_bfly(lane < nvw ? s_wsum[m * 32 + lane] : 0.f);
        const float var = __fdiv_rn(ss, (float)k);
        const float r = __frcp_rn(__fsqrt_rn(__fadd_rn(var, n.eps)));
        for (unsigned d0 = threadIdx.x * 8u; d0 < k; d0 += blockDim.x * 8u) {
            float v[8], wv[8];
            ld8<T>(xs + (size_t)m * k + d0, v);  // the sums, stored before the barrier
            ld8<T>(w + d0, wv);
#pragma unroll
            for (int i = 0; i < 8; i++) {
                const float nv = __fmul_rn(v[i], r);
                v[i] = n.one_plus ? __fmul_rn(nv, __fadd_rn(wv[i], 1.f)) : __fmul_rn(round_t<T>(nv), wv[i]);
            }
            st8<T>(xs + (size_t)m * k + d0, v);
        }
    }
    __syncthreads();
}

// ---------------------------------------------------------------- RMSNorm folded into the GEMVs
// At one row of x, the RMSNorm between a projection (o_proj, down_proj) and the next GEMVs
// (gate/up, the next layer's q/k/v) needs no launch and no serial tail: norm(s) = s * w' / rms(s)
// (w' = w, or 1 + w for Gemma), and 1 / rms(s) is one scalar, so
//   W norm(s) = (W (s * w')) / rms(s).
// The projection's blocks add the residual (s = rnd(resid + a), each block its own rows), write
// xw = rnd(s * w') for the next GEMV and the sum of squares of their rows to partials[block]
// (SUMSQ); the next GEMV reads xw as its x and multiplies its sums by 1 / rms(s), summing the
// partials itself (FOLD, in a fixed order: deterministic). Against the unfused pair, the rounding
// of the normed x differs (rnd(s * w') here, rnd(rnd(s * r) * w) there): the results agree
// within T's rounding, not bit for bit (tests/gpu_kernels.rs). (Multiplying x by w' inside the
// next GEMV's loop instead made the step 10% slower on TinyLlama, 5% on Mistral-7B, on an H100:
// bench/gpu/results/h100-2026-11-27-s9-fold-ab.*.) The engine's decode takes it by default with
// lane scales (GEMV_FOLD_LS below; crates/qlora-engine/src/model/fast.rs `fold_on`).
struct SumSq {
    const void* resid;  // T[n]
    const void* w;      // T[n]: the next norm's weight
    void* s;            // T[n]: resid + this GEMV's output
    void* xw;           // T[n]: s * w' (w' = w, or 1 + w with one_plus)
    float* partials;    // [blocks]: each block's sum of s^2 over its rows
    int one_plus;
    int early;          // resid and w 8-byte aligned: the lane-scale kernels copy them early (SumSqHook)
};
struct FoldIn {
    const float* partials;  // [np]
    unsigned np;            // a multiple of 4, at most FOLD_P4 * 4 * blockDim.x
    float eps;
};
#define FOLD_P4 2

// The partials into shared memory with cp.async (issued after the wait; no register holds them
// through the dot products, which the float4 loads took to 72-80 registers with spills), each
// thread its own 16-byte slots, summed after the dot products (fold_rinv).
__device__ __forceinline__ void fold_load(const FoldIn& f, float4* s_part) {
#pragma unroll
    for (int i = 0; i < FOLD_P4; i++) {
        const unsigned j = threadIdx.x + i * blockDim.x;
        if (j * 4u < f.np) {
            const unsigned sa = (unsigned)__cvta_generic_to_shared(s_part + j);
            asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(sa), "l"(f.partials + 4u * j) : "memory");
        } else {
            s_part[j] = make_float4(0.f, 0.f, 0.f, 0.f);
        }
    }
    asm volatile("cp.async.commit_group;" ::: "memory");
}
// Once fold_load's copy has landed, each warp's sum of its threads' partials into s_ss[warp].
__device__ __forceinline__ void fold_warp_sums(const float4* s_part, float* s_ss) {
    asm volatile("cp.async.wait_all;" ::: "memory");
    float ss = 0.f;
#pragma unroll
    for (int i = 0; i < FOLD_P4; i++) {
        const float4 v = s_part[threadIdx.x + i * blockDim.x];
        ss = ss + v.x + v.y + v.z + v.w;
    }
    ss = warp_sum_bfly(ss);
    if ((threadIdx.x & 31u) == 0) s_ss[threadIdx.x >> 5] = ss;
}
// 1 / rms(s) from the warp sums in s_ss (after a barrier), in a fixed order.
__device__ __forceinline__ float fold_rinv_of(const float* s_ss, unsigned k, float eps) {
    float t = 0.f;
#pragma unroll
    for (int w = 0; w < GW; w++) t += s_ss[w];
    return __frcp_rn(__fsqrt_rn(__fadd_rn(__fdiv_rn(t, (float)k), eps)));
}
// 1 / rms(s) from the partials, block-wide (every thread gets it).
__device__ __forceinline__ float fold_rinv(const FoldIn& f, const float4* s_part, unsigned k) {
    __shared__ float s_ss[GW];
    fold_warp_sums(s_part, s_ss);
    __syncthreads();
    return fold_rinv_of(s_ss, k, f.eps);
}

// res[0 .. NR) times 1 / rms(s), once the partials' copy (fold_load) is issued and res filled.
template <int NR>
__device__ __forceinline__ void fold_scale(const FoldIn& fin, const float4* s_part, unsigned k, float* res) {
    const float ri = fold_rinv(fin, s_part, k);
    if (threadIdx.x < NR) res[threadIdx.x] = __fmul_rn(res[threadIdx.x], ri);
    __syncthreads();
}

// The dot products of a FOLD GEMV at one row of x (dot_rows), times 1 / rms(s): res[r] for its
// NR rows, readable by every thread after the call.
template <typename T, int NR>
__device__ __forceinline__ void fold_dot_rows(const RowRef (&rows)[NR], const float* s_scale, const float* s_code,
                                              const T* __restrict__ x, unsigned k, float* res, const FoldIn& fin) {
    __shared__ float4 s_part[FOLD_P4 * GW * 32];
    fold_load(fin, s_part);
    dot_rows<T, 1, NR, Tile<1>::U>(rows, s_scale, s_code, x, k, res);
    fold_scale<NR>(fin, s_part, k, res);
}

// The folded norm in the lane-scale core: the partials' copy goes out right after the wait,
// behind the first step's weight loads; each warp sums them into s_ss before the core's
// reduction barrier, and the threads that add up a row's warp sums multiply it by 1 / rms(s)
// (fold_rinv's two halves, without its two barriers).
struct FoldHook {
    const FoldIn* f;
    float4* s_part;
    float* s_ss;
    unsigned k;
    __device__ void after_wait() const { fold_load(*f, s_part); }
    __device__ void before_reduce() const { fold_warp_sums(s_part, s_ss); }
    __device__ float finish(float v) const { return __fmul_rn(v, fold_rinv_of(s_ss, k, f->eps)); }
};
template <typename T, int NR, typename SegAt, int LSU>
__device__ __forceinline__ void fold_dot_rows_ls(const RowRef (&rows)[NR], const float* s_code, const T* __restrict__ x,
                                                 unsigned k, float* res, const FoldIn& fin, SegAt seg_at,
                                                 const unsigned* lr, const float* s_ncode) {
    __shared__ float4 s_part[FOLD_P4 * GW * 32];
    __shared__ float s_ss[GW];
    dot_rows<T, 1, NR, Tile<1>::U, true, SegAt, LSU>(rows, nullptr, s_code, x, k, res, seg_at, lr, s_ncode,
                                                     FoldHook{&fin, s_part, s_ss, k});
}

// The projection of the folded norm in the lane-scale core: with `early`, thread 0 copies the
// block's 4 rows of the residual and of the norm weight (8 bytes each) into s_rw right after
// the wait, so the block's last step (the sum, s * w, the partial) reads shared memory instead
// of waiting on two more loads.
struct SumSqHook {
    const SumSq* sq;
    unsigned row0;
    bool early;
    uint2* s_rw;
    __device__ void after_wait() const {
        if (early && threadIdx.x == 0) {
            const unsigned a = (unsigned)__cvta_generic_to_shared(s_rw), b = (unsigned)__cvta_generic_to_shared(s_rw + 1);
            asm volatile("cp.async.ca.shared.global [%0], [%1], 8;" ::"r"(a), "l"(reinterpret_cast<const char*>(sq->resid) + 2u * row0) : "memory");
            asm volatile("cp.async.ca.shared.global [%0], [%1], 8;" ::"r"(b), "l"(reinterpret_cast<const char*>(sq->w) + 2u * row0) : "memory");
            asm volatile("cp.async.commit_group;" ::: "memory");
        }
    }
    __device__ void before_reduce() const {
        if (early && threadIdx.x == 0) asm volatile("cp.async.wait_all;" ::: "memory");
    }
    __device__ float finish(float v) const { return v; }
};

// y[m, ntotal]: row r of the stacked weights goes to column seg.col0 + (r - first row of seg).
// The byte offset of the normed x after NR rows' block scales in the dynamic shared memory.
__device__ __forceinline__ unsigned xs_offset(int nr, unsigned k) { return ((unsigned)nr * (k >> 5) * 4u + 15u) & ~15u; }

// With NORM, x is unused: the block computes its input from `nin` (norm_prologue).
// FOLD (one row of x): x is the xw of a folded norm (fin); SUMSQ (one row of x, one
// weight): y is unused, the block writes s = resid + its output and its partial sum of squares.
// RS: the row-by-row scale fill (fill_scales).
// RB: rows a block (0: Tile<M>::R).
template <typename T, int M, bool NORM = false, bool PF = QLORA_GEMV_BULK_PREFETCH != 0, bool FOLD = false, bool SUMSQ = false, bool RS = false, bool LS = false, int LSU = 0, int RB = 0>
__device__ void gemv_multi_impl(const Nf4Multi& p, const T* __restrict__ x, T* __restrict__ y, unsigned k,
                                const NormIn& nin = NormIn{}, const FoldIn& fin = FoldIn{}, const SumSq& sq = SumSq{}) {
    static_assert(!(FOLD || SUMSQ) || (M == 1 && !NORM), "the folded norm takes one row of x");
    static_assert(!LS || (!NORM && M == 1), "lane scales: one row of x, not the norm prologue");
    constexpr int R = RB > 0 ? RB : Tile<M>::R;
    __shared__ float s_code[16];
    __shared__ float s_ncode[LS ? 256 : 1];
    __shared__ float s_res[M * R];
    extern __shared__ float s_scale[];
    if (threadIdx.x < 16) s_code[threadIdx.x] = p.tables[threadIdx.x];
    if constexpr (LS)
        for (unsigned i = threadIdx.x; i < 256u; i += blockDim.x) s_ncode[i] = p.tables[16 + i];
    const unsigned row0 = blockIdx.x * R, stride = k >> 5;
    __shared__ uint2 s_rw[SUMSQ ? 2 : 1];  // SumSqHook's copies (lane scales)
    bool early = false;
    RowRef rows[R];
    unsigned si[R], lr[R];
#pragma unroll
    for (int r = 0; r < R; r++) {
        si[r] = locate(p, min(row0 + r, p.ntotal - 1), &lr[r]);
        const Nf4Seg& s = p.seg[si[r]];
        rows[r] = RowRef{s.packed + (size_t)lr[r] * (k >> 1), s.bs_log2};
    }
    if constexpr (LS) {
        __syncthreads();  // the tables; dot_rows waits for x
        auto seg_at = [&](int r) -> const Nf4Seg& { return p.seg[si[r]]; };
        if constexpr (FOLD) {
            fold_dot_rows_ls<T, R, decltype(seg_at), LSU>(rows, s_code, x, k, s_res, fin, seg_at, lr, s_ncode);
        } else if constexpr (SUMSQ) {
            static_assert(R == 4 && sizeof(T) == 2, "SumSqHook copies 4 rows of a 16-bit T");
            early = sq.early != 0 && row0 + R <= p.ntotal;
            dot_rows<T, M, R, Tile<M>::U, true, decltype(seg_at), LSU>(rows, s_scale, s_code, x, k, s_res, seg_at, lr, s_ncode,
                                                                       SumSqHook{&sq, row0, early, s_rw});
        } else {
            dot_rows<T, M, R, Tile<M>::U, true, decltype(seg_at), LSU>(rows, s_scale, s_code, x, k, s_res, seg_at, lr, s_ncode);
        }
    } else {
    fill_scales<R, PF, RS>([&](int r) -> const Nf4Seg& { return p.seg[si[r]]; }, lr, k, p.tables + 16, s_scale, stride);
    // The scales and tables are constant during a step: resolved before the wait.
    if (NORM ? nin.prefetch != 0 : p.prefetch != 0) prefetch_rows<R>(rows, k);
    pdl_wait();
    pdl_launch_dependents();
    __syncthreads();
    if constexpr (NORM) {
        T* xs = reinterpret_cast<T*>(reinterpret_cast<char*>(s_scale) + xs_offset(R, k));
        norm_prologue<T, M>(nin, k, xs);
        dot_rows<SmemX<T>, M, R, Tile<M>::U>(rows, s_scale, s_code, reinterpret_cast<const SmemX<T>*>(xs), k, s_res);
    } else if constexpr (FOLD) {
        fold_dot_rows<T, R>(rows, s_scale, s_code, x, k, s_res, fin);
    } else {
        dot_rows<T, M, R, Tile<M>::U>(rows, s_scale, s_code, x, k, s_res);
    }
    }
    if constexpr (SUMSQ) {
        if (threadIdx.x < 32) {
            float v2 = 0.f;
            const unsigned row = row0 + threadIdx.x;
            if (threadIdx.x < R && row < p.ntotal) {
                const T a = from_f32<T>(with_bias<T>(p.seg[0], row, s_res[threadIdx.x]));
                const T* rs = early ? reinterpret_cast<const T*>(&s_rw[0]) : reinterpret_cast<const T*>(sq.resid) + row0;
                const T* ws = early ? reinterpret_cast<const T*>(&s_rw[1]) : reinterpret_cast<const T*>(sq.w) + row0;
                const float sv = round_t<T>(__fadd_rn(to_f32<T>(rs[threadIdx.x]), to_f32<T>(a)));
                reinterpret_cast<T*>(sq.s)[row] = from_f32<T>(sv);
                const float wv = to_f32<T>(ws[threadIdx.x]);
                reinterpret_cast<T*>(sq.xw)[row] = from_f32<T>(__fmul_rn(sv, sq.one_plus ? __fadd_rn(wv, 1.f) : wv));
                v2 = __fmul_rn(sv, sv);
            }
            v2 += __shfl_xor_sync(0xffffffffu, v2, 1);
            v2 += __shfl_xor_sync(0xffffffffu, v2, 2);
            if (threadIdx.x == 0) sq.partials[blockIdx.x] = v2;
        }
        return;
    }
    if (threadIdx.x < M * R) {
        const unsigned m = threadIdx.x / R, r = threadIdx.x % R;
        if (row0 + r < p.ntotal) {
            unsigned lr;
            const Nf4Seg& s = p.seg[locate(p, row0 + r, &lr)];
            y[(size_t)m * p.ntotal + s.col0 + lr] = from_f32<T>(with_bias<T>(s, lr, s_res[m * R + r]));
        }
    }
}

// act: 0 = silu, 1 = gelu (tanh approximation), 2 = gelu (erf).
__device__ __forceinline__ float glu_act(float v, int act) {
    if (act == 0) return v / (1.f + expf(-v));
    if (act == 1) {
        const float c = 0.7978845608028654f;  // sqrt(2/pi)
        return 0.5f * v * (1.f + tanhf(c * (v + 0.044715f * v * v * v)));
    }
    return 0.5f * v * (1.f + erff(v * 0.7071067811865476f));
}

// RG: rows of gate (and of up) a block (0: Tile<M>::R).
template <typename T, int M, bool NORM = false, bool PF = QLORA_GEMV_BULK_PREFETCH != 0, bool FOLD = false, bool LS = false, int RG = 0>
__device__ void gemv_glu_impl(const Nf4Seg& gate, const Nf4Seg& up, const float* tables, int act,
                              const T* __restrict__ x, T* __restrict__ y, unsigned n, unsigned k,
                              const NormIn& nin = NormIn{}, const FoldIn& fin = FoldIn{}) {
    static_assert(!FOLD || (M == 1 && !NORM), "the folded norm takes one row of x");
    static_assert(!LS || (!NORM && M == 1), "lane scales: one row of x, not the norm prologue");
    constexpr int R = RG > 0 ? RG : Tile<M>::R, NR = 2 * R;
    __shared__ float s_code[16];
    __shared__ float s_ncode[LS ? 256 : 1];
    __shared__ float s_res[M * NR];
    extern __shared__ float s_scale[];
    if (threadIdx.x < 16) s_code[threadIdx.x] = tables[threadIdx.x];
    if constexpr (LS)
        for (unsigned i = threadIdx.x; i < 256u; i += blockDim.x) s_ncode[i] = tables[16 + i];
    const unsigned row0 = blockIdx.x * R, stride = k >> 5;
    RowRef rows[NR];
    unsigned lr[NR];
#pragma unroll
    for (int r = 0; r < R; r++) {
        const unsigned row = min(row0 + r, n - 1);
        rows[r] = RowRef{gate.packed + (size_t)row * (k >> 1), gate.bs_log2};
        rows[R + r] = RowRef{up.packed + (size_t)row * (k >> 1), up.bs_log2};
        lr[r] = lr[R + r] = row;
    }
    if constexpr (LS) {
        __syncthreads();  // the tables; dot_rows waits for x
        auto seg_at = [&](int r) -> const Nf4Seg& { return r < R ? gate : up; };
        if constexpr (FOLD) fold_dot_rows_ls<T, NR, decltype(seg_at), 0>(rows, s_code, x, k, s_res, fin, seg_at, lr, s_ncode);
        else dot_rows<T, M, NR, Tile<M>::U, true>(rows, s_scale, s_code, x, k, s_res, seg_at, lr, s_ncode);
    } else {
    fill_scales<NR, PF, false>([&](int r) -> const Nf4Seg& { return r < R ? gate : up; }, lr, k, tables + 16, s_scale, stride);
    // As gemv_multi_impl: the constant scales first, then the wait for x.
    if constexpr (NORM) {
        if (nin.prefetch) prefetch_rows<NR>(rows, k);
    }
    pdl_wait();
    pdl_launch_dependents();
    __syncthreads();
    if constexpr (NORM) {
        T* xs = reinterpret_cast<T*>(reinterpret_cast<char*>(s_scale) + xs_offset(NR, k));
        norm_prologue<T, M>(nin, k, xs);
        dot_rows<SmemX<T>, M, NR, Tile<M>::U>(rows, s_scale, s_code, reinterpret_cast<const SmemX<T>*>(xs), k, s_res);
    } else if constexpr (FOLD) {
        fold_dot_rows<T, NR>(rows, s_scale, s_code, x, k, s_res, fin);
    } else {
        dot_rows<T, M, NR, Tile<M>::U>(rows, s_scale, s_code, x, k, s_res);
    }
    }
    if (threadIdx.x < M * R) {
        const unsigned m = threadIdx.x / R, r = threadIdx.x % R, row = row0 + r;
        if (row < n) {
            float a = round_t<T>(glu_act(round_t<T>(with_bias<T>(gate, row, s_res[m * NR + r])), act));
            y[(size_t)m * n + row] = from_f32<T>(__fmul_rn(a, round_t<T>(with_bias<T>(up, row, s_res[m * NR + R + r]))));
        }
    }
}

// ---------------------------------------------------------------- GEMV + residual add + RMSNorm
// A single-weight GEMV (o_proj, down_proj) whose output a feeds the next residual add and
// RMSNorm: out[0 .. M*n) = s = rnd(resid + a), out[M*n ..) = norm(s) (Llama: rnd(rnd(s * r) * w),
// Gemma's one_plus: rnd(s * r * (1 + w)), r = 1 / sqrt(mean(s^2) + eps)), as kernels/infer.cu's
// add_rms_norm computes them. The norm needs the whole row of a, which every block only has a
// piece of: each block writes its outputs to `a`, and the last block to finish (a device-wide
// counter, reset by that block for the next launch) computes the M rows' norms. That replaces
// a kernel launch, and its wait for this one to drain, by a tail in one block.
// Measured slower on an H100 (the engine keeps it off by default, model/fast.rs): the tail's
// loop issues each iteration's loads after the previous iteration's store (resid and out may
// alias), about one L2 round trip per 128 elements; it needs the row loaded into registers
// first, all loads in flight, before any store.
struct NormTail {
    const void* resid;  // T[M, n]
    const void* w;      // T[n]
    void* out;          // T[2, M, n]
    unsigned* counter;  // zero before the launch; zero again after it
    float eps;
    int one_plus;
};

__device__ __forceinline__ float block_sum_f(float v, float* scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    float r = lane < nw ? scratch[lane] : 0.f;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) r += __shfl_xor_sync(0xffffffffu, r, o);
    return r;
}

template <typename T>
__device__ __forceinline__ float ld_cg(const T* p);
template <> __device__ __forceinline__ float ld_cg<float>(const float* p) { return __ldcg(p); }
template <> __device__ __forceinline__ float ld_cg<__nv_bfloat16>(const __nv_bfloat16* p) {
    return __uint_as_float((uint32_t)__ldcg(reinterpret_cast<const unsigned short*>(p)) << 16);
}
template <> __device__ __forceinline__ float ld_cg<__half>(const __half* p) {
    return __half2float(__ushort_as_half(__ldcg(reinterpret_cast<const unsigned short*>(p))));
}

// 8 values of a 16-byte load of a 16-bit T as f32.
template <typename T>
__device__ __forceinline__ void unpack8(const uint4& r, float* v) {
    const uint32_t w[4] = {r.x, r.y, r.z, r.w};
#pragma unroll
    for (int i = 0; i < 4; i++) {
        if constexpr (sizeof(T) == 2 && std::is_same<T, __half>::value) {
            const float2 f = __half22float2(*reinterpret_cast<const __half2*>(&w[i]));
            v[2 * i] = f.x; v[2 * i + 1] = f.y;
        } else {
            v[2 * i] = __uint_as_float(w[i] << 16);
            v[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
        }
    }
}

// The tail's add and norm with every load of a pass issued before any is used (16-bit T, n a
// multiple of 8, at most 8 * NT_CH * blockDim.x): each thread holds NT_CH chunks of 8 of the
// row in registers between the sum, the block reduction and the norm. Same rounding as the
// scalar form; the sum of squares is reduced in another order.
#define NT_CH 4
template <typename T, int M>
__device__ void norm_tail_vec(const T* resid, const T* a, const T* w, T* sum_out, T* norm_out, unsigned n, float eps,
                              int one_plus, float* scratch) {
    for (int m = 0; m < M; m++) {
        uint4 rr[NT_CH], ra[NT_CH];
#pragma unroll
        for (int c = 0; c < NT_CH; c++) {
            const unsigned i = (threadIdx.x + c * blockDim.x) * 8u;
            if (i < n) {
                rr[c] = __ldg(reinterpret_cast<const uint4*>(resid + (size_t)m * n + i));
                ra[c] = __ldcg(reinterpret_cast<const uint4*>(a + (size_t)m * n + i));
            }
        }
        float v[NT_CH][8], ss = 0.f;
#pragma unroll
        for (int c = 0; c < NT_CH; c++) {
            const unsigned i = (threadIdx.x + c * blockDim.x) * 8u;
            if (i < n) {
                float av[8];
                unpack8<T>(rr[c], v[c]);
                unpack8<T>(ra[c], av);
#pragma unroll
                for (int j = 0; j < 8; j++) {
                    v[c][j] = round_t<T>(__fadd_rn(v[c][j], av[j]));
                    ss = __fmaf_rn(v[c][j], v[c][j], ss);
                }
                store8(sum_out + (size_t)m * n + i, v[c]);
            }
        }
        ss = block_sum_f(ss, scratch);
        const float var = __fdiv_rn(ss, (float)n);
        const float r = __frcp_rn(__fsqrt_rn(__fadd_rn(var, eps)));
        uint4 rw[NT_CH];
#pragma unroll
        for (int c = 0; c < NT_CH; c++) {
            const unsigned i = (threadIdx.x + c * blockDim.x) * 8u;
            if (i < n) rw[c] = __ldg(reinterpret_cast<const uint4*>(w + i));
        }
#pragma unroll
        for (int c = 0; c < NT_CH; c++) {
            const unsigned i = (threadIdx.x + c * blockDim.x) * 8u;
            if (i < n) {
                float wv[8];
                unpack8<T>(rw[c], wv);
#pragma unroll
                for (int j = 0; j < 8; j++) {
                    const float nv = __fmul_rn(v[c][j], r);
                    v[c][j] = one_plus ? __fmul_rn(nv, __fadd_rn(wv[j], 1.f)) : __fmul_rn(round_t<T>(nv), wv[j]);
                }
                store8(norm_out + (size_t)m * n + i, v[c]);
            }
        }
    }
}

template <typename T, int M, bool RS = false, bool LS = false, int LSU = 0>
__device__ void gemv_norm_impl(const Nf4Multi& p, const T* __restrict__ x, T* __restrict__ a, unsigned k, const NormTail& t) {
    gemv_multi_impl<T, M, false, false, false, false, RS, LS, LSU>(p, x, a, k);
    __shared__ unsigned s_last;
    __shared__ float s_scratch[32];
    // The block's outputs, then its count: the barrier orders every thread's stores before
    // thread 0's release (cumulative), and the last block's acquire sees all blocks' outputs (a
    // fence.sc in every block, as __threadfence compiles to, cost each block about a microsecond).
    __syncthreads();
    if (threadIdx.x == 0) {
        unsigned prev;
        asm volatile("atom.add.acq_rel.gpu.u32 %0, [%1], 1;" : "=r"(prev) : "l"(t.counter) : "memory");
        s_last = prev == gridDim.x - 1;
    }
    __syncthreads();
    if (!s_last) return;
    const unsigned n = p.ntotal;
    const T* resid = reinterpret_cast<const T*>(t.resid);
    const T* w = reinterpret_cast<const T*>(t.w);
    T* sum_out = reinterpret_cast<T*>(t.out);
    T* norm_out = sum_out + (size_t)M * n;
    if constexpr (sizeof(T) == 2 && M == 1) {  // more rows of x: the scalar tail (registers)
        if (n % 8 == 0 && n <= 8u * NT_CH * blockDim.x) {
            norm_tail_vec<T, M>(resid, a, w, sum_out, norm_out, n, t.eps, t.one_plus, s_scratch);
            if (threadIdx.x == 0) *t.counter = 0u;
            return;
        }
    }
    for (int m = 0; m < M; m++) {
        float ss = 0.f;
        for (unsigned i = threadIdx.x; i < n; i += blockDim.x) {
            const size_t at = (size_t)m * n + i;
            const float v = round_t<T>(__fadd_rn(to_f32<T>(resid[at]), ld_cg<T>(a + at)));
            sum_out[at] = from_f32<T>(v);
            ss = __fmaf_rn(v, v, ss);
        }
        ss = block_sum_f(ss, s_scratch);
        const float var = __fdiv_rn(ss, (float)n);
        const float r = __frcp_rn(__fsqrt_rn(__fadd_rn(var, t.eps)));
        for (unsigned i = threadIdx.x; i < n; i += blockDim.x) {
            const size_t at = (size_t)m * n + i;
            const float nv = __fmul_rn(to_f32<T>(sum_out[at]), r);
            const float wv = to_f32<T>(w[i]);
            norm_out[at] = from_f32<T>(t.one_plus ? __fmul_rn(nv, __fadd_rn(wv, 1.f)) : __fmul_rn(round_t<T>(nv), wv));
        }
    }
    if (threadIdx.x == 0) *t.counter = 0u;
}

// M = 1 is held to 8 blocks an SM (64 registers, as the plain GEMV); its vector tail would take 80.
// `_rs_` (M = 1): the row-by-row scale fill, which the host picks for rows of k <= 2048
// (fill_scales: TinyLlama's o_proj, where one pass measured slower).
#define GEMV_NORM_LB(T, SUFFIX, M, LB)                                                               \
    extern "C" __global__ void LB nf4_gemv_norm_##SUFFIX##_m##M(                                     \
        Nf4Multi p, const T* x, T* a, unsigned k, NormTail t) {                                      \
        gemv_norm_impl<T, M>(p, x, a, k, t);                                                         \
    }
#define GEMV_NORM(T, SUFFIX, M) GEMV_NORM_LB(T, SUFFIX, M, __launch_bounds__(GW * 32))
#define GEMV_NORM_ALL_M(T, SUFFIX) \
    GEMV_NORM_LB(T, SUFFIX, 1, __launch_bounds__(GW * 32, 8)) GEMV_NORM(T, SUFFIX, 2) GEMV_NORM(T, SUFFIX, 3) \
    GEMV_NORM(T, SUFFIX, 4) GEMV_NORM(T, SUFFIX, 5) GEMV_NORM(T, SUFFIX, 6) GEMV_NORM(T, SUFFIX, 7) GEMV_NORM(T, SUFFIX, 8)
GEMV_NORM_ALL_M(float, f32)
GEMV_NORM_ALL_M(__nv_bfloat16, bf16)
GEMV_NORM_ALL_M(__half, f16)
#define GEMV_NORM_RS(T, SUFFIX)                                                                       \
    extern "C" __global__ void __launch_bounds__(GW * 32, 8) nf4_gemv_norm_rs_##SUFFIX##_m1(           \
        Nf4Multi p, const T* x, T* a, unsigned k, NormTail t) {                                      \
        gemv_norm_impl<T, 1, true>(p, x, a, k, t);                                                   \
    }
GEMV_NORM_RS(float, f32) GEMV_NORM_RS(__nv_bfloat16, bf16) GEMV_NORM_RS(__half, f16)

// The GLU at one row of x asks for 7 blocks an SM (72 registers, its budget in build.rs): with
// its 8 loads issued together, the default placement took 64 and was slower on Mistral-7B
// (38.1 against 37.4 us, h100-2026-11-27-s7-micro-clamp.jsonl).
// (A minimum of 1 block for the others would change their register choice: 127 at M = 2.)
#define GLU_LB_1 __launch_bounds__(GW * 32, 7)
#define GLU_LB_2 __launch_bounds__(GW * 32)
#define GLU_LB_3 __launch_bounds__(GW * 32)
#define GLU_LB_4 __launch_bounds__(GW * 32)
#define GLU_LB_5 __launch_bounds__(GW * 32)
#define GLU_LB_6 __launch_bounds__(GW * 32)
#define GLU_LB_7 __launch_bounds__(GW * 32)
#define GLU_LB_8 __launch_bounds__(GW * 32)
#define GEMV_FUSED(T, SUFFIX, M)                                                                      \
    extern "C" __global__ void __launch_bounds__(GW * 32) nf4_gemv_multi_##SUFFIX##_m##M(             \
        Nf4Multi p, const T* x, T* y, unsigned k) {                                                  \
        gemv_multi_impl<T, M>(p, x, y, k);                                                           \
    }                                                                                                \
    extern "C" __global__ void GLU_LB_##M nf4_gemv_glu_##SUFFIX##_m##M(                                 \
        Nf4Seg gate, Nf4Seg up, const float* tables, int act, const T* x, T* y, unsigned n, unsigned k) { \
        gemv_glu_impl<T, M>(gate, up, tables, act, x, y, n, k);                                     \
    }
// The same launches with the RMSNorm prologue (the input is computed from `nin`; x unused).
// The stacked GEMV is held to 6 blocks an SM (80 registers, as the plain one), where the
// prologue's two-warps-at-a-time loads would otherwise take 96.
#define GEMV_NORMIN(T, SUFFIX, M)                                                                     \
    extern "C" __global__ void __launch_bounds__(GW * 32, 6) nf4_gemv_multi_normin_##SUFFIX##_m##M(      \
        Nf4Multi p, T* y, unsigned k, NormIn nin) {                                                  \
        gemv_multi_impl<T, M, true>(p, nullptr, y, k, nin);                                          \
    }                                                                                                \
    extern "C" __global__ void __launch_bounds__(GW * 32) nf4_gemv_glu_normin_##SUFFIX##_m##M(        \
        Nf4Seg gate, Nf4Seg up, const float* tables, int act, T* y, unsigned n, unsigned k, NormIn nin) { \
        gemv_glu_impl<T, M, true>(gate, up, tables, act, nullptr, y, n, k, nin);                     \
    }
// Rows of x 1 and 2 only (host: NORMIN_MAX_ROWS in src/cuda/fused.rs): the normed x of more
// rows takes too much shared memory at Mistral-7B's width in f32, and decode at batch 1-2 is
// where the launches it saves matter.
#define GEMV_NORMIN_ALL_M(T, SUFFIX) GEMV_NORMIN(T, SUFFIX, 1) GEMV_NORMIN(T, SUFFIX, 2)
GEMV_NORMIN_ALL_M(float, f32)
GEMV_NORMIN_ALL_M(__nv_bfloat16, bf16)
GEMV_NORMIN_ALL_M(__half, f16)

// The same with each block's rows asked of L2 before the wait (fill_row_scales<true>), for
// short rows at 1-2 rows of x (host: `bulk_prefetch` in src/cuda/fused.rs).
#define GEMV_FUSED_PF(T, SUFFIX, M)                                                                   \
    extern "C" __global__ void __launch_bounds__(GW * 32) nf4_gemv_multi_pf_##SUFFIX##_m##M(          \
        Nf4Multi p, const T* x, T* y, unsigned k) {                                                  \
        gemv_multi_impl<T, M, false, true, false, false, true>(p, x, y, k);                          \
    }                                                                                                \
    extern "C" __global__ void __launch_bounds__(GW * 32) nf4_gemv_glu_pf_##SUFFIX##_m##M(            \
        Nf4Seg gate, Nf4Seg up, const float* tables, int act, const T* x, T* y, unsigned n, unsigned k) { \
        gemv_glu_impl<T, M, false, true>(gate, up, tables, act, x, y, n, k);                        \
    }
GEMV_FUSED_PF(float, f32, 1) GEMV_FUSED_PF(float, f32, 2)
GEMV_FUSED_PF(__nv_bfloat16, bf16, 1) GEMV_FUSED_PF(__nv_bfloat16, bf16, 2)
GEMV_FUSED_PF(__half, f16, 1) GEMV_FUSED_PF(__half, f16, 2)

// The folded norm's launches (one row of x, 16-bit T; host: fused.rs `gemv_add_sumsq_into`,
// `fold_gemv_*_into`): the projection that adds the residual and writes its partial sums of
// squares, and the q/k/v and gate/up GEMVs that take the folded input; `_pf` as above.
// 7 blocks an SM (72 registers; at 64 they spilled), 6 with the prefetch (80).
#define FOLD_LB_false __launch_bounds__(GW * 32, 7)
#define FOLD_LB_true __launch_bounds__(GW * 32, 6)
#define GEMV_FOLD(T, SUFFIX, PFX, PF)                                                                  \
    extern "C" __global__ void FOLD_LB_##PF nf4_gemv_sumsq_##PFX##SUFFIX##_m1(                          \
        Nf4Multi p, const T* x, unsigned k, SumSq sq) {                                                \
        gemv_multi_impl<T, 1, false, PF, false, true>(p, x, nullptr, k, NormIn{}, FoldIn{}, sq);       \
    }                                                                                                  \
    extern "C" __global__ void FOLD_LB_##PF nf4_gemv_multi_fold_##PFX##SUFFIX##_m1(                       \
        Nf4Multi p, const T* x, T* y, unsigned k, FoldIn f) {                                          \
        gemv_multi_impl<T, 1, false, PF, true>(p, x, y, k, NormIn{}, f);                               \
    }                                                                                                  \
    extern "C" __global__ void GLU_LB_1 nf4_gemv_glu_fold_##PFX##SUFFIX##_m1(                           \
        Nf4Seg gate, Nf4Seg up, const float* tables, int act, const T* x, T* y, unsigned n, unsigned k, FoldIn f) { \
        gemv_glu_impl<T, 1, false, PF, true>(gate, up, tables, act, x, y, n, k, NormIn{}, f);          \
    }
GEMV_FOLD(__nv_bfloat16, bf16, , false) GEMV_FOLD(__nv_bfloat16, bf16, pf_, true)
GEMV_FOLD(__half, f16, , false) GEMV_FOLD(__half, f16, pf_, true)

#define GEMV_FUSED_ALL_M(T, SUFFIX) \
    GEMV_FUSED(T, SUFFIX, 1) GEMV_FUSED(T, SUFFIX, 2) GEMV_FUSED(T, SUFFIX, 3) GEMV_FUSED(T, SUFFIX, 4) \
    GEMV_FUSED(T, SUFFIX, 5) GEMV_FUSED(T, SUFFIX, 6) GEMV_FUSED(T, SUFFIX, 7) GEMV_FUSED(T, SUFFIX, 8)
GEMV_FUSED_ALL_M(float, f32)
GEMV_FUSED_ALL_M(__nv_bfloat16, bf16)
GEMV_FUSED_ALL_M(__half, f16)

// Lane scales (dot_rows_w's LS; host: `lane_scales` in src/cuda/fused.rs), one row of x: each
// lane loads its block scale (q byte and nested absmax) with its weights, and the first loads go
// out before the programmatic-launch wait, instead of a block-wide scale phase, its barrier and
// then the weights. Same results bit for bit. Measured on an H100 (bench/gpu/gemv_micro, session
// 10, h100-2026-11-27-s10-ls-micro.*, us a launch): Mistral-7B's layer 73.3 -> 66.5 (gate/up
// 36.4 -> 32.3, down 19.0 -> 17.0, q/k/v 10.7 -> 9.7, o 6.8 -> 6.6), TinyLlama's 24.5 -> 22.1
// (against the `_pf` kernels too: q/k/v 3.61 -> 3.28, gate/up 9.41 -> 9.11). Loading the scales
// with the weights but only after the wait was slower than the scale phase (layer 75.7 and 28.0).
// The GLU asks for 6 blocks an SM (80 registers): at 7 (72) it spilled and was slower (35.0 us).
// `norm_ls2`: two 16-byte steps in flight a warp (96 registers, 5 blocks an SM), for grids that
// fit the GPU at 5 blocks an SM (host: `norm_kernel`): TinyLlama's down_proj 6.29 -> 5.59 us in
// the micro-benchmark, Mistral-7B's (1024 blocks) 17.0 -> 21.8.
#define GEMV_LS(T, SUFFIX)                                                                              \
    extern "C" __global__ void __launch_bounds__(GW * 32) nf4_gemv_multi_ls_##SUFFIX##_m1(              \
        Nf4Multi p, const T* x, T* y, unsigned k) {                                                     \
        gemv_multi_impl<T, 1, false, false, false, false, false, true>(p, x, y, k);                     \
    }                                                                                                   \
    extern "C" __global__ void __launch_bounds__(GW * 32, 6) nf4_gemv_glu_ls_##SUFFIX##_m1(             \
        Nf4Seg gate, Nf4Seg up, const float* tables, int act, const T* x, T* y, unsigned n, unsigned k) { \
        gemv_glu_impl<T, 1, false, false, false, true>(gate, up, tables, act, x, y, n, k);              \
    }                                                                                                   \
    extern "C" __global__ void __launch_bounds__(GW * 32, 8) nf4_gemv_norm_ls_##SUFFIX##_m1(            \
        Nf4Multi p, const T* x, T* a, unsigned k, NormTail t) {                                         \
        gemv_norm_impl<T, 1, false, true>(p, x, a, k, t);                                               \
    }                                                                                                   \
    extern "C" __global__ void __launch_bounds__(GW * 32, 5) nf4_gemv_norm_ls2_##SUFFIX##_m1(           \
        Nf4Multi p, const T* x, T* a, unsigned k, NormTail t) {                                         \
        gemv_norm_impl<T, 1, false, true, 2>(p, x, a, k, t);                                            \
    }
GEMV_LS(float, f32) GEMV_LS(__nv_bfloat16, bf16) GEMV_LS(__half, f16)

// The folded norm's launches (GEMV_FOLD) with lane scales: the projection that writes the
// partial sums of squares (`sumsq_ls2`: two steps in flight, as `norm_ls2`), and the q/k/v and
// gate/up GEMVs whose blocks copy the partials right after their wait. Host: `lane_scales` and
// `fold_on` (crates/qlora-engine/src/model/fast.rs).
#define GEMV_FOLD_LS(T, SUFFIX)                                                                         \
    extern "C" __global__ void __launch_bounds__(GW * 32, 8) nf4_gemv_sumsq_ls_##SUFFIX##_m1(           \
        Nf4Multi p, const T* x, unsigned k, SumSq sq) {                                                 \
        gemv_multi_impl<T, 1, false, false, false, true, false, true>(p, x, nullptr, k, NormIn{}, FoldIn{}, sq); \
    }                                                                                                   \
    extern "C" __global__ void __launch_bounds__(GW * 32, 5) nf4_gemv_sumsq_ls2_##SUFFIX##_m1(          \
        Nf4Multi p, const T* x, unsigned k, SumSq sq) {                                                 \
        gemv_multi_impl<T, 1, false, false, false, true, false, true, 2>(p, x, nullptr, k, NormIn{}, FoldIn{}, sq); \
    }                                                                                                   \
    extern "C" __global__ void __launch_bounds__(GW * 32, 8) nf4_gemv_multi_fold_ls_##SUFFIX##_m1(         \
        Nf4Multi p, const T* x, T* y, unsigned k, FoldIn f) {                                           \
        gemv_multi_impl<T, 1, false, false, true, false, false, true>(p, x, y, k, NormIn{}, f);         \
    }                                                                                                   \
    extern "C" __global__ void __launch_bounds__(GW * 32, 6) nf4_gemv_glu_fold_ls_##SUFFIX##_m1(        \
        Nf4Seg gate, Nf4Seg up, const float* tables, int act, const T* x, T* y, unsigned n, unsigned k, FoldIn f) { \
        gemv_glu_impl<T, 1, false, false, true, true>(gate, up, tables, act, x, y, n, k, NormIn{}, f);  \
    }
GEMV_FOLD_LS(__nv_bfloat16, bf16) GEMV_FOLD_LS(__half, f16)
// The folded gate/up GEMV with 2 rows of gate and 2 of up a block (twice the blocks, 8 an SM).
#define GEMV_GLU_FOLD_R2(T, SUFFIX)                                                                     \
    extern "C" __global__ void __launch_bounds__(GW * 32, 8) nf4_gemv_glu_fold_ls_r2_##SUFFIX##_m1(     \
        Nf4Seg gate, Nf4Seg up, const float* tables, int act, const T* x, T* y, unsigned n, unsigned k, FoldIn f) { \
        gemv_glu_impl<T, 1, false, false, true, true, 2>(gate, up, tables, act, x, y, n, k, NormIn{}, f); \
    }
GEMV_GLU_FOLD_R2(__nv_bfloat16, bf16) GEMV_GLU_FOLD_R2(__half, f16)
// The folded q/k/v GEMV with 8 rows a block, as the gate/up GEMV's 4 + 4 (half the blocks, 6 an
// SM, twice the bytes a lane in flight; QLORA_QKV_ROWS).
#define GEMV_MULTI_FOLD_R8(T, SUFFIX)                                                                   \
    extern "C" __global__ void __launch_bounds__(GW * 32, 6) nf4_gemv_multi_fold_ls_r8_##SUFFIX##_m1(   \
        Nf4Multi p, const T* x, T* y, unsigned k, FoldIn f) {                                           \
        gemv_multi_impl<T, 1, false, false, true, false, false, true, 0, 8>(p, x, y, k, NormIn{}, f);   \
    }
GEMV_MULTI_FOLD_R8(__nv_bfloat16, bf16) GEMV_MULTI_FOLD_R8(__half, f16)

// ---------------------------------------------------------------- dequantize, 4 groups per thread
// The prefill's dequantize (`cuda::prefill`): as `dequant_impl` (same arithmetic, same bits),
// but a block of 256 threads covers 4 x 256 groups of 8 elements and each thread issues its 4
// loads (packed word + block scale) before any store, so every thread keeps 4 reads in flight
// and the tables are loaded into shared memory once per 8192 elements instead of per 2048.
// Each of the 4 steps is still coalesced: a warp loads 128 contiguous bytes, stores 512 (bf16).
#define DQW_U 4
template <typename T>
__device__ void dequant_wide_impl(const uint8_t* __restrict__ packed, const float* __restrict__ absmax,
                                  const uint8_t* __restrict__ q, const float* __restrict__ nested,
                                  const float* __restrict__ tables, float offset, unsigned bs_log2,
                                  unsigned nbs_log2, int dq, int vec, T* __restrict__ out, size_t n, size_t base) {
    __shared__ float s_code[16];
    __shared__ float s_nested[256];
    load_tables(tables, s_code, s_nested);
    const size_t g0 = (size_t)blockIdx.x * blockDim.x * DQW_U + threadIdx.x;
    uint32_t w[DQW_U];
    float s[DQW_U];
#pragma unroll
    for (int u = 0; u < DQW_U; u++) {
        const size_t e0 = (g0 + (size_t)u * blockDim.x) * 8;
        if (vec && e0 + 8 <= n) {
            const size_t ge0 = base + e0;
            s[u] = block_scale(ge0 >> bs_log2, absmax, q, nested, s_nested, offset, nbs_log2, dq);
            w[u] = *reinterpret_cast<const uint32_t*>(packed + (ge0 >> 1));
        }
    }
#pragma unroll
    for (int u = 0; u < DQW_U; u++) {
        const size_t e0 = (g0 + (size_t)u * blockDim.x) * 8;
        if (e0 >= n) continue;
        if (vec && e0 + 8 <= n) {
            float v[8];
#pragma unroll
            for (int j = 0; j < 4; j++) {
                uint32_t b = (w[u] >> (8 * j)) & 0xffu;
                v[2 * j] = __fmul_rn(s_code[b >> 4], s[u]);
                v[2 * j + 1] = __fmul_rn(s_code[b & 15u], s[u]);
            }
            store8(out + e0, v);
        } else {
            for (size_t e = e0; e < e0 + 8 && e < n; e++) {
                const size_t ge = base + e;
                float sc = block_scale(ge >> bs_log2, absmax, q, nested, s_nested, offset, nbs_log2, dq);
                uint32_t b = packed[ge >> 1];
                uint32_t c = (ge & 1) ? (b & 15u) : (b >> 4);
                out[e] = from_f32<T>(__fmul_rn(s_code[c], sc));
            }
        }
    }
}

#define DEQUANT_WIDE(NAME, T)                                                                         \
    extern "C" __global__ void __launch_bounds__(256) NAME(const uint8_t* packed, const float* absmax, \
                                    const uint8_t* q, const float* nested, const float* tables,      \
                                    float offset, unsigned bs_log2, unsigned nbs_log2, int dq, int vec, \
                                    T* out, unsigned long long n, unsigned long long base) {         \
        dequant_wide_impl<T>(packed, absmax, q, nested, tables, offset, bs_log2, nbs_log2, dq, vec,  \
                             out, (size_t)n, (size_t)base);                                          \
    }
DEQUANT_WIDE(nf4_dequant_wide_bf16, __nv_bfloat16)
DEQUANT_WIDE(nf4_dequant_wide_f16, __half)
