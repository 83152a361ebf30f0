// Training kernels (issue 7), compiled to PTX by build.rs and launched from src/cuda/train.rs.
// Each has a CPU twin in qlora-train (`ops/`), computing the same function, so a GPU result is
// checked against the CPU.
//
// * dropout_{f32,bf16,f16}: out[i] = keep(seed, i) ? x[i] * scale : 0. keep() is a counter-based
//   hash (splitmix64 of seed + i * golden ratio, top 32 bits < threshold), so the same (seed, i)
//   always draws the same mask: the recompute of a checkpointed layer and the backward replay it
//   without storing it.
// * ce_loss_{f32,bf16,f16}: per row of logits [rows, V], w * (logsumexp(row) - row[label]) in f32
//   (logits read as f32, as transformers upcasts them for its loss). One block per row.
// * ce_grad_{f32,bf16,f16}: per row, coef * w * (softmax(row) - onehot(label)), written in the
//   logits' dtype. The full-vocabulary f32 logits never exist in memory: each block reads its
//   16-bit row three times (max, sum of exponentials, write).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

__device__ __forceinline__ float to_f32(float v) { return v; }
__device__ __forceinline__ float to_f32(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float to_f32(__half v) { return __half2float(v); }
template <typename T> __device__ __forceinline__ T from_f32(float v);
template <> __device__ __forceinline__ float from_f32<float>(float v) { return v; }
template <> __device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }
template <> __device__ __forceinline__ __half from_f32<__half>(float v) { return __float2half_rn(v); }

__device__ __forceinline__ uint32_t keep_hash(uint64_t seed, uint64_t i) {
    uint64_t z = seed + (i + 1) * 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z = z ^ (z >> 31);
    return (uint32_t)(z >> 32);
}

template <typename T>
__device__ void dropout_impl(const T* __restrict__ x, T* __restrict__ out, uint64_t n, uint64_t seed,
                             uint32_t threshold, float scale) {
    for (uint64_t i = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (uint64_t)gridDim.x * blockDim.x) {
        float v = keep_hash(seed, i) < threshold ? to_f32(x[i]) * scale : 0.0f;
        out[i] = from_f32<T>(v);
    }
}

#define DROPOUT(name, T) \
    extern "C" __global__ void name(const T* x, T* out, uint64_t n, uint64_t seed, uint32_t threshold, float scale) { \
        dropout_impl<T>(x, out, n, seed, threshold, scale); \
    }
DROPOUT(dropout_f32, float)
DROPOUT(dropout_bf16, __nv_bfloat16)
DROPOUT(dropout_f16, __half)

// Block-wide reduction (blockDim.x a multiple of 32, at most 1024).
template <bool MAX>
__device__ __forceinline__ float block_reduce(float v, float* shared) {
    for (int o = 16; o > 0; o >>= 1) {
        float w = __shfl_xor_sync(0xffffffffu, v, o);
        v = MAX ? fmaxf(v, w) : v + w;
    }
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    __syncthreads();
    if (lane == 0) shared[warp] = v;
    __syncthreads();
    v = threadIdx.x < warps ? shared[threadIdx.x] : (MAX ? -INFINITY : 0.0f);
    if (warp == 0) {
        for (int o = 16; o > 0; o >>= 1) {
            float w = __shfl_xor_sync(0xffffffffu, v, o);
            v = MAX ? fmaxf(v, w) : v + w;
        }
        if (lane == 0) shared[0] = v;
    }
    __syncthreads();
    return shared[0];
}

// (max, sum of exp(x - max)) of one row.
template <typename T>
__device__ __forceinline__ void row_stats(const T* __restrict__ row, uint32_t v, float* shared, float* mx, float* se) {
    float m = -INFINITY;
    for (uint32_t j = threadIdx.x; j < v; j += blockDim.x) m = fmaxf(m, to_f32(row[j]));
    m = block_reduce<true>(m, shared);
    float s = 0.0f;
    for (uint32_t j = threadIdx.x; j < v; j += blockDim.x) s += __expf(to_f32(row[j]) - m);
    s = block_reduce<false>(s, shared);
    *mx = m;
    *se = s;
}

