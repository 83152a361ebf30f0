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
// One thread per 4 packed bytes (8 outputs; blocksize >= 32 keeps them in one block).
// `vec` = packed pointer 4-byte aligned: then whole groups use one 32-bit load and one 16/32-byte store.
template <typename T>
__device__ void dequant_impl(const uint8_t* __restrict__ packed, const float* __restrict__ absmax,
                             const uint8_t* __restrict__ q, const float* __restrict__ nested,
                             const float* __restrict__ tables, float offset, unsigned bs_log2,
                             unsigned nbs_log2, int dq, int vec, T* __restrict__ out, size_t n) {
    __shared__ float s_code[16];
    __shared__ float s_nested[256];
    load_tables(tables, s_code, s_nested);
    size_t g = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    size_t e0 = g * 8;
    if (e0 >= n) return;
    float s = block_scale(e0 >> bs_log2, absmax, q, nested, s_nested, offset, nbs_log2, dq);
    if (vec && e0 + 8 <= n) {
        uint32_t w = *reinterpret_cast<const uint32_t*>(packed + g * 4);
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
            uint32_t b = packed[e >> 1];
            uint32_t c = (e & 1) ? (b & 15u) : (b >> 4);
            out[e] = from_f32<T>(__fmul_rn(s_code[c], s));
        }
    }
}

#define DEQUANT(NAME, T)                                                                              \
    extern "C" __global__ void NAME(const uint8_t* packed, const float* absmax, const uint8_t* q,    \
                                    const float* nested, const float* tables, float offset,          \
                                    unsigned bs_log2, unsigned nbs_log2, int dq, int vec, T* out,    \
                                    unsigned long long n) {                                          \
        dequant_impl<T>(packed, absmax, q, nested, tables, offset, bs_log2, nbs_log2, dq, vec, out,  \
                        (size_t)n);                                                                  \
    }
DEQUANT(nf4_dequant_f32, float)
DEQUANT(nf4_dequant_bf16, __nv_bfloat16)
DEQUANT(nf4_dequant_f16, __half)

// ---------------------------------------------------------------- fused GEMV (decode)
// y[m, r] = sum_k x[m, k] * W[r, k] for M <= 8 rows of x. One warp per output row r: each lane
// streams 16-byte chunks of the row's packed bytes (32 weights, inside one block since
// blocksize >= 32 and k % blocksize == 0), looks codes up in shared memory, and accumulates
// code * x in f32 per chunk, scaled once by the block's absmax. The weights are read once,
// past L1 (no_allocate), so x stays cached for the other warps.
// Needs: k % 32 == 0, k % blocksize == 0, packed 16-byte aligned, x rows 16-byte aligned.
__device__ __forceinline__ uint4 ld_stream(const uint4* p) {
    uint4 r;
    asm("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];"
        : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w) : "l"(p));
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

template <typename T, int M>
__device__ void gemv_impl(const uint8_t* __restrict__ packed, const float* __restrict__ absmax,
                          const uint8_t* __restrict__ q, const float* __restrict__ nested,
                          const float* __restrict__ tables, float offset, unsigned bs_log2,
                          unsigned nbs_log2, int dq, const T* __restrict__ x, T* __restrict__ y,
                          unsigned n, unsigned k) {
    __shared__ float s_code[16];
    __shared__ float s_nested[256];
    load_tables(tables, s_code, s_nested);
    const unsigned lane = threadIdx.x & 31u;
    const unsigned row = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (row >= n) return;
    const unsigned chunks = k >> 5;
    const uint4* wrow = reinterpret_cast<const uint4*>(packed + (size_t)row * (k >> 1));
    const size_t row_e0 = (size_t)row * k;
    float acc[M];
#pragma unroll
    for (int m = 0; m < M; m++) acc[m] = 0.f;
#pragma unroll 4
    for (unsigned c = lane; c < chunks; c += 32) {
        uint4 wv = ld_stream(wrow + c);
        float s = block_scale((row_e0 + ((size_t)c << 5)) >> bs_log2, absmax, q, nested, s_nested, offset, nbs_log2, dq);
        uint32_t words[4] = {wv.x, wv.y, wv.z, wv.w};
        float part[M];
#pragma unroll
        for (int m = 0; m < M; m++) part[m] = 0.f;
#pragma unroll
        for (int j = 0; j < 4; j++) {
            float wf[8];
#pragma unroll
            for (int b = 0; b < 4; b++) {
                uint32_t byte = (words[j] >> (8 * b)) & 0xffu;
                wf[2 * b] = s_code[byte >> 4];
                wf[2 * b + 1] = s_code[byte & 15u];
            }
#pragma unroll
            for (int m = 0; m < M; m++) {
                float xv[8];
                load_x8(x + (size_t)m * k + ((size_t)c << 5) + 8 * j, xv);
#pragma unroll
                for (int i = 0; i < 8; i++) part[m] = fmaf(wf[i], xv[i], part[m]);
            }
        }
#pragma unroll
        for (int m = 0; m < M; m++) acc[m] = fmaf(s, part[m], acc[m]);
    }
#pragma unroll
    for (int m = 0; m < M; m++) {
        float v = acc[m];
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
        if (lane == 0) y[(size_t)m * n + row] = from_f32<T>(v);
    }
}

