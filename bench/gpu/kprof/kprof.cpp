// Kernel timeline of any CUDA program, without Nsight Systems (not on the GPU machine): a CUPTI
// injection library. Run a program with CUDA_INJECTION64_PATH=/path/libkprof.so and
// KPROF_OUT=file: every kernel's start and end (GPU timestamps, ns) and name go to file as CSV
// (`start,end,name_id`, then `#name,id,name` lines), written at exit. bench/gpu/kprof/steps.py
// reads it (where a decode step's time goes, kernel by kernel, and the gaps between kernels).
// Build: bash bench/gpu/kprof/build.sh (here), carry .gpu-carry/kprof.
#include <cupti_activity.h>  // not cupti.h: its callback headers want a newer cuda.h than the toolkit here
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <string>
#include <vector>

namespace {
struct Rec { uint64_t start, end; uint32_t name; };
std::mutex mu;
std::vector<Rec> recs;
std::map<std::string, uint32_t> names;

#define CUPTI_OK(x) do { CUptiResult r_ = (x); if (r_ != CUPTI_SUCCESS) { const char* m_; cuptiGetResultString(r_, &m_); fprintf(stderr, "kprof: %s: %s\n", #x, m_); } } while (0)

void CUPTIAPI requested(uint8_t** buf, size_t* size, size_t* max_records) {
    *size = 8 << 20;
    *buf = static_cast<uint8_t*>(aligned_alloc(8, *size));
    *max_records = 0;
}

void CUPTIAPI completed(CUcontext, uint32_t, uint8_t* buf, size_t, size_t valid) {
    CUpti_Activity* rec = nullptr;
    std::lock_guard<std::mutex> g(mu);
    while (cuptiActivityGetNextRecord(buf, valid, &rec) == CUPTI_SUCCESS) {
        if (rec->kind != CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL) continue;
        auto* k = reinterpret_cast<CUpti_ActivityKernel13*>(rec);
        auto it = names.find(k->name);
        uint32_t id = it == names.end() ? (names[k->name] = names.size()) : it->second;
        recs.push_back({k->start, k->end, id});
    }
    free(buf);
}

void dump() {
    cuptiActivityFlushAll(1);
    const char* out = getenv("KPROF_OUT");
    FILE* f = fopen(out ? out : "kprof.csv", "w");
    if (!f) { perror("kprof"); return; }
    std::lock_guard<std::mutex> g(mu);
    for (auto& r : recs) fprintf(f, "%llu,%llu,%u\n", (unsigned long long)r.start, (unsigned long long)r.end, r.name);
    for (auto& [n, id] : names) fprintf(f, "#name,%u,%s\n", id, n.c_str());
    fclose(f);
    fprintf(stderr, "kprof: %zu kernels to %s\n", recs.size(), out ? out : "kprof.csv");
}
}  // namespace

extern "C" int InitializeInjection(void) {
    CUPTI_OK(cuptiActivityRegisterCallbacks(requested, completed));
    CUPTI_OK(cuptiActivityEnable(CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL));
    atexit(dump);
    return 1;
}