template <typename T>
__device__ void ce_loss_impl(const T* __restrict__ logits, const uint32_t* __restrict__ labels,
                             const float* __restrict__ weights, float* __restrict__ loss, uint32_t v) {
    __shared__ float shared[32];
    uint64_t r = blockIdx.x;
    const T* row = logits + r * v;
    float w = weights[r];
    float m, s;
    row_stats(row, v, shared, &m, &s);
    if (threadIdx.x == 0) {
        uint32_t lab = labels[r];
        float picked = lab < v ? to_f32(row[lab]) : m;
        loss[r] = w == 0.0f ? 0.0f : w * (m + logf(s) - picked);
    }
}

template <typename T>
__device__ void ce_grad_impl(const T* __restrict__ logits, const uint32_t* __restrict__ labels,
                             const float* __restrict__ weights, T* __restrict__ grad, uint32_t v, float coef) {
    __shared__ float shared[32];
    uint64_t r = blockIdx.x;
    const T* row = logits + r * v;
    T* g = grad + r * v;
    float c = weights[r] * coef;
    if (c == 0.0f) {
        for (uint32_t j = threadIdx.x; j < v; j += blockDim.x) g[j] = from_f32<T>(0.0f);
        return;
    }
    float m, s;
    row_stats(row, v, shared, &m, &s);
    float inv = 1.0f / s;
    uint32_t lab = labels[r];
    for (uint32_t j = threadIdx.x; j < v; j += blockDim.x) {
        float p = __expf(to_f32(row[j]) - m) * inv;
        g[j] = from_f32<T>(c * (p - (j == lab ? 1.0f : 0.0f)));
    }
}

#define CE(suffix, T) \
    extern "C" __global__ void ce_loss_##suffix(const T* logits, const uint32_t* labels, const float* weights, float* loss, uint32_t v) { \
        ce_loss_impl<T>(logits, labels, weights, loss, v); \
    } \
    extern "C" __global__ void ce_grad_##suffix(const T* logits, const uint32_t* labels, const float* weights, T* grad, uint32_t v, float coef) { \
        ce_grad_impl<T>(logits, labels, weights, grad, v, coef); \
    }
CE(f32, float)
CE(bf16, __nv_bfloat16)
CE(f16, __half)

// ---------------------------------------------------------------- softmax (attention, training)
// y = softmax(x) over rows of `cols` f32 (x may hold -inf: a fully masked row gives 0/0 as the
// composite does). dx = y * (g - sum(y * g)). One block per row.
extern "C" __global__ void softmax_f32(const float* __restrict__ x, float* __restrict__ y, uint32_t cols) {
    __shared__ float shared[32];
    uint64_t r = blockIdx.x;
    const float* row = x + r * cols;
    float* out = y + r * cols;
    float m = -INFINITY;
    for (uint32_t j = threadIdx.x; j < cols; j += blockDim.x) m = fmaxf(m, row[j]);
    m = block_reduce<true>(m, shared);
    float s = 0.0f;
    for (uint32_t j = threadIdx.x; j < cols; j += blockDim.x) s += expf(row[j] - m);
    s = block_reduce<false>(s, shared);
    for (uint32_t j = threadIdx.x; j < cols; j += blockDim.x) out[j] = expf(row[j] - m) / s;
}

extern "C" __global__ void softmax_bwd_f32(const float* __restrict__ y, const float* __restrict__ g,
                                           float* __restrict__ dx, uint32_t cols) {
    __shared__ float shared[32];
    uint64_t r = blockIdx.x;
    const float* yr = y + r * cols;
    const float* gr = g + r * cols;
    float s = 0.0f;
    for (uint32_t j = threadIdx.x; j < cols; j += blockDim.x) s += yr[j] * gr[j];
    s = block_reduce<false>(s, shared);
    for (uint32_t j = threadIdx.x; j < cols; j += blockDim.x) dx[r * cols + j] = yr[j] * (gr[j] - s);
}

