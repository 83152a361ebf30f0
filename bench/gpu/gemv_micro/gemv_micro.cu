// NF4 GEMV micro-benchmark at batch 1 on the decode shapes of a model (no Rust, no candle), to
// find where a decode step's GEMV time goes. Over every layer's own weights (random, the
// model's real shapes; the L2 holds none of them from the previous launch, as in a decode step),
// launched as a CUDA graph with programmatic dependent launch as the engine's step is:
//  * `stream`: a plain read of the packed weights (16-byte loads, grid-stride): the ceiling;
//  * `reg`: the engine's GEMVs (kernels/nf4.cu nf4_gemv_multi / nf4_gemv_glu; GM_PF=1 takes the
//    `_pf` kernels for k <= 2048 as the engine does);
//  * `ws`: the warp-specialized persistent experiment of ws_kernel.cuh (not in the engine);
//  * `pw`, `pwa`: session 10's persistent-warp experiments of pw_kernel.cuh (not in the engine).
// Prints one JSON line per (model, part, kernel): us a launch and the bytes read over it; the
// four parts in a layer's order (`layer_chain`); and checks each experiment against `reg`.
// Knobs: GM_PLAIN=1 (plain f32 absmax instead of double quantization), GM_LAYERS (weights
// reused from L2), WS_BPS / WS_STAGES (the experiment's blocks an SM and ring stages),
// GM_PW_BPS / GM_PWA_BPS (blocks an SM of pw / pwa; their build switches PW_NR, PW_PD, PW_PFL,
// PW_MINB, PWA_D, PWA_MINB go in GM_DEFS), GM_PC_KIND (the kind the pc build samples: 0 reg,
// 2 pw, 3 pwa).
// Build and run: bench/gpu/gemv_micro/run.sh.
#ifdef GM_KERNELS  // another revision's kernels/nf4.cu (run.sh --rev REV), without the experiment
#include GM_KERNELS
#define GM_KINDS 1
#else
#include "../../../crates/qlora-quant/kernels/nf4.cu"
#include "ws_kernel.cuh"
#include "pw_kernel.cuh"
#define GM_KINDS 4
#endif
#include <cuda_runtime.h>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>
#define CK(x) do { cudaError_t e_ = (x); if (e_ != cudaSuccess) { fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_)); exit(1); } } while (0)
#ifdef GM_PC  // the warp-stall profile (run.sh build-pc): CUPTI PC sampling
#include "pcsample.cuh"
#endif
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

__global__ void fill_rand(uint8_t* p, size_t n, uint32_t seed) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        uint32_t h = (uint32_t)i * 2654435761u ^ seed;
        h ^= h >> 15; h *= 2246822519u; h ^= h >> 13; h *= 3266489917u; h ^= h >> 16;
        p[i] = (uint8_t)h;
    }
}
__global__ void fill_f32(float* p, size_t n, float a, float b, uint32_t seed) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        uint32_t h = (uint32_t)i * 2654435761u ^ seed;
        h ^= h >> 15; h *= 2246822519u; h ^= h >> 13;
        p[i] = a + (b - a) * (h & 0xffffff) / 16777216.f;
    }
}
__global__ void fill_bf16(__nv_bfloat16* p, size_t n, uint32_t seed) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        uint32_t h = (uint32_t)i * 2654435761u ^ seed;
        h ^= h >> 15; h *= 2246822519u; h ^= h >> 13;
        p[i] = __float2bfloat16(((h & 0xffff) / 65536.f - 0.5f) * 2.f);
    }
}

static uint32_t g_seed = 1;
template <typename P> P* dalloc(size_t n) { P* p; CK(cudaMalloc(&p, n * sizeof(P) + 256)); return p; }