#define GEMV(T, SUFFIX, M)                                                                            \
    extern "C" __global__ void nf4_gemv_##SUFFIX##_m##M(                                              \
        const uint8_t* packed, const float* absmax, const uint8_t* q, const float* nested,           \
        const float* tables, float offset, unsigned bs_log2, unsigned nbs_log2, int dq, const T* x,  \
        T* y, unsigned n, unsigned k) {                                                              \
        gemv_impl<T, M>(packed, absmax, q, nested, tables, offset, bs_log2, nbs_log2, dq, x, y, n, k); \
    }
#define GEMV_ALL_M(T, SUFFIX) \
    GEMV(T, SUFFIX, 1) GEMV(T, SUFFIX, 2) GEMV(T, SUFFIX, 3) GEMV(T, SUFFIX, 4) \
    GEMV(T, SUFFIX, 5) GEMV(T, SUFFIX, 6) GEMV(T, SUFFIX, 7) GEMV(T, SUFFIX, 8)
GEMV_ALL_M(float, f32)
GEMV_ALL_M(__nv_bfloat16, bf16)
GEMV_ALL_M(__half, f16)

// ---------------------------------------------------------------- fused projections (inference)
// Several NF4 weights that read the same x in one launch: q/k/v as one GEMV over their stacked
// rows (`nf4_gemv_multi`), and gate/up with the gated activation applied on the way out
// (`nf4_gemv_glu`). Each weight is described by an Nf4Seg passed by value (its own scales,
// double-quant offset and optional bias); the tables (NF4 code + nested code) are shared.
// Rounding follows the unfused path: the product is rounded to T, then the bias added and
// rounded again; the GLU rounds gate and up to T, the activation once, then the product.
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
};

template <typename T> __device__ __forceinline__ float to_f32(T v);
template <> __device__ __forceinline__ float to_f32<float>(float v) { return v; }
template <> __device__ __forceinline__ float to_f32<__nv_bfloat16>(__nv_bfloat16 v) { return __bfloat162float(v); }
template <> __device__ __forceinline__ float to_f32<__half>(__half v) { return __half2float(v); }
template <typename T> __device__ __forceinline__ float round_t(float v) { return to_f32<T>(from_f32<T>(v)); }

// Dot products of W[row] with the M rows of x (warp-wide, every lane returns the full sums).
template <typename T, int M>
__device__ __forceinline__ void seg_row_dot(const Nf4Seg& s, unsigned row, const float* s_code, const float* s_nested,
                                            const T* __restrict__ x, unsigned k, float* out) {
    const unsigned lane = threadIdx.x & 31u;
    const unsigned chunks = k >> 5;
    const uint4* wrow = reinterpret_cast<const uint4*>(s.packed + (size_t)row * (k >> 1));
    const size_t row_e0 = (size_t)row * k;
    float acc[M];
#pragma unroll
    for (int m = 0; m < M; m++) acc[m] = 0.f;
#pragma unroll 4
    for (unsigned c = lane; c < chunks; c += 32) {
        uint4 wv = ld_stream(wrow + c);
        float sc = block_scale((row_e0 + ((size_t)c << 5)) >> s.bs_log2, s.absmax, s.q, s.nested, s_nested, s.offset,
                               s.nbs_log2, s.dq);
        uint32_t words[4] = {wv.x, wv.y, wv.z, wv.w};
        float part[M];
#pragma unroll
        for (int m = 0; m < M; m++) part[m] = 0.f;
#pragma unroll
        for (int j = 0; j < 4; j++) {
            float wf[8];
#pragma unroll
            for (int b = 0; b < 4; b++) {
                uint32_t byte = (words[j] >> (8 * b)) & 0xffu;
                wf[2 * b] = s_code[byte >> 4];
                wf[2 * b + 1] = s_code[byte & 15u];
            }
#pragma unroll
            for (int m = 0; m < M; m++) {
                float xv[8];
                load_x8(x + (size_t)m * k + ((size_t)c << 5) + 8 * j, xv);
#pragma unroll
                for (int i = 0; i < 8; i++) part[m] = fmaf(wf[i], xv[i], part[m]);
            }
        }
#pragma unroll
        for (int m = 0; m < M; m++) acc[m] = fmaf(sc, part[m], acc[m]);
    }
#pragma unroll
    for (int m = 0; m < M; m++) {
        float v = acc[m];
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
        out[m] = v;
    }
}