// ---------------------------------------------------------------- RMSNorm (Llama), training
// Forward as the composite of engine ops.rs computes it: rstd = 1/sqrt(mean(x²) + eps) in f32,
// n = T(x · rstd), y = T(n · w). Backward (w frozen): dn = g · w, dx = rstd · (dn − x̂ · mean(dn · x̂))
// with x̂ = x · rstd, in f32, written as T. One block per row.
template <typename T>
__device__ void rms_fwd_impl(const T* __restrict__ x, const T* __restrict__ w, T* __restrict__ y, uint32_t cols, float eps) {
    __shared__ float shared[32];
    uint64_t r = blockIdx.x;
    const T* xr = x + r * cols;
    float s = 0.0f;
    for (uint32_t j = threadIdx.x; j < cols; j += blockDim.x) { float v = to_f32(xr[j]); s += v * v; }
    s = block_reduce<false>(s, shared);
    float rstd = 1.0f / sqrtf(s / (float)cols + eps);
    for (uint32_t j = threadIdx.x; j < cols; j += blockDim.x) {
        float n = to_f32(from_f32<T>(to_f32(xr[j]) * rstd));
        y[r * cols + j] = from_f32<T>(n * to_f32(w[j]));
    }
}

template <typename T>
__device__ void rms_bwd_impl(const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ g, T* __restrict__ dx,
                             uint32_t cols, float eps) {
    __shared__ float shared[32];
    uint64_t r = blockIdx.x;
    const T* xr = x + r * cols;
    const T* gr = g + r * cols;
    float s = 0.0f;
    for (uint32_t j = threadIdx.x; j < cols; j += blockDim.x) { float v = to_f32(xr[j]); s += v * v; }
    s = block_reduce<false>(s, shared);
    float rstd = 1.0f / sqrtf(s / (float)cols + eps);
    float d = 0.0f;
    for (uint32_t j = threadIdx.x; j < cols; j += blockDim.x) d += to_f32(gr[j]) * to_f32(w[j]) * to_f32(xr[j]) * rstd;
    d = block_reduce<false>(d, shared) / (float)cols;
    for (uint32_t j = threadIdx.x; j < cols; j += blockDim.x) {
        float xh = to_f32(xr[j]) * rstd;
        dx[r * cols + j] = from_f32<T>(rstd * (to_f32(gr[j]) * to_f32(w[j]) - xh * d));
    }
}

#define RMS(suffix, T) \
    extern "C" __global__ void rms_fwd_##suffix(const T* x, const T* w, T* y, uint32_t cols, float eps) { rms_fwd_impl<T>(x, w, y, cols, eps); } \
    extern "C" __global__ void rms_bwd_##suffix(const T* x, const T* w, const T* g, T* dx, uint32_t cols, float eps) { rms_bwd_impl<T>(x, w, g, dx, cols, eps); }
RMS(f32, float)
RMS(bf16, __nv_bfloat16)
RMS(f16, __half)

// ---------------------------------------------------------------- attention softmax, training
// Row r of scores [rows, len] is query r % t at position pos = past + r % t; it keeps keys
// lo <= j < hi, hi = min(pos + 1, len), lo = pos + 1 - window when a window (> 0) cuts it.
// Forward: p = softmax(f32(s) · scale) over the kept keys, 0 elsewhere, rounded once to T (no
// mask tensor: it is decided here). Backward: ds = scale · p · (dp − Σ p·dp) in f32, written
// as T; the masked keys (p = 0) get 0 without reading dp. One block per row (the warp-per-row
// kernels below take rows of up to 1024 keys by default).
__device__ __forceinline__ void attn_kept(uint64_t r, uint32_t t, uint32_t len, uint32_t past, uint32_t window,
                                          uint32_t* lo, uint32_t* hi) {
    uint32_t pos = past + (uint32_t)(r % t);
    *lo = (window > 0 && pos + 1 > window) ? pos + 1 - window : 0;
    *hi = min(pos + 1, len);
}

template <typename T>
__device__ void attn_softmax_impl(const T* __restrict__ s, T* __restrict__ p, uint32_t t, uint32_t len, uint32_t past,
                                  uint32_t window, float scale) {
    __shared__ float shared[32];
    uint64_t r = blockIdx.x;
    uint32_t lo, hi;
    attn_kept(r, t, len, past, window, &lo, &hi);
    const T* row = s + r * len;
    T* out = p + r * len;
    float m = -INFINITY;
    for (uint32_t j = lo + threadIdx.x; j < hi; j += blockDim.x) m = fmaxf(m, to_f32(row[j]) * scale);
    m = block_reduce<true>(m, shared);
    float sum = 0.0f;
    for (uint32_t j = lo + threadIdx.x; j < hi; j += blockDim.x) sum += expf(to_f32(row[j]) * scale - m);
    sum = block_reduce<false>(sum, shared);
    for (uint32_t j = threadIdx.x; j < len; j += blockDim.x) {
        float v = (j >= lo && j < hi) ? expf(to_f32(row[j]) * scale - m) / sum : 0.0f;
        out[j] = from_f32<T>(v);
    }
}

