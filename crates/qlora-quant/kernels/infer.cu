// Inference-only kernels for the decoder (no backward; the engine uses them only when not
// training): RMSNorm fused with the residual add, the KV-cache append with RoPE on k, a decode
// attention (one query token per sequence against the cache, grouped-query heads read in place,
// online softmax), and the prefill softmax with the causal / sliding-window mask computed in the
// kernel. Compiled to PTX by build.rs, run through candle custom ops in src/cuda/infer.rs.
//
// Positions can come from device memory (`len_ptr`, a u32 holding the cache length after this
// step's tokens are appended) instead of kernel parameters, so a decode step captured once in a
// CUDA graph replays unchanged at every position (engine `model/decode_graph.rs`); the grids never
// depend on the position.
//
// Rounding follows the unfused candle ops they replace (engine `ops.rs`): every op of the
// unfused path that rounds to the compute dtype T rounds here too, with explicit
// round-to-nearest intrinsics so no FMA contraction changes an f32 result.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

template <typename T> __device__ __forceinline__ float to_f32(T v);
template <> __device__ __forceinline__ float to_f32<float>(float v) { return v; }
template <> __device__ __forceinline__ float to_f32<__nv_bfloat16>(__nv_bfloat16 v) { return __bfloat162float(v); }
template <> __device__ __forceinline__ float to_f32<__half>(__half v) { return __half2float(v); }
template <typename T> __device__ __forceinline__ T from_f32(float v);
template <> __device__ __forceinline__ float from_f32<float>(float v) { return v; }
template <> __device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }
template <> __device__ __forceinline__ __half from_f32<__half>(float v) { return __float2half_rn(v); }
template <typename T> __device__ __forceinline__ float rnd(float v) { return to_f32<T>(from_f32<T>(v)); }

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Sum over the block (blockDim.x a multiple of 32, at most 1024); every thread gets the result.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    float r = lane < nw ? scratch[lane] : 0.f;
    return warp_sum(r);
}
__device__ __forceinline__ float block_max(float v, float* scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    float r = lane < nw ? scratch[lane] : -INFINITY;
    return warp_max(r);
}

// ---------------------------------------------------------------- RMSNorm (+ residual add)
// One block per row of h. With `a`, s = x + a (rounded to T) is written to out[0 .. rows*h] and
// the normalised row to out[rows*h ..]; without, only the normalised row, to out[0 ..].
// Llama: rnd(rnd(s * r) * w). Gemma (one_plus): rnd(s * r * (1 + w)), r = 1 / sqrt(mean(s²) + eps).
template <typename T>
__device__ void add_rms_norm_impl(const T* __restrict__ x, const T* __restrict__ a, const T* __restrict__ w,
                                  T* __restrict__ out, unsigned rows, unsigned h, float eps, int one_plus) {
    __shared__ float scratch[32];
    const size_t row = blockIdx.x;
    const T* xr = x + row * h;
    T* sum_out = out + row * h;
    T* norm_out = a ? out + (size_t)rows * h + row * h : out + row * h;
    float ss = 0.f;
    for (unsigned i = threadIdx.x; i < h; i += blockDim.x) {
        float v = to_f32<T>(xr[i]);
        if (a) {
            v = rnd<T>(__fadd_rn(v, to_f32<T>(a[row * h + i])));
            sum_out[i] = from_f32<T>(v);
        }
        ss = __fmaf_rn(v, v, ss);
    }
    ss = block_sum(ss, scratch);
    const float var = __fdiv_rn(ss, (float)h);
    const float r = __frcp_rn(__fsqrt_rn(__fadd_rn(var, eps)));
    for (unsigned i = threadIdx.x; i < h; i += blockDim.x) {
        float v = a ? to_f32<T>(sum_out[i]) : to_f32<T>(xr[i]);
        float n = __fmul_rn(v, r);
        float wv = to_f32<T>(w[i]);
        float o = one_plus ? __fmul_rn(n, __fadd_rn(wv, 1.f)) : __fmul_rn(rnd<T>(n), wv);
        norm_out[i] = from_f32<T>(o);
    }
}

#define ADD_RMS_NORM(NAME, T)                                                                        \
    extern "C" __global__ void NAME(const T* x, const T* a, const T* w, T* out, unsigned rows, unsigned h, \
                                    float eps, int one_plus) {                                      \
        add_rms_norm_impl<T>(x, a, w, out, rows, h, eps, one_plus);                                 \
    }
