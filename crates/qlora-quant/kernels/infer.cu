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

// Programmatic dependent launch (src/cuda/pdl.rs): wait until the previous kernel of the stream
// has completed and its writes are visible (a no-op when launched without PDL or before sm_90),
// and let the next kernel be scheduled. A kernel launched with PDL calls pdl_wait before its
// first read of another kernel's output and its first write, in every block.
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

// Eight consecutive elements (16 bytes in bf16/f16, 32 in f32; the address aligned to that)
// to f32 and back (rounded to nearest like from_f32).
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
__device__ __forceinline__ void store8(T* p, const float* v) {
    __align__(16) T t[8];
#pragma unroll
    for (int i = 0; i < 8; i++) t[i] = from_f32<T>(v[i]);
    *reinterpret_cast<uint4*>(p) = *reinterpret_cast<const uint4*>(t);
}
template <> __device__ __forceinline__ void store8<float>(float* p, const float* v) {
    reinterpret_cast<float4*>(p)[0] = make_float4(v[0], v[1], v[2], v[3]);
    reinterpret_cast<float4*>(p)[1] = make_float4(v[4], v[5], v[6], v[7]);
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
    pdl_wait();
    pdl_launch_dependents();
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

// The same with 8 consecutive elements per thread (h a multiple of 8, at most 8 * blockDim.x,
// every row 16-byte aligned): x, a and w are read with one vector load each, all issued before
// any is used, and the row stays in registers between the two passes (the scalar form above
// reads x and a element by element, then reads its own sum back). Same rounding.
template <typename T>
__device__ void add_rms_norm_vec_impl(const T* __restrict__ x, const T* __restrict__ a, const T* __restrict__ w,
                                      T* __restrict__ out, unsigned rows, unsigned h, float eps, int one_plus) {
    __shared__ float scratch[32];
    const size_t row = blockIdx.x;
    const unsigned d0 = threadIdx.x * 8;
    const bool has = d0 < h;
    T* norm_out = (a ? out + (size_t)rows * h : out) + row * h + d0;
    float v[8], av[8], wv[8];
    float ss = 0.f;
    if (has) load8<T>(w + d0, wv);  // the norm's weight is constant: read before the wait
    pdl_wait();
    pdl_launch_dependents();
    if (has) {
        load8<T>(x + row * h + d0, v);
        if (a) {
            load8<T>(a + row * h + d0, av);
#pragma unroll
            for (int i = 0; i < 8; i++) v[i] = rnd<T>(__fadd_rn(v[i], av[i]));
            store8<T>(out + row * h + d0, v);
        }
#pragma unroll
        for (int i = 0; i < 8; i++) ss = __fmaf_rn(v[i], v[i], ss);
    }
    ss = block_sum(ss, scratch);
    const float var = __fdiv_rn(ss, (float)h);
    const float r = __frcp_rn(__fsqrt_rn(__fadd_rn(var, eps)));
    if (!has) return;
#pragma unroll
    for (int i = 0; i < 8; i++) {
        const float n = __fmul_rn(v[i], r);
        v[i] = one_plus ? __fmul_rn(n, __fadd_rn(wv[i], 1.f)) : __fmul_rn(rnd<T>(n), wv[i]);
    }
    store8<T>(norm_out, v);
}

#define ADD_RMS_NORM(NAME, T)                                                                        \
    extern "C" __global__ void NAME(const T* x, const T* a, const T* w, T* out, unsigned rows, unsigned h, \
                                    float eps, int one_plus) {                                      \
        add_rms_norm_impl<T>(x, a, w, out, rows, h, eps, one_plus);                                 \
    }
ADD_RMS_NORM(add_rms_norm_f32, float)
ADD_RMS_NORM(add_rms_norm_bf16, __nv_bfloat16)
ADD_RMS_NORM(add_rms_norm_f16, __half)

#define ADD_RMS_NORM_VEC(NAME, T)                                                                    \
    extern "C" __global__ void NAME(const T* x, const T* a, const T* w, T* out, unsigned rows, unsigned h, \
                                    float eps, int one_plus) {                                      \
        add_rms_norm_vec_impl<T>(x, a, w, out, rows, h, eps, one_plus);                             \
    }
ADD_RMS_NORM_VEC(add_rms_norm_vec_f32, float)
ADD_RMS_NORM_VEC(add_rms_norm_vec_bf16, __nv_bfloat16)
ADD_RMS_NORM_VEC(add_rms_norm_vec_f16, __half)

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
    pdl_wait();
    pdl_launch_dependents();
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
// Grid (nkv * ceil(rep / HG), B), blockDim.x = 32 * warps; a block serves up to HG
// query heads of one kv head, so each K/V row is read once for all of them. q: [B, 1, nh*hd] at
// batch stride qsb, RoPE applied here into shared memory. A row of K (and of V) is split over
// Lp = pow2ceil(hd / 8) lanes, 8 elements each (one 16-byte load in bf16/f16), so a warp reads
// 32 / Lp consecutive positions per step and the block's warps stride over the positions: the
// reads are coalesced and all in flight together (no serial loop over keys). Each lane keeps an
// online softmax (max, sum, 8 output dims per head) for the positions its row slot saw; the row
// slots of a warp are merged by shuffles, the warps through shared memory. Scores as the
// unfused path rounds them: rnd(rnd(q·k) * rnd(scale)); out rounded once.
// HG (1, 2 or 4: ATT_HG below) is a template parameter: one query head a block gives 4-8 times
// the blocks of 4 (TinyLlama and Mistral-7B have 8 kv-head groups of 4, i.e. 8 blocks on 132
// SMs, each a long chain of dependent loads), and a lane then keeps 8 accumulators, not 32 (no
// spills). Every head's arithmetic is the same whatever HG, so the results are bit for bit equal.
// With len_ptr set, len = *len_ptr and start = len - window (window > 0, len > window) or 0;
// the host's len and start are ignored.
// With knew set (the KV append folded in, one token per sequence): knew / vnew hold this
// token's k and v ([B, 1, nkv*hd] at batch strides ksb, vsb); each block rotates its kv head's k
// into shared memory and attends to position len - 1 from there (and v likewise), and the first
// block of each kv head writes both into the cache, exactly as kv_append would (k rounded once
// after RoPE, v copied), unless len is past the capacity (then nothing is written, as there).
// Blocks never read the cache at len - 1, so no block waits for another's write.
struct AttnParams {
    RopeParams rope;
    unsigned B, nh, nkv, hd, cap, len, start;
    float scale;
    unsigned long long qsb;
    unsigned window;
    unsigned long long len_ptr;
    unsigned long long knew, vnew, ksb, vsb;
    unsigned prefetch;  // prefetch this block's cached K/V rows into L2 before the wait
};

// The cached K and V rows a block will read (kv head kvh of sequence b, positions start ..
// len - 1), one 128-byte line a thread per step, into L2: issued before pdl_wait, while the
// previous kernel (the q/k/v GEMV) still runs. The rows were written by earlier steps (the
// length comes from the host before the step), and an L2 prefetch never leaves a stale copy
// on the SM, so the line of the position appended in this step is harmless too.
// `skip`: positions at the start left out (the ones the pw kernels load into registers).
template <typename T>
__device__ __forceinline__ void prefetch_kv(const T* cache, const AttnParams& p, unsigned kvh, unsigned b, unsigned skip = 0) {
    unsigned len = p.len, start = p.start;
    if (p.len_ptr) {
        len = min(*reinterpret_cast<const unsigned*>(p.len_ptr), p.cap);
        start = (p.window > 0 && len > p.window) ? len - p.window : 0;
    }
    start += min(skip, len - min(start, len));
    if (len <= start) return;
    const unsigned row_bytes = p.hd * sizeof(T), lines = (row_bytes + 127u) >> 7;
    const size_t plane = (size_t)p.B * p.nkv * p.cap * p.hd;
    const char* k0 = reinterpret_cast<const char*>(cache + ((size_t)b * p.nkv + kvh) * p.cap * p.hd);
    const char* v0 = reinterpret_cast<const char*>(cache + plane + ((size_t)b * p.nkv + kvh) * p.cap * p.hd);
    const unsigned n = (len - start) * lines;
    for (unsigned i = threadIdx.x; i < 2 * n; i += blockDim.x) {
        const unsigned e = i < n ? i : i - n;
        const size_t off = (size_t)(start + e / lines) * row_bytes + (e % lines) * 128u;
        asm volatile("prefetch.global.L2 [%0];" ::"l"((i < n ? k0 : v0) + off));
    }
}

// One position's score and online-softmax update for the ATT_HG heads of a lane's row slot.
// Every lane calls it (the dot product is summed over the row's Lp lanes by shuffles); `ok`
// says whether the position is one of the attended ones.
template <typename T, int ATT_HG>
__device__ __forceinline__ void attn_update(const float (&qr)[ATT_HG][8], const float* kf, const float* vf, bool ok,
                                            unsigned Lp, unsigned nhg, float scale_t, float* m, float* l,
                                            float (&acc)[ATT_HG][8]) {
#pragma unroll
    for (int g = 0; g < ATT_HG; g++) {
        if (g >= (int)nhg) break;  // uniform over the block
        float dot = 0.f;
#pragma unroll
        for (int i = 0; i < 8; i++) dot = fmaf(qr[g][i], kf[i], dot);
        for (unsigned o = Lp >> 1; o > 0; o >>= 1) dot += __shfl_xor_sync(0xffffffffu, dot, o);
        if (ok) {
            const float s = rnd<T>(__fmul_rn(rnd<T>(dot), scale_t));
            const float mn = fmaxf(m[g], s);
            const float c = __expf(m[g] - mn);  // m = -inf before the first position: 0
            const float pw = __expf(s - mn);
            l[g] = fmaf(l[g], c, pw);
#pragma unroll
            for (int i = 0; i < 8; i++) acc[g][i] = fmaf(pw, vf[i], acc[g][i] * c);
            m[g] = mn;
        }
    }
}

// A lane's 8 elements of a cached K or V row as loaded (16 bytes in bf16/f16, 32 in f32), turned
// into f32 by unraw8 exactly as load8 does: the loads of several positions can be in flight
// before any is used.
template <typename T> struct Raw8 { uint4 v[sizeof(T) == 4 ? 2 : 1]; };
template <typename T>
__device__ __forceinline__ void ld_raw8(const T* p, Raw8<T>& r) {
#pragma unroll
    for (int i = 0; i < (int)(sizeof(r.v) / sizeof(uint4)); i++) r.v[i] = reinterpret_cast<const uint4*>(p)[i];
}
template <typename T>
__device__ __forceinline__ void unraw8(const Raw8<T>& r, float* o) {
    if constexpr (sizeof(T) == 4) {
        const float4 a = *reinterpret_cast<const float4*>(&r.v[0]), b = *reinterpret_cast<const float4*>(&r.v[1]);
        o[0] = a.x; o[1] = a.y; o[2] = a.z; o[3] = a.w; o[4] = b.x; o[5] = b.y; o[6] = b.z; o[7] = b.w;
    } else {
        const uint32_t w[4] = {r.v[0].x, r.v[0].y, r.v[0].z, r.v[0].w};
#pragma unroll
        for (int i = 0; i < 4; i++) {
            if constexpr (std::is_same<T, __half>::value) {
                const float2 f = __half22float2(*reinterpret_cast<const __half2*>(&w[i]));
                o[2 * i] = f.x; o[2 * i + 1] = f.y;
            } else {
                o[2 * i] = __uint_as_float(w[i] << 16); o[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
            }
        }
    }
}

// P: positions a lane's row slot loads before it uses any (its rows j, j + stride, ..., in the
// order the online softmax takes them whatever P, so every P gives the same bits). PRE (with
// the append folded in, `knew`): the first P rows of each slot, all written by earlier steps,
// are loaded into registers before the programmatic-launch wait, while the q/k/v GEMV still
// runs; only q and this token's k and v are read after it.
template <typename T, int ATT_HG, int P = 2, bool PRE = false>
__device__ void decode_attn_impl(const T* __restrict__ q, const T* __restrict__ cache, T* __restrict__ out, const AttnParams& p) {
    extern __shared__ float4 attn_smem4[];
    float* smem = reinterpret_cast<float*>(attn_smem4);
    const unsigned hd = p.hd, rep = p.nh / p.nkv, ngroups = (rep + ATT_HG - 1) / ATT_HG;
    const unsigned kvh = blockIdx.x / ngroups, h0 = kvh * rep + (blockIdx.x % ngroups) * ATT_HG;
    const unsigned nhg = min((unsigned)ATT_HG, kvh * rep + rep - h0), b = blockIdx.y;
    const unsigned lane = threadIdx.x & 31u, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    // A K/V row is split over Lp = pow2ceil(hd / 8) lanes (8 elements each); G rows a warp.
    const unsigned L = hd >> 3;
    unsigned Lp = 1;
    while (Lp < L) Lp <<= 1;
    const unsigned G = 32 / Lp, r = lane / Lp, sub = lane % Lp, d0 = sub * 8;
    const bool has = sub < L;
    const size_t plane = (size_t)p.B * p.nkv * p.cap * hd;
    const T* kbase = cache + ((size_t)b * p.nkv + kvh) * p.cap * hd + d0;
    const T* vbase = kbase + plane;
    const unsigned stride = nw * G;
    auto span = [&](unsigned& len, unsigned& start, bool& fresh) {
        len = p.len;
        start = p.start;
        fresh = p.knew != 0 && len <= p.cap;  // the host checked len <= cap for a host length
        if (p.len_ptr) {
            const unsigned raw = *reinterpret_cast<const unsigned*>(p.len_ptr);
            len = min(raw, p.cap);
            start = (p.window > 0 && len > p.window) ? len - p.window : 0;
            fresh = p.knew != 0 && raw <= p.cap;
        }
    };
    Raw8<T> kraw[P], vraw[P];
    unsigned len0 = 0, start0 = 0;
    bool fresh0 = false;
    if constexpr (PRE) {
        // The length is the host's, or on the device since before the step (as prefetch_kv).
        span(len0, start0, fresh0);
        if (fresh0) {
#pragma unroll
            for (int i = 0; i < P; i++) {
                const unsigned j = start0 + warp * G + r + i * stride;
                if (has && j + 1 < len0) {  // not position len - 1: this step's, written below
                    ld_raw8<T>(kbase + (size_t)j * hd, kraw[i]);
                    ld_raw8<T>(vbase + (size_t)j * hd, vraw[i]);
                }
            }
        }
        // Longer spans: the rest into L2, as the other kernels do with all of it.
        if (p.prefetch) prefetch_kv<T>(cache, p, kvh, b, P * stride);
    } else if (p.prefetch) {
        prefetch_kv<T>(cache, p, kvh, b);
    }
    pdl_wait();
    pdl_launch_dependents();
    unsigned len, start;
    bool fresh;
    span(len, start, fresh);
    // The rows loaded before the wait are this span's first (always, unless the length moved).
    bool loaded = PRE && fresh0 && fresh && len == len0 && start == start0;
    T* o = out + ((size_t)b * p.nh + h0) * hd;
    if (len == 0) {
        for (unsigned e = threadIdx.x; e < nhg * hd; e += blockDim.x) o[e] = from_f32<T>(0.f);
        return;
    }
    const unsigned pos = len - 1;
    float* qs = smem;                  // [ATT_HG][hd]: q rotated
    float* red = smem + ATT_HG * hd;   // [nw][ATT_HG][hd + 2]: each warp's output, max, sum
    float* kvs = red + nw * ATT_HG * (hd + 2);  // [2][hd]: this token's k (rotated) and v (fresh)
    const T* qb = q + b * p.qsb + (size_t)h0 * hd;
    for (unsigned e = threadIdx.x; e < nhg * hd; e += blockDim.x) {
        const unsigned g = e / hd;
        qs[e] = rope_at<T>(qb + g * hd, e - g * hd, pos, p.rope);
    }
    if (fresh) {
        const T* kr = reinterpret_cast<const T*>(p.knew) + b * p.ksb + (size_t)kvh * hd;
        const T* vr = reinterpret_cast<const T*>(p.vnew) + b * p.vsb + (size_t)kvh * hd;
        const bool writer = blockIdx.x % ngroups == 0;
        const size_t at = (((size_t)b * p.nkv + kvh) * p.cap + pos) * hd;
        const size_t plane = (size_t)p.B * p.nkv * p.cap * hd;
        for (unsigned d = threadIdx.x; d < hd; d += blockDim.x) {
            const float kd = rope_at<T>(kr, d, pos, p.rope);
            kvs[d] = kd;
            kvs[hd + d] = to_f32<T>(vr[d]);
            if (writer) {
                const_cast<T*>(cache)[at + d] = from_f32<T>(kd);
                const_cast<T*>(cache)[plane + at + d] = vr[d];
            }
        }
    }
    __syncthreads();
    float qr[ATT_HG][8], acc[ATT_HG][8], m[ATT_HG], l[ATT_HG];
#pragma unroll
    for (int g = 0; g < ATT_HG; g++) {
        m[g] = -INFINITY;
        l[g] = 0.f;
#pragma unroll
        for (int i = 0; i < 8; i++) {
            qr[g][i] = (has && g < (int)nhg) ? qs[g * hd + d0 + i] : 0.f;
            acc[g][i] = 0.f;
        }
    }
    const float scale_t = rnd<T>(p.scale);
    // P positions per lane per iteration, all their rows loaded before any is used.
    for (unsigned jw = start + warp * G; jw < len; jw += P * stride) {  // uniform over the warp
        if (!loaded) {
#pragma unroll
            for (int i = 0; i < P; i++) {
                const unsigned j = jw + r + i * stride;
                if (has && j < len && !(fresh && j == pos)) {
                    ld_raw8<T>(kbase + (size_t)j * hd, kraw[i]);
                    ld_raw8<T>(vbase + (size_t)j * hd, vraw[i]);
                }
            }
        }
        loaded = false;
#pragma unroll
        for (int i = 0; i < P; i++) {
            const unsigned j = jw + r + i * stride;
            const bool ok = j < len;
            float kf[8], vf[8];
            if (ok && has && fresh && j == pos) {
#pragma unroll
                for (int e = 0; e < 8; e++) { kf[e] = kvs[d0 + e]; vf[e] = kvs[hd + d0 + e]; }
            } else if (ok && has) {
                unraw8<T>(kraw[i], kf);
                unraw8<T>(vraw[i], vf);
            } else {
#pragma unroll
                for (int e = 0; e < 8; e++) kf[e] = vf[e] = 0.f;
            }
            attn_update<T, ATT_HG>(qr, kf, vf, ok, Lp, nhg, scale_t, m, l, acc);
        }
    }
    // Merge the row slots of the warp (lanes sub, sub + Lp, ...).
    for (unsigned off = Lp; off < 32; off <<= 1) {
#pragma unroll
        for (int g = 0; g < ATT_HG; g++) {
            if (g >= (int)nhg) break;
            const float mo = __shfl_xor_sync(0xffffffffu, m[g], off), lo = __shfl_xor_sync(0xffffffffu, l[g], off);
            const float mn = fmaxf(m[g], mo);
            const float f1 = m[g] == -INFINITY ? 0.f : __expf(m[g] - mn);
            const float f2 = mo == -INFINITY ? 0.f : __expf(mo - mn);
            l[g] = l[g] * f1 + lo * f2;
#pragma unroll
            for (int i = 0; i < 8; i++) {
                const float ao = __shfl_xor_sync(0xffffffffu, acc[g][i], off);
                acc[g][i] = acc[g][i] * f1 + ao * f2;
            }
            m[g] = mn;
        }
    }
    if (r == 0) {
#pragma unroll
        for (int g = 0; g < ATT_HG; g++) {
            if (g >= (int)nhg) break;
            float* w = red + (warp * ATT_HG + g) * (hd + 2);
            if (has) {
#pragma unroll
                for (int i = 0; i < 8; i++) w[d0 + i] = acc[g][i];
            }
            if (sub == 0) { w[hd] = m[g]; w[hd + 1] = l[g]; }
        }
    }
    __syncthreads();
    // Merge the warps: one output element per thread.
    for (unsigned e = threadIdx.x; e < nhg * hd; e += blockDim.x) {
        const unsigned g = e / hd, d = e - g * hd;
        float mm = -INFINITY;
        for (unsigned w = 0; w < nw; w++) mm = fmaxf(mm, red[(w * ATT_HG + g) * (hd + 2) + hd]);
        float v = 0.f, tot = 0.f;
        for (unsigned w = 0; w < nw; w++) {
            const float* rw = red + (w * ATT_HG + g) * (hd + 2);
            const float f = rw[hd] == -INFINITY ? 0.f : __expf(rw[hd] - mm);
            tot = fmaf(rw[hd + 1], f, tot);
            v = fmaf(rw[d], f, v);
        }
        o[e] = from_f32<T>(v / tot);
    }
}

#define DECODE_ATTN(HG, SFX, T)                                                                           \
    extern "C" __global__ void __launch_bounds__(512) decode_attn_g##HG##_##SFX(const T* q, const T* cache, T* out, \
                                                                             AttnParams p) {       \
        decode_attn_impl<T, HG>(q, cache, out, p);                                                        \
    }
#define DECODE_ATTN_ALL(SFX, T) DECODE_ATTN(1, SFX, T) DECODE_ATTN(2, SFX, T) DECODE_ATTN(4, SFX, T)
DECODE_ATTN_ALL(f32, float)
DECODE_ATTN_ALL(bf16, __nv_bfloat16)
DECODE_ATTN_ALL(f16, __half)
// One query head a block, P rows a slot in flight, the first P loaded before the wait (PRE;
// host: `attention_shape`, 16-bit T).
#define DECODE_ATTN_PW(P, SFX, T)                                                                          \
    extern "C" __global__ void __launch_bounds__(512) decode_attn_pw##P##_g1_##SFX(const T* q, const T* cache, T* out, \
                                                                                 AttnParams p) {      \
        decode_attn_impl<T, 1, P, true>(q, cache, out, p);                                                 \
    }