struct Weight {  // one NF4 weight [rows, k], blocksize 64, double quantized (nested blocks of 256)
    Nf4Seg s;
    size_t bytes;  // what a GEMV reads: packed + q + nested
};
static Weight make_weight(unsigned rows, unsigned k) {
    size_t n = (size_t)rows * k, nb = n / 64, nn = (nb + 255) / 256;
    uint8_t* packed = dalloc<uint8_t>(n / 2);
    uint8_t* q = dalloc<uint8_t>(nb);
    float* nested = dalloc<float>(nn);
    fill_rand<<<1024, 256>>>(packed, n / 2, g_seed++);
    fill_rand<<<256, 256>>>(q, nb, g_seed++);
    fill_f32<<<64, 256>>>(nested, nn, 0.005f, 0.02f, g_seed++);
    Weight w;
    memset(&w.s, 0, sizeof(w.s));
    w.s.packed = packed; w.s.absmax = nested; w.s.q = q; w.s.nested = nested; w.s.bias = nullptr;
    w.s.offset = 0.01f; w.s.bs_log2 = 6; w.s.nbs_log2 = 8; w.s.dq = 1; w.s.rows = rows; w.s.col0 = 0;
    w.bytes = n / 2 + nb + nn * 4;
    if (getenv("GM_PLAIN")) {  // plain f32 block scales (no double quantization)
        float* am = dalloc<float>(nb);
        fill_f32<<<256, 256>>>(am, nb, 0.005f, 0.02f, g_seed++);
        w.s.absmax = am; w.s.dq = 0;
        w.bytes = n / 2 + nb * 4;
    }
    return w;
}

struct Part { std::string name; bool glu; std::vector<unsigned> rows; unsigned k; };
struct Layer { std::vector<Weight> w; };

static int g_nsm = 132;
static unsigned g_bps = 2;
static bool g_pf = false;  // the _pf kernels (rows asked of L2 first) for k <= 2048, as the engine picks them
static int g_ls = 0;  // GM_LS=1: the lane-scale GEMVs (kernels/nf4.cu nf4_gemv_*_ls) as reg
static float* g_tables;

static Nf4Multi multi_of(const std::vector<Weight>& ws) {
    Nf4Multi m;
    memset(&m, 0, sizeof(m));
    unsigned col = 0;
    for (size_t i = 0; i < ws.size(); i++) { m.seg[i] = ws[i].s; m.seg[i].col0 = col; col += ws[i].s.rows; }
    m.nseg = (unsigned)ws.size(); m.ntotal = col; m.tables = g_tables; m.prefetch = 0;
    return m;
}