ADD_RMS_NORM(add_rms_norm_f32, float)
ADD_RMS_NORM(add_rms_norm_bf16, __nv_bfloat16)
ADD_RMS_NORM(add_rms_norm_f16, __half)

// ---------------------------------------------------------------- RoPE
// transformers' non-interleaved rotary on the first `rot` dims of a head: for d < rot/2 the
// partner is -x[d + rot/2], else x[d - rot/2]; cos/sin of pos * inv_freq[d mod rot/2] in f32,
// then rounded to T like the unfused path's tables; each product and the sum rounded to T.
#define MAX_HALF 128
struct RopeParams {
    float inv_freq[MAX_HALF];
    unsigned rot;
};

template <typename T>
__device__ __forceinline__ float rope_at(const T* head, unsigned d, unsigned pos, const RopeParams& rp) {
    float x = to_f32<T>(head[d]);
    if (d >= rp.rot) return x;
    const unsigned half = rp.rot >> 1;
    const unsigned i = d < half ? d : d - half;
    const float ang = __fmul_rn((float)pos, rp.inv_freq[i]);
    float s, c;
    sincosf(ang, &s, &c);
    const float partner = d < half ? -to_f32<T>(head[d + half]) : to_f32<T>(head[d - half]);
    return rnd<T>(__fadd_rn(rnd<T>(__fmul_rn(x, rnd<T>(c))), rnd<T>(__fmul_rn(partner, rnd<T>(s)))));
}

// ---------------------------------------------------------------- KV-cache append
// cache: [2, B, nkv, cap, hd] (k then v). k, v: [B, t, nkv*hd] with strides (sb, st, 1).
// Writes positions past .. past + t - 1: k rotated, v copied. Grid (t, B).
// With len_ptr set, past = *len_ptr - t (the host's `past` is ignored); positions past the
// capacity are not written.
struct KvParams {
    RopeParams rope;
    unsigned B, t, nkv, hd, cap, past;
    unsigned long long ksb, kst, vsb, vst;
    unsigned long long len_ptr;
};

template <typename T>
__device__ void kv_append_impl(T* __restrict__ cache, const T* __restrict__ k, const T* __restrict__ v, const KvParams& p) {
    const unsigned j = blockIdx.x, b = blockIdx.y;
    const unsigned past = p.len_ptr ? *reinterpret_cast<const unsigned*>(p.len_ptr) - p.t : p.past;
    const unsigned pos = past + j;
    if (pos >= p.cap) return;
    const T* kr = k + b * p.ksb + j * p.kst;
    const T* vr = v + b * p.vsb + j * p.vst;
    const size_t plane = (size_t)p.B * p.nkv * p.cap * p.hd;
    for (unsigned e = threadIdx.x; e < p.nkv * p.hd; e += blockDim.x) {
        const unsigned head = e / p.hd, d = e - head * p.hd;
        const size_t at = (((size_t)b * p.nkv + head) * p.cap + pos) * p.hd + d;
        cache[at] = from_f32<T>(rope_at<T>(kr + head * p.hd, d, pos, p.rope));
        cache[plane + at] = vr[e];
    }
}

#define KV_APPEND(NAME, T) \
    extern "C" __global__ void NAME(T* cache, const T* k, const T* v, KvParams p) { kv_append_impl<T>(cache, k, v, p); }
KV_APPEND(kv_append_f32, float)
KV_APPEND(kv_append_bf16, __nv_bfloat16)
KV_APPEND(kv_append_f16, __half)

// ---------------------------------------------------------------- decode attention
// One query token per sequence (position pos = len - 1) against cache positions start .. len-1.
// Grid (nh, B), 4 warps. q: [B, 1, nh*hd] at batch stride qsb, RoPE applied here. Each warp
// takes 32 keys at a time (a key per lane), keeps an online softmax (max, sum, output per lane
// for dims lane + 32 i), and the 4 warps are merged at the end. Scores as the unfused path
// rounds them: rnd(rnd(q·k) * rnd(scale)); out rounded once.
#define ATT_WARPS 4
#define MAX_HD 256
// With len_ptr set, len = *len_ptr and start = len - window (window > 0, len > window) or 0;
// the host's len and start are ignored.
struct AttnParams {
    RopeParams rope;
    unsigned B, nh, nkv, hd, cap, len, start;
    float scale;
    unsigned long long qsb;
    unsigned window;
    unsigned long long len_ptr;
};