template <typename T>
__device__ void attn_softmax_bwd_impl(const T* __restrict__ p, const T* __restrict__ g, T* __restrict__ ds, uint32_t t,
                                      uint32_t len, uint32_t past, uint32_t window, float scale) {
    __shared__ float shared[32];
    uint64_t r = blockIdx.x;
    uint32_t lo, hi;
    attn_kept(r, t, len, past, window, &lo, &hi);
    const T* pr = p + r * len;
    const T* gr = g + r * len;
    T* out = ds + r * len;
    float d = 0.0f;
    for (uint32_t j = lo + threadIdx.x; j < hi; j += blockDim.x) d += to_f32(pr[j]) * to_f32(gr[j]);
    d = block_reduce<false>(d, shared);
    for (uint32_t j = threadIdx.x; j < len; j += blockDim.x) {
        float v = (j >= lo && j < hi) ? scale * to_f32(pr[j]) * (to_f32(gr[j]) - d) : 0.0f;
        out[j] = from_f32<T>(v);
    }
}

#define ATTN_SOFTMAX(suffix, T) \
    extern "C" __global__ void attn_softmax_##suffix(const T* s, T* p, uint32_t t, uint32_t len, uint32_t past, uint32_t window, float scale) { \
        attn_softmax_impl<T>(s, p, t, len, past, window, scale); \
    } \
    extern "C" __global__ void attn_softmax_bwd_##suffix(const T* p, const T* g, T* ds, uint32_t t, uint32_t len, uint32_t past, uint32_t window, float scale) { \
        attn_softmax_bwd_impl<T>(p, g, ds, t, len, past, window, scale); \
    }
ATTN_SOFTMAX(f32, float)
ATTN_SOFTMAX(bf16, __nv_bfloat16)
ATTN_SOFTMAX(f16, __half)

// The same two functions with one warp per row, the row held in registers (E elements a lane,
// rows of at most 32·E keys): no shared memory, no __syncthreads, each key read once and only
// the kept ones (the causal upper triangle is not read at all). The one-block-per-row kernels
// above ran a 512-thread block with three block-wide reductions per 512-key row, latency-bound
// (about 0.3 ms for Mistral-7B's [4, 8, 2048, 512] at 4 x 512 on an H100, where the bytes
// take ~0.05 ms). Same arithmetic per element; the row sums are added in another order.
template <typename T, int E>
__device__ void attn_softmax_warp_impl(const T* __restrict__ s, T* __restrict__ p, uint64_t rows, uint32_t t, uint32_t len,
                                       uint32_t past, uint32_t window, float scale) {
    const uint64_t r = (uint64_t)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (r >= rows) return;
    const uint32_t lane = threadIdx.x & 31;
    uint32_t lo, hi;
    attn_kept(r, t, len, past, window, &lo, &hi);
    const T* row = s + r * len;
    T* out = p + r * len;
    float v[E];
    float m = -INFINITY;
#pragma unroll
    for (int i = 0; i < E; i++) {
        const uint32_t j = lane + 32u * i;
        v[i] = (j >= lo && j < hi) ? to_f32(row[j]) * scale : -INFINITY;
        m = fmaxf(m, v[i]);
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
    float sum = 0.0f;
#pragma unroll
    for (int i = 0; i < E; i++) {
        const uint32_t j = lane + 32u * i;
        v[i] = (j >= lo && j < hi) ? expf(v[i] - m) : 0.0f;
        sum += v[i];
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
#pragma unroll
    for (int i = 0; i < E; i++) {
        const uint32_t j = lane + 32u * i;
        if (j < len) out[j] = from_f32<T>((j >= lo && j < hi) ? v[i] / sum : 0.0f);
    }
}

template <typename T, int E>
__device__ void attn_softmax_bwd_warp_impl(const T* __restrict__ p, const T* __restrict__ g, T* __restrict__ ds, uint64_t rows,
                                           uint32_t t, uint32_t len, uint32_t past, uint32_t window, float scale) {
    const uint64_t r = (uint64_t)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (r >= rows) return;
    const uint32_t lane = threadIdx.x & 31;
    uint32_t lo, hi;
    attn_kept(r, t, len, past, window, &lo, &hi);
    const T* pr = p + r * len;
    const T* gr = g + r * len;
    T* out = ds + r * len;
    float pv[E], gv[E];
    float d = 0.0f;
#pragma unroll
    for (int i = 0; i < E; i++) {
        const uint32_t j = lane + 32u * i;
        const bool kept = j >= lo && j < hi;
        pv[i] = kept ? to_f32(pr[j]) : 0.0f;
        gv[i] = kept ? to_f32(gr[j]) : 0.0f;
        d += pv[i] * gv[i];
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) d += __shfl_xor_sync(0xffffffffu, d, o);
#pragma unroll
    for (int i = 0; i < E; i++) {
        const uint32_t j = lane + 32u * i;
        if (j < len) out[j] = from_f32<T>((j >= lo && j < hi) ? scale * pv[i] * (gv[i] - d) : 0.0f);
    }
}

#define ATTN_SOFTMAX_WARP(suffix, T, E) \
    extern "C" __global__ void attn_softmax_warp##E##_##suffix(const T* s, T* p, uint64_t rows, uint32_t t, uint32_t len, uint32_t past, uint32_t window, float scale) { \
        attn_softmax_warp_impl<T, E>(s, p, rows, t, len, past, window, scale); \
    } \
    extern "C" __global__ void attn_softmax_bwd_warp##E##_##suffix(const T* p, const T* g, T* ds, uint64_t rows, uint32_t t, uint32_t len, uint32_t past, uint32_t window, float scale) { \
        attn_softmax_bwd_warp_impl<T, E>(p, g, ds, rows, t, len, past, window, scale); \
    }