static void launch(const void* fn, dim3 grid, dim3 block, size_t smem, cudaStream_t st, void** args) {
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = grid; cfg.blockDim = block; cfg.dynamicSmemBytes = smem; cfg.stream = st;
    cudaLaunchAttribute at[1];
    at[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    at[0].val.programmaticStreamSerializationAllowed = 1;
    cfg.attrs = at; cfg.numAttrs = 1;
    CK(cudaLaunchKernelExC(&cfg, fn, args));
}

// The warp-specialized plan for k: output rows a consumer warp (RW) and warps a row (CS).
static bool ws_plan(unsigned k, bool glu, int* rw, int* cs) {
    if (!glu) { if (k <= 4096) { *rw = 2; *cs = 1; } else if (k <= 8192) { *rw = 1; *cs = 1; } else if (k <= 16384) { *rw = 1; *cs = 2; } else return false; }
    else { if (k <= 4096) { *rw = 1; *cs = 1; } else if (k <= 8192) { *rw = 1; *cs = 2; } else return false; }
    return true;
}
#if GM_KINDS > 1
#define WS_FN(GLU, RW, CS) (GLU ? (const void*)nf4_gemv_ws_glu_bf16_r##RW##_c##CS : (const void*)nf4_gemv_ws_bf16_r##RW##_c##CS)
static const void* ws_fn(bool glu, int rw, int cs) {
    if (cs == 2) return WS_FN(glu, 1, 2);
    return rw == 2 ? WS_FN(glu, 2, 1) : WS_FN(glu, 1, 1);
}
#endif
static unsigned g_stages = 3;
static unsigned g_pw_bps = 4;  // the persistent-warp GEMV's blocks an SM (GM_PW_BPS)
static unsigned g_pwa_bps = 5;  // the same fed by cp.async (GM_PWA_BPS)

// Whether the experiment takes part p: a plan for its k, and whole 16-byte copies of each row's
// scale bytes (q bytes, or f32 absmax with GM_PLAIN).
static bool ws_supported(const Part& p) {
#if GM_KINDS > 1
    int rw, cs;
    const unsigned kb = p.k / 64;
    return ws_plan(p.k, p.glu, &rw, &cs) && kb % (getenv("GM_PLAIN") ? 4 : 16) == 0;
#else
    (void)p;
    return false;
#endif
}

// One GEMV of part p on layer weights ws: kind 0 = register-streaming, 1 = TMA.
static void run_part(int kind, const Part& p, const std::vector<Weight>& ws, const __nv_bfloat16* x, __nv_bfloat16* y, cudaStream_t st) {
    unsigned k = p.k;
#if GM_KINDS > 2
    if (kind >= 2) {  // persistent warps (kernels/nf4.cu gemv_pw_impl; kind 3: gemv_pwa_impl)
        Nf4Multi m = multi_of(ws);
        if (p.glu) { m.ntotal = ws[0].s.rows; m.nseg = 2; }
        const unsigned nro = p.glu ? PW_NR / 2 : PW_NR, groups = (m.ntotal + nro - 1) / nro;
        const unsigned grid = std::min<unsigned>((groups + GW - 1) / GW, g_nsm * (kind == 2 ? g_pw_bps : g_pwa_bps));
        const void* fg = kind == 2 ? (const void*)nf4_gemv_pw_glu_bf16 : (const void*)nf4_gemv_pwa_glu_bf16;
        const void* fm = kind == 2 ? (const void*)nf4_gemv_pw_bf16 : (const void*)nf4_gemv_pwa_bf16;
        if (p.glu) { int act = 0; void* args[] = {&m, &act, &x, &y, &k}; launch(fg, dim3(grid), dim3(GW * 32), 0, st, args); }
        else { void* args[] = {&m, &x, &y, &k}; launch(fm, dim3(grid), dim3(GW * 32), 0, st, args); }
        return;
    }
#endif
    if (kind == 0) {
        const unsigned R = 4;
        if (p.glu) {
            Nf4Seg g = ws[0].s, u = ws[1].s;
            unsigned n = g.rows; int act = 0; const float* tb = g_tables;
            void* args[] = {&g, &u, &tb, &act, &x, &y, &n, &k};
            const void* fn = (const void*)nf4_gemv_glu_bf16_m1;
#ifdef GEMV_FUSED_PF  // the revision has the _pf kernels
            if (g_pf && k <= 2048) fn = (const void*)nf4_gemv_glu_pf_bf16_m1;
#endif
#ifdef GEMV_LS  // the revision has the lane-scale kernels
            if (g_ls) fn = (const void*)nf4_gemv_glu_ls_bf16_m1;
#endif
            launch(fn, dim3((n + R - 1) / R), dim3(128), 2 * R * (k / 32) * 4, st, args);
        } else {
            Nf4Multi m = multi_of(ws);
            void* args[] = {&m, &x, &y, &k};
            const void* fn = (const void*)nf4_gemv_multi_bf16_m1;
#ifdef GEMV_FUSED_PF
            if (g_pf && k <= 2048) fn = (const void*)nf4_gemv_multi_pf_bf16_m1;
#endif
#ifdef GEMV_LS
            if (g_ls) fn = (const void*)nf4_gemv_multi_ls_bf16_m1;
#endif
            launch(fn, dim3((m.ntotal + R - 1) / R), dim3(128), R * (k / 32) * 4, st, args);
        }
        return;
    }
#if GM_KINDS > 1
    int rw, cs;
    if (!ws_plan(k, p.glu, &rw, &cs)) { fprintf(stderr, "no ws plan for k=%u\n", k); exit(1); }
    Nf4Multi m = multi_of(ws);
    if (p.glu) m.ntotal = ws[0].s.rows;
    unsigned nro = WS_CW * rw / cs, nwr = p.glu ? 2 * nro : nro, ntiles = (m.ntotal + nro - 1) / nro;
    unsigned grid = std::min<unsigned>(ntiles, g_nsm * g_bps), stages = g_stages;
    size_t stage_bytes = (size_t)nwr * (k / 2) + (size_t)nwr * (k / 64) * (ws[0].s.dq ? 1 : 4);
    size_t smem = stages * stage_bytes;
    const void* fn = ws_fn(p.glu, rw, cs);
    CK(cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
    if (p.glu) { int act = 0; void* args[] = {&m, &act, &x, &y, &k, &stages}; launch(fn, dim3(grid), dim3((WS_CW + 1) * 32), smem, st, args); }
    else { void* args[] = {&m, &x, &y, &k, &stages}; launch(fn, dim3(grid), dim3((WS_CW + 1) * 32), smem, st, args); }
#endif
}

// Read-bandwidth ceiling: every byte of the buffers once (16-byte loads, grid-stride), summed.
__global__ void stream_read(const uint4* __restrict__ p, size_t n16, unsigned* out) {
    unsigned acc = 0;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n16; i += (size_t)gridDim.x * blockDim.x) {
        uint4 v = __ldcs(p + i);
        acc ^= v.x ^ v.y ^ v.z ^ v.w;
    }
    if (acc == 0x12345678u) *out = acc;
}

static float bf(const __nv_bfloat16& v) { return __bfloat162float(v); }

int main(int argc, char** argv) {
    const char* model = argc > 1 ? argv[1] : "mistral7b";
    if (getenv("WS_BPS")) g_bps = atoi(getenv("WS_BPS"));
    if (getenv("WS_STAGES")) g_stages = atoi(getenv("WS_STAGES"));
    if (getenv("GM_PW_BPS")) g_pw_bps = atoi(getenv("GM_PW_BPS"));
    if (getenv("GM_PWA_BPS")) g_pwa_bps = atoi(getenv("GM_PWA_BPS"));
    g_pf = getenv("GM_PF") && atoi(getenv("GM_PF")) != 0;
    g_ls = getenv("GM_LS") ? atoi(getenv("GM_LS")) : 0;
#ifdef GM_PC
    if (getenv("GM_PCSAMPLE")) pc_init();  // before any module is loaded
#endif
    const char* tag = getenv("GM_TAG") ? getenv("GM_TAG") : "";
    CK(cudaDeviceGetAttribute(&g_nsm, cudaDevAttrMultiProcessorCount, 0));
    std::vector<Part> parts;
    unsigned L;
    if (!strcmp(model, "mistral7b")) {
        L = 32;
        parts = {{"qkv", false, {4096, 1024, 1024}, 4096}, {"o", false, {4096}, 4096}, {"gate_up_glu", true, {14336, 14336}, 4096}, {"down", false, {4096}, 14336}};
    } else {
        L = 22;
        parts = {{"qkv", false, {2048, 256, 256}, 2048}, {"o", false, {2048}, 2048}, {"gate_up_glu", true, {5632, 5632}, 2048}, {"down", false, {2048}, 5632}};
    }
    static const float nf4[16] = {-1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f, -0.28444138169288635f, -0.18477343022823334f, -0.09105003625154495f, 0.0f, 0.07958029955625534f, 0.16093020141124725f, 0.24611230194568634f, 0.33791524171829224f, 0.44070982933044434f, 0.5626170039176941f, 0.7229568362236023f, 1.0f};
    std::vector<float> tb(TABLE_LEN);
    for (int i = 0; i < 16; i++) tb[i] = nf4[i];
    for (int i = 0; i < 256; i++) tb[16 + i] = (i - 127.5f) / 128.f;
    g_tables = dalloc<float>(TABLE_LEN);
    CK(cudaMemcpy(g_tables, tb.data(), TABLE_LEN * 4, cudaMemcpyHostToDevice));
    if (getenv("GM_LAYERS")) L = atoi(getenv("GM_LAYERS"));
    std::vector<std::vector<std::vector<Weight>>> W(L);  // [layer][part][weight]
    for (unsigned l = 0; l < L; l++)
        for (auto& p : parts) {
            std::vector<Weight> ws;
            for (unsigned r : p.rows) ws.push_back(make_weight(r, p.k));
            W[l].push_back(ws);
        }
    unsigned kmax = 0, nmax = 0;
    for (auto& p : parts) { kmax = std::max(kmax, p.k); unsigned n = 0; for (unsigned r : p.rows) n += r; nmax = std::max(nmax, n); }
    __nv_bfloat16* x = dalloc<__nv_bfloat16>(kmax);
    __nv_bfloat16* y[2] = {dalloc<__nv_bfloat16>(nmax), dalloc<__nv_bfloat16>(nmax)};
    fill_bf16<<<64, 256>>>(x, kmax, 7);
    CK(cudaDeviceSynchronize());
    cudaStream_t st;
    CK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0)); CK(cudaEventCreate(&e1));

    // Check: the other kernels against the register-streaming one, every part, layer 0.
    for (int ck = 1; ck < GM_KINDS; ck++)
    for (size_t pi = 0; pi < parts.size(); pi++) {
        auto& p = parts[pi];
        if (ck == 1 && !ws_supported(p)) continue;
        unsigned n = 0; for (unsigned r : p.rows) n += r;
        if (p.glu) n = p.rows[0];
        std::vector<__nv_bfloat16> a(n), b(n);
        for (int kind : {0, ck}) {
            CK(cudaMemsetAsync(y[kind ? 1 : 0], 0, n * 2, st));
            run_part(kind, p, W[0][pi], x, y[kind ? 1 : 0], st);
        }
        CK(cudaStreamSynchronize(st));
        CK(cudaMemcpy(a.data(), y[0], n * 2, cudaMemcpyDeviceToHost));
        CK(cudaMemcpy(b.data(), y[1], n * 2, cudaMemcpyDeviceToHost));
        double md = 0, mx = 0; size_t bad = 0;
        for (unsigned i = 0; i < n; i++) {
            double d = fabs(bf(a[i]) - bf(b[i])), m = fabs(bf(a[i]));
            md = std::max(md, d); mx = std::max(mx, m);
            if (d > 1e-2 * m + 1e-3) bad++;
        }
        printf("{\"model\":\"%s\",\"part\":\"%s\",\"check\":\"%s_vs_reg\",\"max_abs_diff\":%g,\"max_abs\":%g,\"bad\":%zu,\"n\":%u}\n", model, p.name.c_str(), ck == 1 ? "ws" : ck == 2 ? "pw" : "pwa", md, mx, bad, n);
    }

    // Timing: each part over every layer's weights, as a graph replayed REPS times; then the
    // four parts in a layer's order over every layer.
    const int REPS = 20;
    auto time_graph = [&](auto body) {
        cudaGraph_t g; cudaGraphExec_t ge;
        CK(cudaStreamBeginCapture(st, cudaStreamCaptureModeGlobal));
        body();
        CK(cudaStreamEndCapture(st, &g));
        CK(cudaGraphInstantiate(&ge, g, 0));
        CK(cudaGraphLaunch(ge, st));
        CK(cudaStreamSynchronize(st));
        CK(cudaEventRecord(e0, st));
        for (int r = 0; r < REPS; r++) CK(cudaGraphLaunch(ge, st));
        CK(cudaEventRecord(e1, st));
        CK(cudaEventSynchronize(e1));
        float ms; CK(cudaEventElapsedTime(&ms, e0, e1));
        CK(cudaGraphExecDestroy(ge)); CK(cudaGraphDestroy(g));
        return ms * 1000.0 / REPS;
    };
    {
        unsigned* dummy = dalloc<unsigned>(1);
        for (size_t pi = 0; pi < parts.size(); pi++) {
            double us = time_graph([&] { for (unsigned l = 0; l < L; l++) for (auto& w : W[l][pi]) {
                const uint4* p = reinterpret_cast<const uint4*>(w.s.packed); size_t n16 = (size_t)w.s.rows * parts[pi].k / 32;
                void* args[] = {&p, &n16, &dummy};
                launch((const void*)stream_read, dim3(g_nsm * 8), dim3(256), 0, st, args); } }) / L;
            double bytes = 0; for (auto& w : W[0][pi]) bytes += (double)w.s.rows * parts[pi].k / 2;
            printf("{\"model\":\"%s\",\"part\":\"%s\",\"kernel\":\"stream%s\",\"us\":%.3f,\"gbps\":%.1f}\n", model, parts[pi].name.c_str(), tag, us, bytes / us / 1e3);
        }
    }