template <typename T>
__device__ __forceinline__ void load8(const T* p, float* o);
template <> __device__ __forceinline__ void load8<float>(const float* p, float* o) {
    float4 a = reinterpret_cast<const float4*>(p)[0], b = reinterpret_cast<const float4*>(p)[1];
    o[0] = a.x; o[1] = a.y; o[2] = a.z; o[3] = a.w; o[4] = b.x; o[5] = b.y; o[6] = b.z; o[7] = b.w;
}
template <> __device__ __forceinline__ void load8<__nv_bfloat16>(const __nv_bfloat16* p, float* o) {
    uint4 r = *reinterpret_cast<const uint4*>(p);
    uint32_t w[4] = {r.x, r.y, r.z, r.w};
#pragma unroll
    for (int i = 0; i < 4; i++) { o[2 * i] = __uint_as_float(w[i] << 16); o[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u); }
}
template <> __device__ __forceinline__ void load8<__half>(const __half* p, float* o) {
    uint4 r = *reinterpret_cast<const uint4*>(p);
    uint32_t w[4] = {r.x, r.y, r.z, r.w};
#pragma unroll
    for (int i = 0; i < 4; i++) { float2 f = __half22float2(*reinterpret_cast<__half2*>(&w[i])); o[2 * i] = f.x; o[2 * i + 1] = f.y; }
}

template <typename T>
__device__ void decode_attn_impl(const T* __restrict__ q, const T* __restrict__ cache, T* __restrict__ out, const AttnParams& p) {
    __shared__ __align__(16) float qf[MAX_HD];
    __shared__ float wm[ATT_WARPS], wl[ATT_WARPS];
    __shared__ float wacc[ATT_WARPS][MAX_HD];
    const unsigned h = blockIdx.x, b = blockIdx.y;
    const unsigned lane = threadIdx.x & 31u, warp = threadIdx.x >> 5;
    const unsigned kvh = h / (p.nh / p.nkv);
    unsigned len = p.len, start = p.start;
    if (p.len_ptr) {
        len = min(*reinterpret_cast<const unsigned*>(p.len_ptr), p.cap);
        start = (p.window > 0 && len > p.window) ? len - p.window : 0;
    }
    T* o = out + ((size_t)b * p.nh + h) * p.hd;
    if (len == 0) {
        for (unsigned d = threadIdx.x; d < p.hd; d += blockDim.x) o[d] = from_f32<T>(0.f);
        return;
    }
    const unsigned pos = len - 1;
    const T* qh = q + b * p.qsb + (size_t)h * p.hd;
    for (unsigned d = threadIdx.x; d < p.hd; d += blockDim.x) qf[d] = rope_at<T>(qh, d, pos, p.rope);
    __syncthreads();
    const size_t plane = (size_t)p.B * p.nkv * p.cap * p.hd;
    const T* kbase = cache + ((size_t)b * p.nkv + kvh) * p.cap * p.hd;
    const T* vbase = kbase + plane;
    const float scale_t = rnd<T>(p.scale);
    float m = -INFINITY, l = 0.f;
    float acc[MAX_HD / 32];
#pragma unroll
    for (int i = 0; i < MAX_HD / 32; i++) acc[i] = 0.f;
    for (unsigned j0 = start + warp * 32; j0 < len; j0 += 32 * ATT_WARPS) {
        const unsigned j = j0 + lane;
        float s = -INFINITY;
        if (j < len) {
            const T* kr = kbase + (size_t)j * p.hd;
            float dot = 0.f;
#pragma unroll 4
            for (unsigned d = 0; d < p.hd; d += 8) {
                float kv[8];
                load8<T>(kr + d, kv);
#pragma unroll
                for (int i = 0; i < 8; i++) dot = fmaf(qf[d + i], kv[i], dot);
            }
            s = rnd<T>(__fmul_rn(rnd<T>(dot), scale_t));
        }
        const float m_new = fmaxf(m, warp_max(s));
        const float corr = __expf(m - m_new);  // m = -inf on the first chunk: 0
        const float pj = j < len ? __expf(s - m_new) : 0.f;
        l = l * corr + warp_sum(pj);
#pragma unroll
        for (int i = 0; i < MAX_HD / 32; i++) acc[i] *= corr;
        const unsigned nk = min(32u, len - j0);
        // Unrolled so that several keys' V rows are in flight at once: one row at a time left
        // the loop waiting on memory latency (about half of a short-context decode attention).
#pragma unroll 8
        for (unsigned jj = 0; jj < nk; jj++) {
            const float pw = __shfl_sync(0xffffffffu, pj, jj);
            const T* vr = vbase + (size_t)(j0 + jj) * p.hd;
#pragma unroll
            for (int i = 0; i < MAX_HD / 32; i++) {
                const unsigned d = lane + 32 * i;
                if (d < p.hd) acc[i] = fmaf(pw, to_f32<T>(vr[d]), acc[i]);
            }
        }
        m = m_new;
    }
    if (lane == 0) { wm[warp] = m; wl[warp] = l; }
#pragma unroll
    for (int i = 0; i < MAX_HD / 32; i++) {
        const unsigned d = lane + 32 * i;
        if (d < p.hd) wacc[warp][d] = acc[i];
    }
    __syncthreads();
    float mm = -INFINITY;
#pragma unroll
    for (int w = 0; w < ATT_WARPS; w++) mm = fmaxf(mm, wm[w]);
    float f[ATT_WARPS], tot = 0.f;
#pragma unroll
    for (int w = 0; w < ATT_WARPS; w++) { f[w] = wl[w] > 0.f ? __expf(wm[w] - mm) : 0.f; tot += wl[w] * f[w]; }
    for (unsigned d = threadIdx.x; d < p.hd; d += blockDim.x) {
        float v = 0.f;
#pragma unroll
        for (int w = 0; w < ATT_WARPS; w++) v += wacc[w][d] * f[w];
        o[d] = from_f32<T>(v / tot);
    }
}