#define ATTN_SOFTMAX_WARP_ALL(suffix, T) \
    ATTN_SOFTMAX_WARP(suffix, T, 4) ATTN_SOFTMAX_WARP(suffix, T, 8) ATTN_SOFTMAX_WARP(suffix, T, 16) ATTN_SOFTMAX_WARP(suffix, T, 32)
ATTN_SOFTMAX_WARP_ALL(f32, float)
ATTN_SOFTMAX_WARP_ALL(bf16, __nv_bfloat16)
ATTN_SOFTMAX_WARP_ALL(f16, __half)

// ---------------------------------------------------------------- RoPE, training
// Rotary embedding (transformers' non-interleaved halves) on x [B, T, H, hd] (the projection's
// output as it comes), written as [B, H, T, hd]: the transpose to heads is folded in. cos/sin
// are f32 [T, rot]; dims >= rot pass through. For i < rot/2: y_i = x_i c_i − x_{i+h} s_i, for
// h <= i < rot: y_i = x_i c_i + x_{i−h} s_i (h = rot/2), in f32 with separate roundings (no
// FMA: the same arithmetic as the CPU composite), rounded once to T. Backward, dy [B, H, T,
// hd] to dx [B, T, H, hd]: dx_j = dy_j c_j + dy_{j+h} s_{j+h} (j < h), dy_j c_j − dy_{j−h} s_{j−h}
// (h <= j < rot), dy_j beyond. One thread per output element; its indices in 32 bits below
// 2^31 elements (64-bit divisions by the runtime sizes made the kernel compute-bound).
template <typename T, typename I>
__device__ void rope_fwd_impl(const T* __restrict__ x, const float* __restrict__ cs, const float* __restrict__ sn,
                              T* __restrict__ y, uint32_t t_len, uint32_t heads, uint32_t hd, uint32_t rot, uint64_t n) {
    uint32_t half = rot / 2;
    for (I o = (I)blockIdx.x * blockDim.x + threadIdx.x; o < (I)n; o += (I)gridDim.x * blockDim.x) {
        uint32_t i = (uint32_t)(o % hd);
        I r = o / hd;
        uint32_t t = (uint32_t)(r % t_len);
        r /= t_len;
        uint32_t h = (uint32_t)(r % heads);
        I b = r / heads;
        const T* xr = x + (((uint64_t)b * t_len + t) * heads + h) * hd;
        float v;
        if (i >= rot) {
            v = to_f32(xr[i]);
        } else {
            float c = cs[(uint64_t)t * rot + i], s = sn[(uint64_t)t * rot + i];
            float p = i < half ? -to_f32(xr[i + half]) : to_f32(xr[i - half]);
            v = __fadd_rn(__fmul_rn(to_f32(xr[i]), c), __fmul_rn(p, s));
        }
        y[o] = from_f32<T>(v);
    }
}