#ifdef GM_PC
    // The profile: each part's reg GEMVs over every layer, launched directly (no graph), sampled.
    if (getenv("GM_PCSAMPLE")) {
        const int pc_kind = getenv("GM_PC_KIND") ? atoi(getenv("GM_PC_KIND")) : 0;  // 0 reg, 2 pw, 3 pwa
        for (size_t pi = 0; pi < parts.size(); pi++) {
            for (unsigned l = 0; l < L; l++) run_part(pc_kind, parts[pi], W[l][pi], x, y[l & 1], st);
            CK(cudaStreamSynchronize(st));
            pc_begin();
            for (int r = 0; r < 10; r++) for (unsigned l = 0; l < L; l++) run_part(pc_kind, parts[pi], W[l][pi], x, y[l & 1], st);
            CK(cudaStreamSynchronize(st));
            pc_end(std::string(model) + "/" + parts[pi].name + tag);
        }
        return 0;
    }
#endif
    const char* kinds[4] = {"reg", "ws", "pw", "pwa"};
    for (int kind = 0; kind < GM_KINDS; kind++) {
        double sum = 0;
        bool all = true;
        for (size_t pi = 0; pi < parts.size(); pi++) {
            if (kind == 1 && !ws_supported(parts[pi])) { all = false; continue; }
            double us = time_graph([&] { for (unsigned l = 0; l < L; l++) run_part(kind, parts[pi], W[l][pi], x, y[l & 1], st); }) / L;
            double bytes = 0; for (auto& w : W[0][pi]) bytes += w.bytes;
            sum += us;
            printf("{\"model\":\"%s\",\"part\":\"%s\",\"kernel\":\"%s%s\",\"us\":%.3f,\"gbps\":%.1f}\n", model, parts[pi].name.c_str(), kinds[kind], tag, us, bytes / us / 1e3);
        }
        if (!all) continue;  // no layer chain without every part
        double us = time_graph([&] { for (unsigned l = 0; l < L; l++) for (size_t pi = 0; pi < parts.size(); pi++) run_part(kind, parts[pi], W[l][pi], x, y[pi & 1], st); }) / L;
        double bytes = 0; for (auto& pw : W[0]) for (auto& w : pw) bytes += w.bytes;
        printf("{\"model\":\"%s\",\"part\":\"layer_chain\",\"kernel\":\"%s%s\",\"us\":%.3f,\"gbps\":%.1f,\"sum_of_parts_us\":%.3f}\n", model, kinds[kind], tag, us, bytes / us / 1e3, sum);
    }
    return 0;
}
