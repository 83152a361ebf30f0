// Multi-tensor optimizer kernels (issue 7), compiled to PTX by build.rs and launched from
// src/cuda/optim.rs. One launch covers every LoRA tensor of a model: a device array of
// per-tensor descriptors (pointers and length) and, per tensor, the index of its first block;
// each block finds its tensor by binary search and works on one chunk of it.
//
// * adamw_multi_f32: AdamW's moment and parameter update, operation for operation the
//   per-tensor kernels adamw_moment_f32 / adamw_update_f32 of train.cu (each product and sum
//   rounded to f32 on its own, no contraction into FMAs), so the result is the same to the bit.
//   The gradient may first be multiplied by `gscale` (clipping, loss scaling) as candle's
//   affine would (x * mul + 0). Where a descriptor has a 16-bit shadow, the new parameter is
//   also written there, rounded to nearest even (what `to_dtype` would make).
// * sumsq_multi_f32: each block's sum of squares of its chunk in f64, one partial per block;
//   sum_partials_f64 adds the partials in a fixed order (one block), so the global gradient
//   norm is deterministic and needs one read back.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

struct AdamWTensor {
    float* w;
    float* m;
    float* v;
    const float* g;
    void* shadow;  // bf16 or f16 copy of w (shadow_kind), or null
    uint64_t n;
};

struct AdamWConsts {
    float b1, c1, b2, c2, inv_bc2, eps, step_size, decay, gscale;
    uint32_t wd_on, gscale_on, shadow_kind;  // shadow_kind: 1 = bf16, 2 = f16
};

// The tensor whose blocks include `block`: the last j with first_block[j] <= block.
__device__ __forceinline__ uint32_t tensor_of(const uint32_t* __restrict__ first_block, uint32_t count, uint32_t block) {
    uint32_t lo = 0, hi = count - 1;
    while (lo < hi) {
        uint32_t mid = (lo + hi + 1) / 2;
        if (first_block[mid] <= block) lo = mid; else hi = mid - 1;
    }
    return lo;
}

extern "C" __global__ void adamw_multi_f32(const AdamWTensor* __restrict__ ts, const uint32_t* __restrict__ first_block,
                                           uint32_t count, uint64_t chunk, AdamWConsts c) {
    uint32_t j = tensor_of(first_block, count, blockIdx.x);
    AdamWTensor t = ts[j];
    uint64_t start = (uint64_t)(blockIdx.x - first_block[j]) * chunk;
    uint64_t end = start + chunk < t.n ? start + chunk : t.n;
    for (uint64_t i = start + threadIdx.x; i < end; i += blockDim.x) {
        float g = t.g[i];
        if (c.gscale_on) g = __fadd_rn(__fmul_rn(g, c.gscale), 0.0f);
        float m = __fadd_rn(__fmul_rn(t.m[i], c.b1), __fmul_rn(g, c.c1));
        float v = __fadd_rn(__fmul_rn(t.v[i], c.b2), __fmul_rn(__fmul_rn(g, g), c.c2));
        t.m[i] = m;
        t.v[i] = v;
        float wi = c.wd_on ? __fmul_rn(t.w[i], c.decay) : t.w[i];
        float denom = __fadd_rn(__fmul_rn(__fsqrt_rn(v), c.inv_bc2), c.eps);
        float w = __fsub_rn(wi, __fmul_rn(__fdiv_rn(m, denom), c.step_size));
        t.w[i] = w;
        if (t.shadow != nullptr) {
            if (c.shadow_kind == 1) ((__nv_bfloat16*)t.shadow)[i] = __float2bfloat16_rn(w);
            else ((__half*)t.shadow)[i] = __float2half_rn(w);
        }
    }
}

struct SumsqTensor {
    const float* g;
    uint64_t n;
};

// blockDim.x must be 256.
extern "C" __global__ void sumsq_multi_f32(const SumsqTensor* __restrict__ ts, const uint32_t* __restrict__ first_block,
                                           uint32_t count, uint64_t chunk, double* __restrict__ partials) {
    __shared__ double red[256];
    uint32_t j = tensor_of(first_block, count, blockIdx.x);
    SumsqTensor t = ts[j];
    uint64_t start = (uint64_t)(blockIdx.x - first_block[j]) * chunk;
    uint64_t end = start + chunk < t.n ? start + chunk : t.n;
    double acc = 0.0;
    for (uint64_t i = start + threadIdx.x; i < end; i += blockDim.x) {
        double x = (double)t.g[i];
        acc += x * x;
    }
    red[threadIdx.x] = acc;
    __syncthreads();
    for (uint32_t s = 128; s > 0; s >>= 1) {
        if (threadIdx.x < s) red[threadIdx.x] += red[threadIdx.x + s];
        __syncthreads();
    }
    if (threadIdx.x == 0) partials[blockIdx.x] = red[0];
}

// One block of 256 threads: out[0] = the sum of partials[0..n] in a fixed order.
extern "C" __global__ void sum_partials_f64(const double* __restrict__ partials, uint64_t n, double* __restrict__ out) {
    __shared__ double red[256];
    double acc = 0.0;
    for (uint64_t i = threadIdx.x; i < n; i += blockDim.x) acc += partials[i];
    red[threadIdx.x] = acc;
    __syncthreads();
    for (uint32_t s = 128; s > 0; s >>= 1) {
        if (threadIdx.x < s) red[threadIdx.x] += red[threadIdx.x + s];
        __syncthreads();
    }
    if (threadIdx.x == 0) out[0] = red[0];
}