template <typename T, typename I>
__device__ void rope_bwd_impl(const T* __restrict__ dy, const float* __restrict__ cs, const float* __restrict__ sn,
                              T* __restrict__ dx, uint32_t t_len, uint32_t heads, uint32_t hd, uint32_t rot, uint64_t n) {
    uint32_t half = rot / 2;
    for (I o = (I)blockIdx.x * blockDim.x + threadIdx.x; o < (I)n; o += (I)gridDim.x * blockDim.x) {
        uint32_t j = (uint32_t)(o % hd);
        I r = o / hd;
        uint32_t h = (uint32_t)(r % heads);
        r /= heads;
        uint32_t t = (uint32_t)(r % t_len);
        I b = r / t_len;
        const T* g = dy + (((uint64_t)b * heads + h) * t_len + t) * hd;
        float v;
        if (j >= rot) {
            v = to_f32(g[j]);
        } else {
            const float* cr = cs + (uint64_t)t * rot;
            const float* sr = sn + (uint64_t)t * rot;
            float a = __fmul_rn(to_f32(g[j]), cr[j]);
            v = j < half ? __fadd_rn(a, __fmul_rn(to_f32(g[j + half]), sr[j + half]))
                         : __fsub_rn(a, __fmul_rn(to_f32(g[j - half]), sr[j - half]));
        }
        dx[o] = from_f32<T>(v);
    }
}

#define ROPE(suffix, T) \
    extern "C" __global__ void rope_fwd_##suffix(const T* x, const float* c, const float* s, T* y, uint32_t t, uint32_t heads, uint32_t hd, uint32_t rot, uint64_t n) { \
        if (n < (1ull << 31)) rope_fwd_impl<T, uint32_t>(x, c, s, y, t, heads, hd, rot, n); \
        else rope_fwd_impl<T, uint64_t>(x, c, s, y, t, heads, hd, rot, n); \
    } \
    extern "C" __global__ void rope_bwd_##suffix(const T* dy, const float* c, const float* s, T* dx, uint32_t t, uint32_t heads, uint32_t hd, uint32_t rot, uint64_t n) { \
        if (n < (1ull << 31)) rope_bwd_impl<T, uint32_t>(dy, c, s, dx, t, heads, hd, rot, n); \
        else rope_bwd_impl<T, uint64_t>(dy, c, s, dx, t, heads, hd, rot, n); \
    }
ROPE(f32, float)
ROPE(bf16, __nv_bfloat16)
ROPE(f16, __half)

// ---------------------------------------------------------------- AdamW, in place
// torch.optim.AdamW on f32 parameters, as the composite of candle ops in qlora-train's optim.rs
// computes it, operation for operation (separate roundings, no FMA; sqrt and division IEEE),
// so the result is the composite's to the bit. Constants come from the host already rounded to
// f32 as candle's affine rounds its f64 scalars. Moment: x = x·beta + g·c (g² for the second,
// `square`). Update: w = (w·decay when wd_on) − (m / (sqrt(v)·inv_bc2 + eps))·step_size.
extern "C" __global__ void adamw_moment_f32(float* __restrict__ x, const float* __restrict__ g, uint64_t n, float beta,
                                            float c, uint32_t square) {
    for (uint64_t i = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (uint64_t)gridDim.x * blockDim.x) {
        float gi = square ? __fmul_rn(g[i], g[i]) : g[i];
        x[i] = __fadd_rn(__fmul_rn(x[i], beta), __fmul_rn(gi, c));
    }
}