DECODE_ATTN_PW(4, bf16, __nv_bfloat16) DECODE_ATTN_PW(8, bf16, __nv_bfloat16)
DECODE_ATTN_PW(4, f16, __half) DECODE_ATTN_PW(8, f16, __half)

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

// ------------------------------------------------------------------ prefill softmax, rows in registers
// The same probabilities as masked_softmax_impl for rows of at most 32 * PER_LANE keys, one warp
// per row: each score is read once (not three times) and kept in registers, and the reductions
// are warp shuffles (no block barriers). Masked keys hold -inf, whose exponential is 0; key
// `pos` itself is always kept, so the maximum is finite.
template <typename T, int PER_LANE>
__device__ void masked_softmax_warp_impl(const T* __restrict__ scores, T* __restrict__ probs, unsigned rows,
                                         unsigned t, unsigned len, unsigned past, unsigned window, float scale) {
    const size_t row = (size_t)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (row >= rows) return;
    const unsigned lane = threadIdx.x & 31;
    const unsigned pos = past + (unsigned)(row % t);
    const unsigned lo = (window > 0 && pos + 1 > window) ? pos + 1 - window : 0;
    const unsigned hi = min(pos + 1, len);
    const T* s = scores + row * len;
    T* o = probs + row * len;
    float v[PER_LANE];
    float mx = -INFINITY;
#pragma unroll
    for (int i = 0; i < PER_LANE; ++i) {
        const unsigned j = lane + 32u * i;
        v[i] = (j >= lo && j < hi) ? to_f32<T>(s[j]) * scale : -INFINITY;
        mx = fmaxf(mx, v[i]);
    }
    mx = warp_max(mx);
    float sum = 0.f;
#pragma unroll
    for (int i = 0; i < PER_LANE; ++i) {
        v[i] = __expf(v[i] - mx);
        sum += v[i];
    }
    const float inv = 1.f / warp_sum(sum);
#pragma unroll
    for (int i = 0; i < PER_LANE; ++i) {
        const unsigned j = lane + 32u * i;
        if (j < len) o[j] = from_f32<T>(v[i] * inv);
    }
}

