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