extern "C" __global__ void adamw_update_f32(float* __restrict__ w, const float* __restrict__ m, const float* __restrict__ v,
                                            uint64_t n, float inv_bc2, float eps, float step_size, float decay,
                                            uint32_t wd_on) {
    for (uint64_t i = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (uint64_t)gridDim.x * blockDim.x) {
        float wi = wd_on ? __fmul_rn(w[i], decay) : w[i];
        float denom = __fadd_rn(__fmul_rn(__fsqrt_rn(v[i]), inv_bc2), eps);
        w[i] = __fsub_rn(wi, __fmul_rn(__fdiv_rn(m[i], denom), step_size));
    }
}

// ---------------------------------------------------------------- SwiGLU, training
// y = silu(g) · u with silu(g) = g / (1 + e^−g), in f32, rounded once to T. Backward from dy:
// s = 1 / (1 + e^−g), dg = dy · u · s · (1 + g · (1 − s)), du = dy · g · s, written as one
// buffer [dg; du] (2n). One thread per element.
template <typename T>
__device__ void swiglu_fwd_impl(const T* __restrict__ g, const T* __restrict__ u, T* __restrict__ y, uint64_t n) {
    for (uint64_t i = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (uint64_t)gridDim.x * blockDim.x) {
        float gv = to_f32(g[i]);
        y[i] = from_f32<T>(gv / (expf(-gv) + 1.0f) * to_f32(u[i]));
    }
}

template <typename T>
__device__ void swiglu_bwd_impl(const T* __restrict__ g, const T* __restrict__ u, const T* __restrict__ dy, T* __restrict__ d,
                                uint64_t n) {
    for (uint64_t i = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (uint64_t)gridDim.x * blockDim.x) {
        float gv = to_f32(g[i]), dv = to_f32(dy[i]);
        float s = 1.0f / (1.0f + expf(-gv));
        d[i] = from_f32<T>(dv * to_f32(u[i]) * s * (1.0f + gv * (1.0f - s)));
        d[n + i] = from_f32<T>(dv * gv * s);
    }
}

#define SWIGLU(suffix, T) \
    extern "C" __global__ void swiglu_fwd_##suffix(const T* g, const T* u, T* y, uint64_t n) { swiglu_fwd_impl<T>(g, u, y, n); } \
    extern "C" __global__ void swiglu_bwd_##suffix(const T* g, const T* u, const T* dy, T* d, uint64_t n) { swiglu_bwd_impl<T>(g, u, dy, d, n); }
SWIGLU(f32, float)
SWIGLU(bf16, __nv_bfloat16)
SWIGLU(f16, __half)

// In-place variants for the hand-written backward (no second activation-sized buffer):
// * swiglu_bwd_inplace_*: g[i], u[i] <- dL/dg, dL/du given dy (same arithmetic as swiglu_bwd_*);
// * dropout_inplace_*: x[i] <- keep(seed, i) ? x[i] * scale : 0 (same mask as dropout_*).
template <typename T>
__device__ void swiglu_bwd_inplace_impl(T* g, T* u, const T* __restrict__ dy, uint64_t n) {
    for (uint64_t i = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (uint64_t)gridDim.x * blockDim.x) {
        float gv = to_f32(g[i]), dv = to_f32(dy[i]), uv = to_f32(u[i]);
        float s = 1.0f / (1.0f + expf(-gv));
        g[i] = from_f32<T>(dv * uv * s * (1.0f + gv * (1.0f - s)));
        u[i] = from_f32<T>(dv * gv * s);
    }
}

template <typename T>
__device__ void dropout_inplace_impl(T* x, uint64_t n, uint64_t seed, uint32_t threshold, float scale) {
    for (uint64_t i = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (uint64_t)gridDim.x * blockDim.x) {
        x[i] = from_f32<T>(keep_hash(seed, i) < threshold ? to_f32(x[i]) * scale : 0.0f);
    }
}

#define INPLACE(suffix, T) \
    extern "C" __global__ void swiglu_bwd_inplace_##suffix(T* g, T* u, const T* dy, uint64_t n) { swiglu_bwd_inplace_impl<T>(g, u, dy, n); } \
    extern "C" __global__ void dropout_inplace_##suffix(T* x, uint64_t n, uint64_t seed, uint32_t threshold, float scale) { \
        dropout_inplace_impl<T>(x, n, seed, threshold, scale); \
    }
INPLACE(f32, float)
INPLACE(bf16, __nv_bfloat16)
INPLACE(f16, __half)