#define MASKED_SOFTMAX_WARP(P, SUFFIX, T)                                                               \
    extern "C" __global__ void masked_softmax_w##P##_##SUFFIX(const T* scores, T* probs, unsigned rows,  \
                                                              unsigned t, unsigned len, unsigned past,    \
                                                              unsigned window, float scale) {             \
        masked_softmax_warp_impl<T, P>(scores, probs, rows, t, len, past, window, scale);               \
    }
#define MASKED_SOFTMAX_WARPS(SUFFIX, T) \
    MASKED_SOFTMAX_WARP(4, SUFFIX, T) MASKED_SOFTMAX_WARP(8, SUFFIX, T) MASKED_SOFTMAX_WARP(16, SUFFIX, T) MASKED_SOFTMAX_WARP(32, SUFFIX, T)
MASKED_SOFTMAX_WARPS(f32, float)
MASKED_SOFTMAX_WARPS(bf16, __nv_bfloat16)
MASKED_SOFTMAX_WARPS(f16, __half)

// ------------------------------------------------------------------ heads back to rows
// [B, H, T, D] -> [B, T, H, D] (attention output back to one row per token), 16 bytes a thread:
// `pieces` = D * sizeof(element) / 16 per head row; `n` the output's pieces in all.
extern "C" __global__ void heads_to_rows_16b(const uint4* __restrict__ in, uint4* __restrict__ out, unsigned h,
                                             unsigned t, unsigned pieces, unsigned long long n) {
    const unsigned long long idx = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= n) return;
    const unsigned d = (unsigned)(idx % pieces);
    unsigned long long r = idx / pieces;
    const unsigned hh = (unsigned)(r % h);
    r /= h;
    const unsigned i = (unsigned)(r % t);
    const unsigned long long b = r / t;
    out[idx] = in[((b * h + hh) * t + i) * pieces + d];
}

