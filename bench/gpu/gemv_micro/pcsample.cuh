// Warp-stall profile of the GEMVs without Nsight Compute (not on the GPU machine): CUPTI's PC
// sampling (libcupti from the PyPI wheel nvidia-cuda-cupti; run.sh build-pc fetches it). Each
// sample is one warp's program counter and why it could not issue at that moment; summed over a
// kernel they say where its time goes (long_scoreboard: waiting on global memory; short_scoreboard:
// on shared memory; mio_throttle / lg_throttle: the memory instruction queues full; wait: fixed
// latency dependencies; math_pipe_throttle; barrier; selected: issuing).
// pc_begin() before the launches, pc_end(label) after them: prints one JSON line a kernel with the
// samples by stall reason, and the hottest program counters (cuobjdump -sass offsets).
#include <cuda.h>
#include <cupti_pcsampling.h>
#include <map>
#include <vector>
#include <algorithm>

#define CUPTI_CK(x) do { CUptiResult r_ = (x); if (r_ != CUPTI_SUCCESS) { const char* m_; cuptiGetResultString(r_, &m_); fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #x, m_); exit(1); } } while (0)

static CUcontext g_pc_ctx;
static std::vector<std::string> g_pc_reason_names;
static std::vector<uint32_t> g_pc_reason_index;
// CUPTI fills g_pc_data by itself (at stop); cuptiPCSamplingGetData drains the rest into g_pc_read.
static CUpti_PCSamplingData g_pc_data, g_pc_read;
static bool g_pc_on = false;

static void pc_init() {
    setenv("CUDA_MODULE_LOADING", "LAZY", 1);  // modules loaded after sampling is on, so CUPTI sees them
    CK(cudaFree(0));
    if (cuCtxGetCurrent(&g_pc_ctx) != CUDA_SUCCESS) { fprintf(stderr, "no CUDA context\n"); exit(1); }
    CUpti_PCSamplingEnableParams en = {CUpti_PCSamplingEnableParamsSize};
    en.ctx = g_pc_ctx;
    CUPTI_CK(cuptiPCSamplingEnable(&en));
    size_t nr = 0;
    CUpti_PCSamplingGetNumStallReasonsParams np = {CUpti_PCSamplingGetNumStallReasonsParamsSize};
    np.ctx = g_pc_ctx; np.numStallReasons = &nr;
    CUPTI_CK(cuptiPCSamplingGetNumStallReasons(&np));
    std::vector<char*> names(nr);
    for (auto& n : names) n = (char*)calloc(CUPTI_STALL_REASON_STRING_SIZE, 1);
    g_pc_reason_index.resize(nr);
    CUpti_PCSamplingGetStallReasonsParams sp = {CUpti_PCSamplingGetStallReasonsParamsSize};
    sp.ctx = g_pc_ctx; sp.numStallReasons = nr; sp.stallReasonIndex = g_pc_reason_index.data(); sp.stallReasons = names.data();
    CUPTI_CK(cuptiPCSamplingGetStallReasons(&sp));
    for (auto n : names) g_pc_reason_names.push_back(n);
    const size_t npcs = 20000;
    for (CUpti_PCSamplingData* d : {&g_pc_data, &g_pc_read}) {
        d->size = sizeof(CUpti_PCSamplingData);
        d->collectNumPcs = npcs;
        d->pPcData = (CUpti_PCSamplingPCData*)calloc(npcs, sizeof(CUpti_PCSamplingPCData));
        for (size_t i = 0; i < npcs; i++) {
            d->pPcData[i].size = sizeof(CUpti_PCSamplingPCData);
            d->pPcData[i].stallReasonCount = nr;  // capacity, as CUPTI reads it
            d->pPcData[i].stallReason = (CUpti_PCSamplingStallReason*)calloc(nr, sizeof(CUpti_PCSamplingStallReason));
        }
    }
    std::vector<CUpti_PCSamplingConfigurationInfo> cfg(6);
    memset(cfg.data(), 0, cfg.size() * sizeof(cfg[0]));
    cfg[0].attributeType = CUPTI_PC_SAMPLING_CONFIGURATION_ATTR_TYPE_STALL_REASON;
    cfg[0].attributeData.stallReasonData.stallReasonCount = nr;
    cfg[0].attributeData.stallReasonData.pStallReasonIndex = g_pc_reason_index.data();
    cfg[1].attributeType = CUPTI_PC_SAMPLING_CONFIGURATION_ATTR_TYPE_SAMPLING_DATA_BUFFER;
    cfg[1].attributeData.samplingDataBufferData.samplingDataBuffer = &g_pc_data;
    cfg[2].attributeType = CUPTI_PC_SAMPLING_CONFIGURATION_ATTR_TYPE_SAMPLING_PERIOD;
    cfg[2].attributeData.samplingPeriodData.samplingPeriod = getenv("GM_PC_PERIOD") ? atoi(getenv("GM_PC_PERIOD")) : 10;
    cfg[3].attributeType = CUPTI_PC_SAMPLING_CONFIGURATION_ATTR_TYPE_COLLECTION_MODE;
    cfg[3].attributeData.collectionModeData.collectionMode = CUPTI_PC_SAMPLING_COLLECTION_MODE_CONTINUOUS;
    cfg[4].attributeType = CUPTI_PC_SAMPLING_CONFIGURATION_ATTR_TYPE_ENABLE_START_STOP_CONTROL;
    cfg[4].attributeData.enableStartStopControlData.enableStartStopControl = 1;
    cfg[5].attributeType = CUPTI_PC_SAMPLING_CONFIGURATION_ATTR_TYPE_HARDWARE_BUFFER_SIZE;
    cfg[5].attributeData.hardwareBufferSizeData.hardwareBufferSize = 256ull << 20;
    CUpti_PCSamplingConfigurationInfoParams cp = {CUpti_PCSamplingConfigurationInfoParamsSize};
    cp.ctx = g_pc_ctx; cp.numAttributes = cfg.size(); cp.pPCSamplingConfigurationInfo = cfg.data();
    CUPTI_CK(cuptiPCSamplingSetConfigurationAttribute(&cp));
    for (auto& c : cfg)
        if (c.attributeStatus != CUPTI_SUCCESS) fprintf(stderr, "pc sampling attribute %d: status %d\n", (int)c.attributeType, (int)c.attributeStatus);
    g_pc_on = true;
}