#define DECODE_ATTN(NAME, T) \
    extern "C" __global__ void NAME(const T* q, const T* cache, T* out, AttnParams p) { decode_attn_impl<T>(q, cache, out, p); }
DECODE_ATTN(decode_attn_f32, float)
DECODE_ATTN(decode_attn_bf16, __nv_bfloat16)
DECODE_ATTN(decode_attn_f16, __half)

// ---------------------------------------------------------------- prefill softmax
// scores: rows of `len` keys, row r is query i = r % t at position past + i (rows grouped as
// [B, nkv, rep, t] so grouped-query heads share one K). Key j is kept when j <= pos and, with a
// window w > 0, j + w > pos. probs = softmax(f32(score) * scale) over kept keys, 0 elsewhere,
// rounded once to T. One block per row.
template <typename T>
__device__ void masked_softmax_impl(const T* __restrict__ scores, T* __restrict__ probs, unsigned t, unsigned len,
                                    unsigned past, unsigned window, float scale) {
    __shared__ float scratch[32];
    const size_t row = blockIdx.x;
    const unsigned pos = past + (unsigned)(row % t);
    const unsigned lo = (window > 0 && pos + 1 > window) ? pos + 1 - window : 0;
    const unsigned hi = min(pos + 1, len);  // kept: lo <= j < hi
    const T* s = scores + row * len;
    T* o = probs + row * len;
    float mx = -INFINITY;
    for (unsigned j = lo + threadIdx.x; j < hi; j += blockDim.x) mx = fmaxf(mx, to_f32<T>(s[j]) * scale);
    mx = block_max(mx, scratch);
    float sum = 0.f;
    for (unsigned j = lo + threadIdx.x; j < hi; j += blockDim.x) sum += __expf(to_f32<T>(s[j]) * scale - mx);
    sum = block_sum(sum, scratch);
    const float inv = 1.f / sum;
    for (unsigned j = threadIdx.x; j < len; j += blockDim.x) {
        const float v = (j >= lo && j < hi) ? __expf(to_f32<T>(s[j]) * scale - mx) * inv : 0.f;
        o[j] = from_f32<T>(v);
    }
}

#define MASKED_SOFTMAX(NAME, T)                                                                        \
    extern "C" __global__ void NAME(const T* scores, T* probs, unsigned t, unsigned len, unsigned past,  \
                                    unsigned window, float scale) {                                    \
        masked_softmax_impl<T>(scores, probs, t, len, past, window, scale);                            \
    }
MASKED_SOFTMAX(masked_softmax_f32, float)
MASKED_SOFTMAX(masked_softmax_bf16, __nv_bfloat16)
MASKED_SOFTMAX(masked_softmax_f16, __half)