// ------------------------------------------------------------------ greedy pick
// ids[b] = the index of the largest value of row b of x (n values, rows `ld` apart): the first
// one on ties, as candle's CPU argmax and torch.argmax (NaN never wins here; a row of -inf or
// NaN gives 0). A block of 1024 threads a row, 16-byte loads where the row allows. With `len`,
// block 0 then adds one to *len: a decode step captured with its pick (model/decode_graph.rs)
// writes the next step's token ids and cache length itself, so the host can queue the next
// replay before reading this one's ids.
__device__ __forceinline__ void argmax_pair(float& v, unsigned& i, float ov, unsigned oi) {
    if (ov > v || (ov == v && oi < i)) { v = ov; i = oi; }
}
template <typename T>
__device__ void argmax_rows_impl(const T* __restrict__ x, unsigned n, unsigned ld, uint32_t* ids, uint32_t* len) {
    __shared__ float s_v[32];
    __shared__ unsigned s_i[32];
    // No launch_dependents: a greedy step's last kernel, followed by the copy of its ids to the
    // host, not by a kernel that could start early.
    pdl_wait();
    const T* r = x + (size_t)blockIdx.x * ld;
    float best = -INFINITY;
    unsigned bi = 0xffffffffu;
    if (n % 8 == 0 && reinterpret_cast<uintptr_t>(r) % 16 == 0) {
#pragma unroll 4
        for (unsigned i = threadIdx.x * 8; i < n; i += blockDim.x * 8) {
            float v[8];
            load8<T>(r + i, v);
#pragma unroll
            for (int j = 0; j < 8; j++)
                if (v[j] > best) { best = v[j]; bi = i + j; }
        }
    } else {
        for (unsigned i = threadIdx.x; i < n; i += blockDim.x) {
            const float v = to_f32<T>(r[i]);
            if (v > best) { best = v; bi = i; }
        }
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) argmax_pair(best, bi, __shfl_xor_sync(0xffffffffu, best, o), __shfl_xor_sync(0xffffffffu, bi, o));
    const unsigned lane = threadIdx.x & 31u, warp = threadIdx.x >> 5;
    if (lane == 0) { s_v[warp] = best; s_i[warp] = bi; }
    __syncthreads();
    if (warp == 0) {
        const unsigned nw = blockDim.x >> 5;
        best = lane < nw ? s_v[lane] : -INFINITY;
        bi = lane < nw ? s_i[lane] : 0xffffffffu;
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) argmax_pair(best, bi, __shfl_xor_sync(0xffffffffu, best, o), __shfl_xor_sync(0xffffffffu, bi, o));
        if (lane == 0) {
            ids[blockIdx.x] = bi == 0xffffffffu ? 0u : bi;
            if (len && blockIdx.x == 0) *len += 1u;
        }
    }
}
#define ARGMAX_ROWS(SFX, T)                                                                                  \
    extern "C" __global__ void __launch_bounds__(1024) argmax_rows_##SFX(const T* x, unsigned n, unsigned ld, \
                                                                        uint32_t* ids, uint32_t* len) {       \
        argmax_rows_impl<T>(x, n, ld, ids, len);                                                             \
    }
ARGMAX_ROWS(f32, float)
ARGMAX_ROWS(bf16, __nv_bfloat16)
ARGMAX_ROWS(f16, __half)