static void pc_begin() {
    if (!g_pc_on) return;
    CUpti_PCSamplingStartParams p = {CUpti_PCSamplingStartParamsSize};
    p.ctx = g_pc_ctx;
    CUPTI_CK(cuptiPCSamplingStart(&p));
}

// Drains the samples since pc_begin and prints them (per kernel name).
static void pc_end(const std::string& label) {
    if (!g_pc_on) return;
    CK(cudaDeviceSynchronize());
    CUpti_PCSamplingStopParams p = {CUpti_PCSamplingStopParamsSize};
    p.ctx = g_pc_ctx;
    CUPTI_CK(cuptiPCSamplingStop(&p));
    struct Agg { std::map<uint32_t, uint64_t> by_reason; std::map<uint64_t, std::map<uint32_t, uint64_t>> by_pc; uint64_t total = 0; };
    std::map<std::string, Agg> agg;
    uint64_t dropped = 0;
    for (int round = 0; round < 1000; round++) {
        CUpti_PCSamplingData& D = round == 0 ? g_pc_data : g_pc_read;
        if (round > 0) {
            for (size_t i = 0; i < D.collectNumPcs; i++) D.pPcData[i].stallReasonCount = g_pc_reason_index.size();
            D.totalNumPcs = 0;
            CUpti_PCSamplingGetDataParams gp = {CUpti_PCSamplingGetDataParamsSize};
            gp.ctx = g_pc_ctx; gp.pcSamplingData = &D;
            CUPTI_CK(cuptiPCSamplingGetData(&gp));
        }
        auto& g_pc_data = D;
        dropped += g_pc_data.droppedSamples;
        fprintf(stderr, "pc %s: round %d, %zu pcs, %llu samples, %zu remaining, hw buffer full %d, non-user %llu\n", label.c_str(), round,
                g_pc_data.totalNumPcs, (unsigned long long)g_pc_data.totalSamples, g_pc_data.remainingNumPcs, (int)g_pc_data.hardwareBufferFull, (unsigned long long)g_pc_data.nonUsrKernelsTotalSamples);
        for (size_t i = 0; i < g_pc_data.totalNumPcs; i++) {
            auto& pc = g_pc_data.pPcData[i];
            Agg& a = agg[pc.functionName ? pc.functionName : "?"];
            for (size_t j = 0; j < pc.stallReasonCount; j++) {
                a.by_reason[pc.stallReason[j].pcSamplingStallReasonIndex] += pc.stallReason[j].samples;
                a.by_pc[pc.pcOffset][pc.stallReason[j].pcSamplingStallReasonIndex] += pc.stallReason[j].samples;
                a.total += pc.stallReason[j].samples;
            }
        }
        if (round > 0 && g_pc_data.totalNumPcs == 0) break;
    }
    g_pc_data.totalNumPcs = 0;
    for (size_t i = 0; i < g_pc_data.collectNumPcs; i++) g_pc_data.pPcData[i].stallReasonCount = g_pc_reason_index.size();
    auto name_of = [&](uint32_t idx) -> std::string {
        for (size_t i = 0; i < g_pc_reason_index.size(); i++) if (g_pc_reason_index[i] == idx) return g_pc_reason_names[i];
        return "?";
    };
    for (auto& [fn, a] : agg) {
        std::vector<std::pair<uint64_t, uint32_t>> rs;
        for (auto& [r, n] : a.by_reason) if (n) rs.push_back({n, r});
        std::sort(rs.rbegin(), rs.rend());
        printf("{\"pcsample\":\"%s\",\"kernel\":\"%s\",\"samples\":%llu,\"dropped\":%llu,\"reasons\":{", label.c_str(), fn.c_str(), (unsigned long long)a.total, (unsigned long long)dropped);
        for (size_t i = 0; i < rs.size(); i++) printf("%s\"%s\":%.4f", i ? "," : "", name_of(rs[i].second).c_str(), (double)rs[i].first / a.total);
        printf("},\"hot\":[");
        std::vector<std::pair<uint64_t, uint64_t>> pcs;
        for (auto& [pc, m] : a.by_pc) { uint64_t n = 0; for (auto& [r, c] : m) n += c; pcs.push_back({n, pc}); }
        std::sort(pcs.rbegin(), pcs.rend());
        for (size_t i = 0; i < std::min<size_t>(pcs.size(), 40); i++) {
            auto& m = a.by_pc[pcs[i].second];
            uint32_t top = 0; uint64_t tn = 0;
            for (auto& [r, c] : m) if (c > tn) { tn = c; top = r; }
            printf("%s[\"0x%llx\",%.4f,\"%s\"]", i ? "," : "", (unsigned long long)pcs[i].second, (double)pcs[i].first / a.total, name_of(top).c_str());
        }
        printf("]}\n");
    }
    fflush(stdout);
}