template <typename T>
__device__ __forceinline__ float with_bias(const Nf4Seg& s, unsigned row, float v) {
    float r = round_t<T>(v);
    if (s.bias) r = __fadd_rn(r, to_f32<T>(reinterpret_cast<const T*>(s.bias)[row]));
    return r;
}

// y[m, ntotal]: row r of the stacked weights goes to column seg.col0 + (r - first row of seg).
template <typename T, int M>
__device__ void gemv_multi_impl(const Nf4Multi& p, const T* __restrict__ x, T* __restrict__ y, unsigned k) {
    __shared__ float s_code[16];
    __shared__ float s_nested[256];
    load_tables(p.tables, s_code, s_nested);
    unsigned row = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (row >= p.ntotal) return;
    int si = 0;
#pragma unroll
    for (int i = 0; i < MAX_SEGS - 1; i++) {
        if (si < (int)p.nseg - 1 && row >= p.seg[si].rows) { row -= p.seg[si].rows; si++; }
    }
    const Nf4Seg& s = p.seg[si];
    float d[M];
    seg_row_dot<T, M>(s, row, s_code, s_nested, x, k, d);
    if ((threadIdx.x & 31u) == 0) {
#pragma unroll
        for (int m = 0; m < M; m++) y[(size_t)m * p.ntotal + s.col0 + row] = from_f32<T>(with_bias<T>(s, row, d[m]));
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

template <typename T, int M>
__device__ void gemv_glu_impl(const Nf4Seg& gate, const Nf4Seg& up, const float* tables, int act,
                              const T* __restrict__ x, T* __restrict__ y, unsigned n, unsigned k) {
    __shared__ float s_code[16];
    __shared__ float s_nested[256];
    load_tables(tables, s_code, s_nested);
    const unsigned row = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (row >= n) return;
    float g[M], u[M];
    seg_row_dot<T, M>(gate, row, s_code, s_nested, x, k, g);
    seg_row_dot<T, M>(up, row, s_code, s_nested, x, k, u);
    if ((threadIdx.x & 31u) == 0) {
#pragma unroll
        for (int m = 0; m < M; m++) {
            float a = round_t<T>(glu_act(round_t<T>(with_bias<T>(gate, row, g[m])), act));
            y[(size_t)m * n + row] = from_f32<T>(__fmul_rn(a, round_t<T>(with_bias<T>(up, row, u[m]))));
        }
    }
}

#define GEMV_FUSED(T, SUFFIX, M)                                                                      \
    extern "C" __global__ void nf4_gemv_multi_##SUFFIX##_m##M(Nf4Multi p, const T* x, T* y, unsigned k) { \
        gemv_multi_impl<T, M>(p, x, y, k);                                                           \
    }                                                                                                \
    extern "C" __global__ void nf4_gemv_glu_##SUFFIX##_m##M(Nf4Seg gate, Nf4Seg up, const float* tables, \
                                                             int act, const T* x, T* y, unsigned n, unsigned k) { \
        gemv_glu_impl<T, M>(gate, up, tables, act, x, y, n, k);                                     \
    }
#define GEMV_FUSED_ALL_M(T, SUFFIX) \
    GEMV_FUSED(T, SUFFIX, 1) GEMV_FUSED(T, SUFFIX, 2) GEMV_FUSED(T, SUFFIX, 3) GEMV_FUSED(T, SUFFIX, 4) \
    GEMV_FUSED(T, SUFFIX, 5) GEMV_FUSED(T, SUFFIX, 6) GEMV_FUSED(T, SUFFIX, 7) GEMV_FUSED(T, SUFFIX, 8)
GEMV_FUSED_ALL_M(float, f32)
GEMV_FUSED_ALL_M(__nv_bfloat16, bf16)
GEMV_FUSED_ALL_M(__half, f16)
