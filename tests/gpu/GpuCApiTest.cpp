// The C API on the GPU: every op through kvarn.h with JIT, a decode captured in a CUDA graph and
// replayed with new lengths, launches from several threads and streams, and the no-JIT mode.
#include "../common/PagedCache.h"
#include "kvarn/Compiler/Bundle.h"
#include "kvarn/Compiler/Pipeline.h"
#include "kvarn/driver.h"
#include "kvarn/jit.h"
#include "kvarn/kvarn.h"
#include "kvarn/kvarn.hpp"
#include "kvarn/reference.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <filesystem>
#include <fstream>
#include <future>
#include <mutex>
#include <random>
#include <thread>

using namespace kvarn;
using namespace kvarn::testing;

namespace {

#define ASSERT_KVARN(call)                                                                       \
  do {                                                                                           \
    const kvarn_status status_ = (call);                                                         \
    ASSERT_EQ(status_, KVARN_OK) << kvarn_status_name(status_) << ": " << kvarn_last_error();    \
  } while (0)

struct DecodeFixture;

/// A runtime with its own cache directory; skips the test without a GPU.
class CApiGpuTest : public ::testing::Test {
protected:
  void SetUp() override {
    char pattern[] = "/tmp/kvarn-capi-XXXXXX";
    cacheDir = mkdtemp(pattern);
    kvarn_runtime_options options{0, cacheDir.c_str(), 1, 0, nullptr};
    if (kvarn_runtime_create(&options, &runtime) != KVARN_OK)
      GTEST_SKIP() << "no GPU available, skipping: " << kvarn_last_error();
    ASSERT_KVARN(kvarn_jit_install(runtime));
  }
  void TearDown() override {
    if (production)
      kvarn_runtime_destroy(production);
    if (runtime)
      kvarn_runtime_destroy(runtime);
    std::filesystem::remove_all(cacheDir);
  }
  template <typename T> CUdeviceptr upload(const std::vector<T> &host) {
    CUdeviceptr pointer = 0;
    EXPECT_TRUE(KVARN_CU(driver().cuMemAlloc(&pointer, std::max<size_t>(16, host.size() * sizeof(T)))));
    if (!host.empty()) {
      EXPECT_TRUE(KVARN_CU(driver().cuMemcpyHtoD(pointer, host.data(), host.size() * sizeof(T))));
    }
    allocations.push_back(pointer);
    return pointer;
  }
  CUdeviceptr allocate(size_t bytes) { return upload(std::vector<uint8_t>(bytes, 0xff)); }
  template <typename T> std::vector<T> download(CUdeviceptr pointer, size_t count) {
    std::vector<T> host(count);
    EXPECT_TRUE(KVARN_CU(driver().cuMemcpyDtoH(host.data(), pointer, count * sizeof(T))));
    return host;
  }
  static const Driver &driver() { return **Driver::get(); }
  /// A production runtime as an engine would start it: an empty cache directory, no JIT
  /// (`production`, destroyed at tear-down).
  void createProductionRuntime() {
    const std::string productionCache = cacheDir + "/production";
    kvarn_runtime_options options{0, productionCache.c_str(), 0, 0, nullptr};
    ASSERT_KVARN(kvarn_runtime_create(&options, &production));
  }
  /// Device copies of a fixture for `lengths` (output NaN-poisoned, `workspaceBytes` of
  /// workspace) and the decode arguments over them.
  kvarn_decode_args uploadDecode(const DecodeFixture &fx, const std::vector<int32_t> &lengths,
                                 int hk, size_t workspaceBytes);
  /// Decodes a fixture through a prepared kernel (planned splits, default stream, NaN-poisoned
  /// output) and returns the relative error against the float64 reference.
  double decode(kvarn_kernel kernel, const DecodeFixture &fx, const std::vector<int32_t> &lengths,
                int hk);
  /// The schedule `kernel` runs for `batch` requests over `hk` kv heads, the longest
  /// `maxSeqLen` tokens (kvarn_decode_schedule; "" after a failed call, which is reported).
  static std::string scheduleAt(kvarn_kernel kernel, int batch, int hk, int maxSeqLen = 0);
  /// Decodes `kvarn_k4v2_g128` D = 128 caches of 1 to 3 requests over 2 kv heads (lengths 0 to
  /// 2,049, so launch sizes that reach a config's variants) through `kernel`, each within 1e-3
  /// of the float64 reference; `seed` varies the caches.
  void expectEachLaunchSizeDecodes(kvarn_kernel kernel, uint64_t seed);
  ~CApiGpuTest() override {
    for (CUdeviceptr p : allocations)
      driver().cuMemFree(p);
  }

  std::string cacheDir;
  kvarn_runtime runtime = nullptr;
  kvarn_runtime production = nullptr;
  std::vector<CUdeviceptr> allocations;
};

/// Device copies of a paged cache and queries, and the float64 reference for given lengths.
struct DecodeFixture {
  PagedCache cache;
  std::vector<uint16_t> q;
  int hq;
  DecodeFixture(const Format &f, int hk, int q_, std::vector<int32_t> lengths, uint64_t seed)
      : cache(f, hk, lengths, seed), hq(hk * q_) {
    q = randomQueries(lengths.size() * hq * f.headDim, DType::F16, seed + 1);
  }
  std::vector<uint16_t> reference(const std::vector<int32_t> &lengths) const {
    reference::DecodeProblem problem;
    problem.format = cache.format;
    problem.batch = int(lengths.size());
    problem.numQueryHeads = hq;
    problem.numKvHeads = cache.numKvHeads;
    problem.maxBlocksPerRequest = cache.maxBlocks;
    problem.query = q;
    problem.blockTable = cache.blockTable;
    problem.seqLens = lengths;
    std::vector<uint16_t> out(q.size());
    Status s = reference::decodeQuantized(problem, cache.view(), 1, out);
    EXPECT_TRUE(s) << s.error().str();
    return out;
  }
};

double errorAgainst(const std::vector<uint16_t> &actual, const std::vector<uint16_t> &expected) {
  return reference::relativeFrobeniusError(toFloats(actual, DType::F16), toFloats(expected, DType::F16));
}

kvarn_decode_args CApiGpuTest::uploadDecode(const DecodeFixture &fx,
                                            const std::vector<int32_t> &lengths, int hk,
                                            size_t workspaceBytes) {
  auto pointer = [](CUdeviceptr p) { return reinterpret_cast<void *>(p); };
  auto ints = [](CUdeviceptr p) { return reinterpret_cast<int32_t *>(p); };
  return kvarn_decode_args{pointer(upload(fx.q)), pointer(allocate(fx.q.size() * 2)),
                           pointer(upload(fx.cache.records)), pointer(upload(fx.cache.poolKey)),
                           pointer(upload(fx.cache.poolValue)), ints(upload(fx.cache.blockToSlot)),
                           ints(upload(fx.cache.blockTable)), ints(upload(lengths)),
                           pointer(allocate(workspaceBytes)), int(lengths.size()), hk,
                           fx.cache.maxBlocks, 0.0f,
                           lengths.empty() ? 0 : *std::max_element(lengths.begin(), lengths.end())};
}

double CApiGpuTest::decode(kvarn_kernel kernel, const DecodeFixture &fx,
                           const std::vector<int32_t> &lengths, int hk) {
  const int batch = int(lengths.size());
  const int maxLen = *std::max_element(lengths.begin(), lengths.end());
  int splits = 0;
  size_t workspaceBytes = 0;
  EXPECT_EQ(kvarn_plan_decode(kernel, batch, hk, maxLen, &splits), KVARN_OK) << kvarn_last_error();
  EXPECT_EQ(kvarn_decode_workspace_size(kernel, batch, hk, splits, &workspaceBytes), KVARN_OK);
  const kvarn_decode_args args = uploadDecode(fx, lengths, hk, workspaceBytes);
  EXPECT_EQ(kvarn_launch_decode(kernel, &args, splits, nullptr), KVARN_OK) << kvarn_last_error();
  EXPECT_TRUE(KVARN_CU(driver().cuCtxSynchronize()));
  return errorAgainst(download<uint16_t>(CUdeviceptr(args.out), fx.q.size()), fx.reference(lengths));
}

std::string CApiGpuTest::scheduleAt(kvarn_kernel kernel, int batch, int hk, int maxSeqLen) {
  const char *text = nullptr;
  EXPECT_EQ(kvarn_decode_schedule(kernel, batch, hk, maxSeqLen, &text), KVARN_OK)
      << kvarn_last_error();
  return std::string(text ? text : "");
}

void CApiGpuTest::expectEachLaunchSizeDecodes(kvarn_kernel kernel, uint64_t seed) {
  const Format format = *parseFormat("kvarn_k4v2_g128", 128);
  for (const std::vector<int32_t> &lengths :
       {std::vector<int32_t>{700}, {900, 300}, {700, 129, 1}, {1500, 2049, 0}}) {
    DecodeFixture fx(format, 2, 8, lengths, seed + lengths.size());
    const int maxLen = *std::max_element(lengths.begin(), lengths.end());
    EXPECT_LE(decode(kernel, fx, lengths, 2), 1e-3)
        << lengths.size() << " requests: " << scheduleAt(kernel, int(lengths.size()), 2, maxLen);
  }
}

TEST_F(CApiGpuTest, DecodeThroughTheCApiAndACudaGraphReplayedWithNewLengths) {
  Format format = *parseFormat("kvarn_k4v2_g128", 128);
  const std::vector<int32_t> maxLengths = {900, 1500, 300};
  DecodeFixture fx(format, 2, 8, maxLengths, 11);
  kvarn_kernel kernel = nullptr;
  ASSERT_KVARN(kvarn_prepare(runtime, "decode:kvarn_k4v2_g128:d128:q8:f16", nullptr, &kernel));
  int splits = 0;
  ASSERT_KVARN(kvarn_plan_decode(kernel, 3, 2, 1500, &splits));
  size_t workspaceBytes = 0;
  ASSERT_KVARN(kvarn_decode_workspace_size(kernel, 3, 2, splits, &workspaceBytes));
  const kvarn_decode_args args = uploadDecode(fx, maxLengths, 2, workspaceBytes);
  const CUdeviceptr dOut = CUdeviceptr(args.out), dLens = CUdeviceptr(args.seq_lens);
  // Step 1. A plain launch.
  ASSERT_KVARN(kvarn_launch_decode(kernel, &args, splits, nullptr));
  ASSERT_TRUE(KVARN_CU(driver().cuCtxSynchronize()));
  EXPECT_LE(errorAgainst(download<uint16_t>(dOut, fx.q.size()), fx.reference(maxLengths)), 1e-3);
  // Step 2. Capture once, replay with new lengths (same plan, no host work in the graph).
  CUstream stream;
  ASSERT_TRUE(KVARN_CU(driver().cuStreamCreate(&stream, CU_STREAM_NON_BLOCKING)));
  CUgraph graph;
  CUgraphExec exec;
  ASSERT_TRUE(KVARN_CU(driver().cuStreamBeginCapture(stream, CU_STREAM_CAPTURE_MODE_GLOBAL)));
  ASSERT_KVARN(kvarn_launch_decode(kernel, &args, splits, stream));
  ASSERT_TRUE(KVARN_CU(driver().cuStreamEndCapture(stream, &graph)));
  ASSERT_TRUE(KVARN_CU(driver().cuGraphInstantiate(&exec, graph, 0)));
  for (const std::vector<int32_t> &lengths :
       {std::vector<int32_t>{1, 129, 300}, {900, 0, 255}, {640, 1500, 1}}) {
    ASSERT_TRUE(KVARN_CU(driver().cuMemcpyHtoD(dLens, lengths.data(), lengths.size() * 4)));
    ASSERT_TRUE(KVARN_CU(driver().cuMemsetD8(dOut, 0xff, fx.q.size() * 2)));
    // NaN partials: a merge that read them before the decode wrote them (it starts early, as
    // the decode's programmatic dependent) would leave NaN in the output.
    ASSERT_TRUE(KVARN_CU(
        driver().cuMemsetD8(CUdeviceptr(args.workspace), 0xff, workspaceBytes)));
    ASSERT_TRUE(KVARN_CU(driver().cuGraphLaunch(exec, stream)));
    ASSERT_TRUE(KVARN_CU(driver().cuStreamSynchronize(stream)));
    const double error = errorAgainst(download<uint16_t>(dOut, fx.q.size()), fx.reference(lengths));
    EXPECT_LE(error, 1e-3) << lengths[0] << "," << lengths[1] << "," << lengths[2];
  }
  // Step 3. The same workspace for other plans that fit it: one request with twice the splits
  // (some of them empty), then two splits.
  ASSERT_GT(splits, 1) << "the plan should split these lengths";
  for (int otherSplits : {2 * splits, 2}) {
    size_t bytes = 0;
    ASSERT_KVARN(kvarn_decode_workspace_size(kernel, 1, 2, otherSplits, &bytes));
    ASSERT_LE(bytes, workspaceBytes);
    kvarn_decode_args one = args;
    one.batch = 1;
    const std::vector<int32_t> lengths = {900, 0, 0}; // request 0's table holds 900 tokens
    ASSERT_TRUE(KVARN_CU(driver().cuMemcpyHtoD(dLens, lengths.data(), lengths.size() * 4)));
    ASSERT_TRUE(KVARN_CU(driver().cuMemsetD8(dOut, 0xff, fx.q.size() * 2)));
    ASSERT_KVARN(kvarn_launch_decode(kernel, &one, otherSplits, nullptr));
    ASSERT_TRUE(KVARN_CU(driver().cuCtxSynchronize()));
    const size_t requestElements = fx.q.size() / 3;
    std::vector<uint16_t> expected = fx.reference(lengths);
    expected.resize(requestElements);
    EXPECT_LE(errorAgainst(download<uint16_t>(dOut, requestElements), expected), 1e-3)
        << otherSplits << " splits, one request";
  }
  driver().cuGraphExecDestroy(exec);
  driver().cuGraphDestroy(graph);
  driver().cuStreamDestroy(stream);
}

TEST_F(CApiGpuTest, CppWrapperPreparesPlansAndLaunchesLikeTheCApi) {
  // The same decode through kvarn.hpp (its own runtime, RAII) and through the C API: identical
  // plan, workspace size, schedule and output bytes; a bad spec throws kvarn::api::Error.
  Format format = *parseFormat("kvarn_k4v2_g128", 128);
  const std::vector<int32_t> lengths = {700, 1300};
  const int hk = 2, batch = 2;
  DecodeFixture fx(format, hk, 8, lengths, 23);
  const std::string spec = "decode:kvarn_k4v2_g128:d128:q8:f16";
  kvarn_kernel cKernel = nullptr;
  ASSERT_KVARN(kvarn_prepare(runtime, spec.c_str(), nullptr, &cKernel));
  kvarn::api::Runtime::Options options;
  options.cacheDir = cacheDir + "/cpp";
  kvarn::api::Runtime cpp(options);
  kvarn::api::check(kvarn_jit_install(cpp.handle()));
  const char *arch = nullptr;
  int smCount = 0;
  ASSERT_KVARN(kvarn_runtime_device(runtime, &arch, &smCount));
  EXPECT_EQ(cpp.device(), std::make_pair(std::string(arch), smCount));
  const kvarn::api::Kernel kernel = cpp.prepare(spec);
  const char *cSchedule = nullptr, *cHow = nullptr;
  ASSERT_KVARN(kvarn_kernel_describe(cKernel, &cSchedule, &cHow));
  EXPECT_EQ(kernel.describe().first, std::string(cSchedule));
  const char *cLaunchSchedule = nullptr;
  ASSERT_KVARN(kvarn_decode_schedule(cKernel, 64, 8, 1300, &cLaunchSchedule));
  EXPECT_EQ(kernel.decodeSchedule(64, 8, 1300), std::string(cLaunchSchedule));
  int cSplits = 0;
  ASSERT_KVARN(kvarn_plan_decode(cKernel, batch, hk, 1300, &cSplits));
  const int splits = kernel.planDecode(batch, hk, 1300);
  EXPECT_EQ(splits, cSplits);
  size_t cBytes = 0;
  ASSERT_KVARN(kvarn_decode_workspace_size(cKernel, batch, hk, splits, &cBytes));
  EXPECT_EQ(kernel.decodeWorkspaceBytes(batch, hk, splits), cBytes);
  kvarn_decode_args args = uploadDecode(fx, lengths, hk, cBytes);
  const CUdeviceptr dOutC = CUdeviceptr(args.out), dOutCpp = allocate(fx.q.size() * 2);
  ASSERT_KVARN(kvarn_launch_decode(cKernel, &args, splits, nullptr));
  ASSERT_TRUE(KVARN_CU(driver().cuCtxSynchronize()));
  args.out = reinterpret_cast<void *>(dOutCpp);
  kernel.decode(args, splits);
  ASSERT_TRUE(KVARN_CU(driver().cuCtxSynchronize()));
  const std::vector<uint16_t> viaC = download<uint16_t>(dOutC, fx.q.size());
  EXPECT_EQ(download<uint16_t>(dOutCpp, fx.q.size()), viaC);
  EXPECT_LE(errorAgainst(viaC, fx.reference(lengths)), 1e-3);
  try {
    cpp.prepare("decode:kvarn_k4v2_g128:d96:q8:f16");
    ADD_FAILURE() << "a head_dim of 96 was accepted";
  } catch (const kvarn::api::Error &error) {
    EXPECT_EQ(error.status(), KVARN_ERROR_INVALID_ARGUMENT) << error.what();
    EXPECT_NE(std::string(error.what()).find("96"), std::string::npos) << error.what();
  }
}

TEST_F(CApiGpuTest, LaunchesFromSeveralThreadsOnSeveralStreams) {
  Format format = *parseFormat("kvarn_k4v4_g64", 128);
  const std::vector<int32_t> lengths = {700, 130};
  DecodeFixture fx(format, 2, 4, lengths, 21);
  const std::vector<uint16_t> expected = fx.reference(lengths);
  kvarn_kernel kernel = nullptr;
  ASSERT_KVARN(kvarn_prepare(runtime, "decode:kvarn_k4v4_g64:d128:q4:f16", "warps=2", &kernel));
  int splits = 0;
  ASSERT_KVARN(kvarn_plan_decode(kernel, 2, 2, 700, &splits));
  size_t workspaceBytes = 0;
  ASSERT_KVARN(kvarn_decode_workspace_size(kernel, 2, 2, splits, &workspaceBytes));
  CUdeviceptr dq = upload(fx.q), dRecords = upload(fx.cache.records), dPk = upload(fx.cache.poolKey),
              dPv = upload(fx.cache.poolValue), dSlots = upload(fx.cache.blockToSlot),
              dTable = upload(fx.cache.blockTable), dLens = upload(lengths);
  const int threads = 4;
  std::vector<CUdeviceptr> outs, works;
  for (int t = 0; t < threads; ++t) {
    outs.push_back(allocate(fx.q.size() * 2));
    works.push_back(allocate(workspaceBytes));
  }
  CUcontext context = nullptr;
  std::vector<std::thread> pool;
  std::vector<std::string> failures(threads);
  for (int t = 0; t < threads; ++t)
    pool.emplace_back([&, t] {
      (void)context;
      DeviceInfo ignored = *openDevice(0); // makes the primary context current on this thread
      (void)ignored;
      CUstream stream;
      driver().cuStreamCreate(&stream, CU_STREAM_NON_BLOCKING);
      kvarn_decode_args args{reinterpret_cast<void *>(dq), reinterpret_cast<void *>(outs[t]),
                             reinterpret_cast<void *>(dRecords), reinterpret_cast<void *>(dPk),
                             reinterpret_cast<void *>(dPv), reinterpret_cast<int32_t *>(dSlots),
                             reinterpret_cast<int32_t *>(dTable), reinterpret_cast<int32_t *>(dLens),
                             reinterpret_cast<void *>(works[t]), 2, 2, fx.cache.maxBlocks, 0.0f, 700};
      for (int repeat = 0; repeat < 20; ++repeat)
        if (kvarn_launch_decode(kernel, &args, splits, stream) != KVARN_OK)
          failures[t] = kvarn_last_error();
      driver().cuStreamSynchronize(stream);
      driver().cuStreamDestroy(stream);
    });
  for (std::thread &t : pool)
    t.join();
  for (int t = 0; t < threads; ++t) {
    EXPECT_EQ(failures[t], "");
    EXPECT_LE(errorAgainst(download<uint16_t>(outs[t], fx.q.size()), expected), 1e-3) << "thread " << t;
  }
}

TEST_F(CApiGpuTest, EveryOpThroughTheCApi) {
  // Append rows into the pool, flush them into records, dequantize the records: compare with the
  // CPU reference at each step.
  const int hk = 2, d = 128, g = 128, tokens = g;
  Format format = *parseFormat("kvarn_k4v2_g128", d);
  RecordLayout layout = recordLayout(format);
  std::mt19937_64 rng(testSeed(5));
  std::vector<uint16_t> keys = randomRows(size_t(tokens) * hk, d, rng, true);
  std::vector<uint16_t> values = randomRows(size_t(tokens) * hk, d, rng, false);
  std::vector<int64_t> mapping(tokens);
  for (int t = 0; t < tokens; ++t)
    mapping[t] = t; // pool slot 0
  kvarn_kernel append = nullptr, flush = nullptr, dequantize = nullptr;
  ASSERT_KVARN(kvarn_prepare(runtime, "append:kvarn_k4v2_g128:d128:q1:f16", nullptr, &append));
  ASSERT_KVARN(kvarn_prepare(runtime, "flush:kvarn_k4v2_g128:d128:q1:f16", nullptr, &flush));
  ASSERT_KVARN(kvarn_prepare(runtime, "dequantize:kvarn_k4v2_g128:d128:q1:f16", nullptr, &dequantize));
  CUdeviceptr dKeys = upload(keys), dValues = upload(values), dMap = upload(mapping);
  CUdeviceptr dPk = allocate(size_t(g) * hk * d * 2), dPv = allocate(size_t(g) * hk * d * 2);
  kvarn_append_args appendArgs{reinterpret_cast<void *>(dKeys), reinterpret_cast<void *>(dValues),
                               reinterpret_cast<int64_t *>(dMap), reinterpret_cast<void *>(dPk),
                               reinterpret_cast<void *>(dPv), tokens, hk, int64_t(hk) * d, int64_t(hk) * d};
  ASSERT_KVARN(kvarn_launch_append(append, &appendArgs, nullptr));
  std::vector<int32_t> entries = {0, 0, 0, 0, 1, 0};
  CUdeviceptr dEntries = upload(entries), dStatus = upload(std::vector<int32_t>{0});
  CUdeviceptr dCache = allocate(size_t(hk) * layout.tileBytesAligned);
  kvarn_flush_args flushArgs{reinterpret_cast<void *>(dPk), reinterpret_cast<void *>(dPv),
                             reinterpret_cast<int32_t *>(dEntries), reinterpret_cast<void *>(dCache),
                             reinterpret_cast<int32_t *>(dStatus), 2, hk};
  ASSERT_KVARN(kvarn_launch_flush(flush, &flushArgs, nullptr));
  std::vector<int32_t> dqEntries = {0, 0, 0, 1};
  CUdeviceptr dDqEntries = upload(dqEntries);
  CUdeviceptr dK = allocate(size_t(2) * g * d * 2), dV = allocate(size_t(2) * g * d * 2);
  kvarn_dequantize_args dqArgs{reinterpret_cast<void *>(dCache), reinterpret_cast<int32_t *>(dDqEntries),
                               reinterpret_cast<void *>(dK), reinterpret_cast<void *>(dV), 2, hk};
  ASSERT_KVARN(kvarn_launch_dequantize(dequantize, &dqArgs, nullptr));
  // Counts out of range are refused before any launch.
  for (auto [entries, heads] : {std::pair{-1, hk}, {(1 << 30) + 1, hk}, {2, 0}}) {
    kvarn_flush_args badFlush = flushArgs;
    badFlush.num_entries = entries;
    badFlush.num_kv_heads = heads;
    EXPECT_EQ(kvarn_launch_flush(flush, &badFlush, nullptr), KVARN_ERROR_INVALID_ARGUMENT);
  }
  kvarn_append_args badAppend = appendArgs;
  badAppend.num_tokens = -1;
  EXPECT_EQ(kvarn_launch_append(append, &badAppend, nullptr), KVARN_ERROR_INVALID_ARGUMENT);
  // Buffers the kernels would access misaligned (and fault, losing the context) are refused
  // before any launch, naming the buffer; the records and pool rows stay as they are.
  auto refusedAs = [](kvarn_status status, const char *name) {
    EXPECT_EQ(status, KVARN_ERROR_BUFFER_SIZE) << name;
    EXPECT_NE(std::string(kvarn_last_error()).find(std::string(name) + " ("), std::string::npos)
        << kvarn_last_error();
    EXPECT_NE(std::string(kvarn_last_error()).find("-byte aligned"), std::string::npos);
  };
  auto shifted = [](auto *pointer, int bytes) {
    return reinterpret_cast<decltype(pointer)>(reinterpret_cast<uintptr_t>(pointer) + bytes);
  };
  kvarn_flush_args misalignedFlush = flushArgs;
  misalignedFlush.cache = shifted(flushArgs.cache, 2); // code words need 4
  refusedAs(kvarn_launch_flush(flush, &misalignedFlush, nullptr), "cache");
  misalignedFlush = flushArgs;
  misalignedFlush.pool_key = shifted(flushArgs.pool_key, 1);
  refusedAs(kvarn_launch_flush(flush, &misalignedFlush, nullptr), "pool_key");
  kvarn_append_args misalignedAppend = appendArgs;
  misalignedAppend.pool_value = shifted(appendArgs.pool_value, 8); // D = 128 rows: 16-byte stores
  refusedAs(kvarn_launch_append(append, &misalignedAppend, nullptr), "pool_value");
  misalignedAppend = appendArgs;
  misalignedAppend.slot_mapping = shifted(appendArgs.slot_mapping, 4);
  refusedAs(kvarn_launch_append(append, &misalignedAppend, nullptr), "slot_mapping");
  kvarn_dequantize_args misalignedDequantize = dqArgs;
  misalignedDequantize.key = shifted(dqArgs.key, 1);
  refusedAs(kvarn_launch_dequantize(dequantize, &misalignedDequantize, nullptr), "key");
  kvarn_dequantize_args badDequantize = dqArgs;
  badDequantize.num_kv_heads = 0;
  EXPECT_EQ(kvarn_launch_dequantize(dequantize, &badDequantize, nullptr),
            KVARN_ERROR_INVALID_ARGUMENT);
  ASSERT_TRUE(KVARN_CU(driver().cuCtxSynchronize()));
  // Reference: records written by the CPU from the GPU's pool rows must match the GPU records'
  // K codes; the dequantized rows must match the CPU's dequantization of the GPU records.
  std::vector<uint16_t> poolKey = download<uint16_t>(dPk, size_t(g) * hk * d);
  std::vector<uint16_t> poolValue = download<uint16_t>(dPv, size_t(g) * hk * d);
  std::vector<uint8_t> records = download<uint8_t>(dCache, size_t(hk) * layout.tileBytesAligned);
  std::vector<uint16_t> k = download<uint16_t>(dK, size_t(2) * g * d);
  for (int h = 0; h < hk; ++h) {
    std::vector<uint8_t> expected(layout.tileBytesAligned);
    ASSERT_TRUE(reference::writeRecord(format, std::span(poolKey).subspan(size_t(h) * d),
                                       std::span(poolValue).subspan(size_t(h) * d), size_t(hk) * d,
                                       expected));
    const uint8_t *actual = records.data() + size_t(h) * layout.tileBytesAligned;
    for (size_t i = 0; i < layout.keyPackedBytes; ++i)
      ASSERT_EQ(actual[i], expected[i]) << "head " << h << " K byte " << i;
    std::vector<float> rk(size_t(g) * d), rv(rk.size());
    ASSERT_TRUE(reference::dequantizeRecord(format, std::span(actual, layout.tileBytesAligned), rk, rv));
    for (size_t i = 0; i < rk.size(); ++i)
      ASSERT_EQ(k[size_t(h) * rk.size() + i], floatToHalf(rk[i]));
  }
  // The append itself: rows within fp16 rounding of the reference rotation.
  std::vector<uint16_t> rotated(keys.size());
  ASSERT_TRUE(reference::rotateRows(keys, DType::F16, tokens * hk, d, d, rotated));
  for (size_t i = 0; i < rotated.size(); ++i)
    ASSERT_LE(std::fabs(halfToFloat(poolKey[i]) - halfToFloat(rotated[i])),
              std::fabs(halfToFloat(rotated[i])) * 2e-3f + 2e-3f);
}

TEST_F(CApiGpuTest, Bf16ModelStepThroughTheCApi) {
  // A bf16 model's step as an engine runs it, with the kernels from a bundle in a production
  // runtime (no JIT, an empty cache): append bf16 K/V rows into the fp16 pool, flush the full
  // blocks into records, decode bf16 queries over three record pages and the pool's tail page.
  // The decode is checked against the float64 reference over what the GPU wrote (error beyond
  // the bf16 output's own rounding), the pool rows against the reference rotation.
  const int hk = 2, d = 128, g = 128, q = 4, tokens = 3 * g + 37, blocks = 4;
  const Format format = *parseFormat("kvarn_k4v2_g128", d);
  const RecordLayout layout = recordLayout(format);
  std::mt19937_64 rng(testSeed(17));
  auto bf16Rows = [&](bool outliers) {
    std::vector<uint16_t> rows = randomRows(size_t(tokens) * hk, d, rng, outliers);
    for (uint16_t &x : rows)
      x = floatToBf16(halfToFloat(x));
    return rows;
  };
  const std::vector<uint16_t> keys = bf16Rows(true), values = bf16Rows(false);
  std::vector<int64_t> mapping(tokens);
  for (int t = 0; t < tokens; ++t)
    mapping[t] = t; // block b in pool slot b
  const char *arch = nullptr;
  int smCount = 0;
  ASSERT_KVARN(kvarn_runtime_device(runtime, &arch, &smCount));
  const DeviceInfo info = *openDevice(0);
  const char *appendSpec = "append:kvarn_k4v2_g128:d128:q1:bf16",
             *flushSpec = "flush:kvarn_k4v2_g128:d128:q1:f16",
             *decodeSpec = "decode:kvarn_k4v2_g128:d128:q4:bf16";
  std::vector<KernelSpec> specs;
  for (const char *spec : {appendSpec, flushSpec, decodeSpec})
    specs.push_back(*parseKernelSpec(std::string(spec) + ":" + arch));
  ArtifactCache buildCache(ArtifactCache::Options{cacheDir + "/build"});
  Expected<Bundle> bundle = compiler::buildBundle(specs, "", environmentOf(info), buildCache);
  ASSERT_TRUE(bundle) << bundle.error().str();
  const std::string bundlePath = cacheDir + "/bf16-model.kvarnbundle";
  ASSERT_TRUE(writeBundle(bundlePath, *bundle));
  ASSERT_NO_FATAL_FAILURE(createProductionRuntime());
  ASSERT_KVARN(kvarn_load_bundle(production, bundlePath.c_str()));
  kvarn_kernel append = nullptr, flush = nullptr, decodeKernel = nullptr;
  ASSERT_KVARN(kvarn_prepare(production, appendSpec, nullptr, &append));
  ASSERT_KVARN(kvarn_prepare(production, flushSpec, nullptr, &flush));
  ASSERT_KVARN(kvarn_prepare(production, decodeSpec, nullptr, &decodeKernel));
  const size_t poolElements = size_t(blocks) * g * hk * d;
  const CUdeviceptr dPk = upload(std::vector<uint16_t>(poolElements, 0)),
                    dPv = upload(std::vector<uint16_t>(poolElements, 0));
  const CUdeviceptr dKeys = upload(keys), dValues = upload(values), dMap = upload(mapping);
  kvarn_append_args appendArgs{reinterpret_cast<void *>(dKeys), reinterpret_cast<void *>(dValues),
                               reinterpret_cast<int64_t *>(dMap), reinterpret_cast<void *>(dPk),
                               reinterpret_cast<void *>(dPv), tokens, hk, int64_t(hk) * d,
                               int64_t(hk) * d};
  ASSERT_KVARN(kvarn_launch_append(append, &appendArgs, nullptr));
  std::vector<int32_t> entries;
  for (int block = 0; block < 3; ++block)
    for (int head = 0; head < hk; ++head)
      entries.insert(entries.end(), {block, head, block});
  const CUdeviceptr dEntries = upload(entries), dStatus = upload(std::vector<int32_t>{0});
  const CUdeviceptr dCache = allocate(size_t(blocks) * hk * layout.tileBytesAligned);
  kvarn_flush_args flushArgs{reinterpret_cast<void *>(dPk), reinterpret_cast<void *>(dPv),
                             reinterpret_cast<int32_t *>(dEntries), reinterpret_cast<void *>(dCache),
                             reinterpret_cast<int32_t *>(dStatus), 3 * hk, hk};
  ASSERT_KVARN(kvarn_launch_flush(flush, &flushArgs, nullptr));
  ASSERT_TRUE(KVARN_CU(driver().cuCtxSynchronize()));
  EXPECT_EQ(download<int32_t>(dStatus, 1)[0], 0);
  std::vector<uint16_t> poolKey = download<uint16_t>(dPk, poolElements);
  std::vector<uint16_t> poolValue = download<uint16_t>(dPv, poolElements);
  std::vector<uint8_t> records =
      download<uint8_t>(dCache, size_t(blocks) * hk * layout.tileBytesAligned);
  // The pool rows: the bf16 rows rotated into fp16, within fp16 rounding of the reference's.
  std::vector<uint16_t> rotated(keys.size());
  ASSERT_TRUE(reference::rotateRows(keys, DType::BF16, tokens * hk, d, d, rotated));
  for (size_t i = 0; i < rotated.size(); ++i)
    ASSERT_LE(std::fabs(halfToFloat(poolKey[i]) - halfToFloat(rotated[i])),
              std::fabs(halfToFloat(rotated[i])) * 2e-3f + 2e-3f)
        << "pool key element " << i;
  // Decode: blocks 0..2 are records, block 3 (37 tokens) stays in pool slot 3.
  const std::vector<int32_t> blockToSlot = {-1, -1, -1, 3}, table = {0, 1, 2, 3},
                             lengths = {tokens};
  const std::vector<uint16_t> query = randomQueries(size_t(hk) * q * d, DType::BF16, 18);
  int splits = 0;
  size_t workspaceBytes = 0;
  ASSERT_KVARN(kvarn_plan_decode(decodeKernel, 1, hk, tokens, &splits));
  ASSERT_KVARN(kvarn_decode_workspace_size(decodeKernel, 1, hk, splits, &workspaceBytes));
  auto ints = [](CUdeviceptr p) { return reinterpret_cast<int32_t *>(p); };
  const CUdeviceptr dOut = allocate(query.size() * 2);
  kvarn_decode_args args{reinterpret_cast<void *>(upload(query)), reinterpret_cast<void *>(dOut),
                         reinterpret_cast<void *>(dCache), reinterpret_cast<void *>(dPk),
                         reinterpret_cast<void *>(dPv), ints(upload(blockToSlot)),
                         ints(upload(table)), ints(upload(lengths)),
                         reinterpret_cast<void *>(allocate(workspaceBytes)), 1, hk, blocks, 0.0f,
                         tokens};
  ASSERT_KVARN(kvarn_launch_decode(decodeKernel, &args, splits, nullptr));
  ASSERT_TRUE(KVARN_CU(driver().cuCtxSynchronize()));
  const std::vector<uint16_t> out = download<uint16_t>(dOut, query.size());
  reference::DecodeProblem problem;
  problem.format = format;
  problem.batch = 1;
  problem.numQueryHeads = hk * q;
  problem.numKvHeads = hk;
  problem.maxBlocksPerRequest = blocks;
  problem.dtype = DType::BF16;
  problem.query = query;
  problem.blockTable = table;
  problem.seqLens = lengths;
  std::vector<uint16_t> expected(query.size());
  std::vector<float> unconverted(query.size());
  ASSERT_TRUE(reference::decodeQuantized(problem, {records, poolKey, poolValue, blockToSlot}, 1,
                                         expected, unconverted));
  const double error = reference::decodeOutputError(DType::BF16, toFloats(out, DType::BF16),
                                                    toFloats(expected, DType::BF16), unconverted);
  EXPECT_LE(error, 1e-3);
  std::printf("[ capi     ] bf16 model step: decode error beyond the bf16 rounding %.2e (%d "
              "splits)\n",
              error, splits);
}

TEST_F(CApiGpuTest, ProductionModeWithoutJitUsesTheCacheOrSaysWhatIsMissing) {
  kvarn_runtime_options noJit{0, cacheDir.c_str(), 0, 0};
  kvarn_runtime reader = nullptr;
  ASSERT_KVARN(kvarn_runtime_create(&noJit, &reader));
  kvarn_kernel kernel = nullptr;
  EXPECT_EQ(kvarn_prepare(reader, "dequantize:kvarn_k2v2_g64:d64:q1:f16", nullptr, &kernel),
            KVARN_ERROR_NOT_FOUND);
  EXPECT_NE(std::string(kvarn_last_error()).find("JIT is disabled"), std::string::npos);
  // The JIT runtime compiles it into the shared cache directory; a no-JIT reader then finds it.
  ASSERT_KVARN(kvarn_prepare(runtime, "dequantize:kvarn_k2v2_g64:d64:q1:f16", nullptr, &kernel));
  kvarn_runtime reader2 = nullptr;
  ASSERT_KVARN(kvarn_runtime_create(&noJit, &reader2));
  ASSERT_KVARN(kvarn_prepare(reader2, "dequantize:kvarn_k2v2_g64:d64:q1:f16", nullptr, &kernel));
  EXPECT_EQ(kvarn_prepare(reader2, "decode:kvarn_k4v2_g128:d96:q8:f16", nullptr, &kernel),
            KVARN_ERROR_INVALID_ARGUMENT);
  EXPECT_NE(std::string(kvarn_last_error()).find("unsupported head_dim: 96"), std::string::npos);
  kvarn_runtime_destroy(reader);
  kvarn_runtime_destroy(reader2);
}

} // namespace

/// A configs document for this GPU's silicon with one entry: `spec` and the JSON members that
/// follow its spec (schedule, variants).
std::string configsForThisGpu(const DeviceInfo &info, const std::string &spec,
                              const std::string &members) {
  return std::string(R"({"environment": {"arch": ")") + info.arch() + R"(", "sm_count": )" +
         std::to_string(info.smCount) + R"(, "l2_bytes": )" + std::to_string(info.l2Bytes) +
         R"(, "memory_clock_khz": )" + std::to_string(info.memoryClockKhz) +
         R"(}, "entries": [{"spec": ")" + spec + R"(", )" + members + "}]}";
}

/// Builds a bundle of the decode spec k4v2_g128 D128 Q8 for this GPU with configs for this GPU's
/// silicon naming `members` (schedule, variants), writes it to `path` and returns its entry count.
void writeTunedDecodeBundle(kvarn_runtime runtime, const std::string &members,
                            const std::string &buildDir, const std::string &path,
                            size_t *entries) {
  const char *arch = nullptr;
  int smCount = 0;
  ASSERT_KVARN(kvarn_runtime_device(runtime, &arch, &smCount));
  DeviceInfo info = *openDevice(0);
  const std::string spec = std::string("decode:kvarn_k4v2_g128:d128:q8:f16:") + arch;
  ArtifactCache buildCache(ArtifactCache::Options{buildDir});
  Expected<Bundle> bundle = compiler::buildBundle(
      {*parseKernelSpec(spec)}, configsForThisGpu(info, spec, members), environmentOf(info),
      buildCache);
  ASSERT_TRUE(bundle) << bundle.error().str();
  ASSERT_TRUE(writeBundle(path, *bundle));
  *entries = bundle->entries.size();
}

/// Bundle export -> a fresh runtime without JIT and with an empty cache -> load -> launch. The
/// bundle carries tuned configs naming a non-default schedule; kvarn_prepare with no schedule
/// must pick it ("tuned") and find its kernel in the bundle.
TEST_F(CApiGpuTest, BundleExportImportLaunchUsesTheTunedSchedule) {
  const std::string path = cacheDir + "/kernels.kvarnbundle";
  size_t entries = 0;
  ASSERT_NO_FATAL_FAILURE(writeTunedDecodeBundle(
      runtime, R"("schedule": "warps=2,mma=m16n8k16.single-p")", cacheDir + "/build", path,
      &entries));
  EXPECT_EQ(entries, 1u) << "the tuned schedule only";
  ASSERT_NO_FATAL_FAILURE(createProductionRuntime());
  kvarn_kernel kernel = nullptr;
  EXPECT_EQ(kvarn_prepare(production, "decode:kvarn_k4v2_g128:d128:q8:f16", nullptr, &kernel),
            KVARN_ERROR_NOT_FOUND) << "nothing is cached before the bundle";
  ASSERT_KVARN(kvarn_load_bundle(production, path.c_str()));
  ASSERT_KVARN(kvarn_prepare(production, "decode:kvarn_k4v2_g128:d128:q8:f16", nullptr, &kernel));
  const char *schedule = nullptr, *how = nullptr;
  ASSERT_KVARN(kvarn_kernel_describe(kernel, &schedule, &how));
  EXPECT_NE(std::string(schedule).find("warps=2"), std::string::npos) << schedule;
  EXPECT_EQ(std::string(how).rfind("tuned: ", 0), 0u) << how;
  DecodeFixture fx(*parseFormat("kvarn_k4v2_g128", 128), 2, 8, {700, 129, 1}, 31);
  EXPECT_LE(decode(kernel, fx, {700, 129, 1}, 2), 1e-3);
}

/// Tuned configs with decode variants, through a bundle into a production runtime (no JIT): the
/// bundle carries every variant's kernel, plan and launch pick the schedule by batch x kv heads
/// and the longest request's length, and each variant decodes correctly (12 warps per CTA over
/// fewer pages than warps included). An explicit schedule has no variants.
TEST_F(CApiGpuTest, DecodeVariantsFromTheConfigsPickTheScheduleByLaunchSize) {
  const std::string path = cacheDir + "/variants.kvarnbundle";
  size_t entries = 0;
  ASSERT_NO_FATAL_FAILURE(writeTunedDecodeBundle(runtime, R"("schedule": "warps=2,mma=m16n8k16.single-p", "variants": [
           {"min_work_items": 4, "schedule": "warps=12,mma=m16n8k16.single-p"},
           {"min_work_items": 6, "schedule": "warps=6,min_ctas=2,mma=m16n8k16.single-p"},
           {"min_work_items": 6, "min_context": 1400, "schedule": "warps=8,min_ctas=1,mma=m16n8k16.single-p"}])",
                                                 cacheDir + "/build", path, &entries));
  ASSERT_EQ(entries, 4u) << "the tuned schedule and its three variants";
  const char *arch = nullptr;
  int smCount = 0;
  ASSERT_KVARN(kvarn_runtime_device(runtime, &arch, &smCount));
  ASSERT_NO_FATAL_FAILURE(createProductionRuntime());
  ASSERT_KVARN(kvarn_load_bundle(production, path.c_str()));
  kvarn_kernel kernel = nullptr;
  ASSERT_KVARN(kvarn_prepare(production, "decode:kvarn_k4v2_g128:d128:q8:f16", nullptr, &kernel));
  const char *schedule = nullptr, *how = nullptr;
  ASSERT_KVARN(kvarn_kernel_describe(kernel, &schedule, &how));
  EXPECT_NE(std::string(how).find("from 4 work items: warps=12"), std::string::npos) << how;
  EXPECT_EQ(std::string(how).find("not used"), std::string::npos) << how;
  EXPECT_NE(std::string(how).find("from 6 work items and 1400 tokens: warps=8"), std::string::npos)
      << how;
  EXPECT_NE(scheduleAt(kernel, 1, 2).find("warps=2,"), std::string::npos);
  EXPECT_NE(scheduleAt(kernel, 2, 2).find("warps=12,"), std::string::npos);
  EXPECT_NE(scheduleAt(kernel, 2, 2, 5000).find("warps=12,"), std::string::npos);
  EXPECT_NE(scheduleAt(kernel, 3, 2).find("warps=6,"), std::string::npos);
  EXPECT_NE(scheduleAt(kernel, 3, 2, 1399).find("warps=6,"), std::string::npos);
  EXPECT_NE(scheduleAt(kernel, 3, 2, 1400).find("warps=8,"), std::string::npos)
      << "the context variant from 1400 tokens";
  // 512 pairs: past its threshold, but the 12-warp variant (one CTA per SM) would need more
  // waves than the base there, so a launch never runs it (variantForLaunch).
  EXPECT_EQ(scheduleAt(kernel, 64, 8).find("warps=12,"), std::string::npos);
  EXPECT_EQ(scheduleAt(kernel, 2 * smCount, 1).find("warps=12,"), std::string::npos);
  // Each size through its schedule, against the float64 reference (NaN-poisoned outputs).
  expectEachLaunchSizeDecodes(kernel, 51);
  // The same schedule given explicitly: no variants at any size.
  kvarn_kernel plain = nullptr;
  ASSERT_KVARN(kvarn_prepare(runtime, "decode:kvarn_k4v2_g128:d128:q8:f16",
                             "warps=2,mma=m16n8k16.single-p", &plain));
  EXPECT_NE(plain, kernel);
  EXPECT_EQ(scheduleAt(plain, 64, 8), scheduleAt(plain, 1, 1));
  const char *unused = nullptr;
  EXPECT_EQ(kvarn_decode_schedule(kernel, -1, 2, 0, &unused), KVARN_ERROR_INVALID_ARGUMENT);
  EXPECT_EQ(kvarn_decode_schedule(kernel, 1, 2, -1, &unused), KVARN_ERROR_INVALID_ARGUMENT);
  // A negative length is refused at launch too, before anything is read or launched.
  alignas(16) int32_t sentinel = 0; // aligned as every buffer must be
  void *never = &sentinel; // not dereferenced: the arguments are refused first
  kvarn_decode_args negative{never, never, never, never, never, &sentinel, &sentinel, &sentinel,
                             never, 1, 2, 1, 0.0f, -1};
  EXPECT_EQ(kvarn_launch_decode(kernel, &negative, 1, nullptr), KVARN_ERROR_INVALID_ARGUMENT);
  EXPECT_NE(std::string(kvarn_last_error()).find("negative max_seq_len"), std::string::npos)
      << kvarn_last_error();
  // A cache the record copies (16-byte pieces) would read misaligned is refused, as is a
  // workspace whose partials the merge loads as float4.
  kvarn_decode_args misaligned = negative;
  misaligned.max_seq_len = 0;
  misaligned.cache = reinterpret_cast<const char *>(never) + 8;
  EXPECT_EQ(kvarn_launch_decode(kernel, &misaligned, 1, nullptr), KVARN_ERROR_BUFFER_SIZE);
  EXPECT_NE(std::string(kvarn_last_error()).find("cache ("), std::string::npos)
      << kvarn_last_error();
  misaligned.cache = never;
  misaligned.workspace = reinterpret_cast<char *>(never) + 4;
  EXPECT_EQ(kvarn_launch_decode(kernel, &misaligned, 2, nullptr), KVARN_ERROR_BUFFER_SIZE);
  EXPECT_NE(std::string(kvarn_last_error()).find("workspace ("), std::string::npos)
      << kvarn_last_error();
}

/// Tuned configs with decode variants through the JIT (an empty cache): kvarn_prepare builds
/// the schedule and every distinct variant once (in parallel, buildPreparedKernels), a variant
/// listed twice shares its kernel, and each launch size decodes correctly through its schedule.
TEST_F(CApiGpuTest, DecodeVariantsFromTheConfigsAreJitBuiltOnceEach) {
  const char *arch = nullptr;
  int smCount = 0;
  ASSERT_KVARN(kvarn_runtime_device(runtime, &arch, &smCount));
  const std::string spec = std::string("decode:kvarn_k4v2_g128:d128:q8:f16:") + arch;
  const std::string configsDir = cacheDir + "/configs", jitCache = cacheDir + "/jit";
  std::filesystem::create_directories(configsDir);
  std::ofstream(configsDir + "/this-gpu.json") << configsForThisGpu(
      *openDevice(0), spec, R"("schedule": "warps=2,mma=m16n8k16.single-p", "variants": [
           {"min_work_items": 4, "schedule": "warps=8,min_ctas=1,mma=m16n8k16.single-p"},
           {"min_work_items": 6, "schedule": "warps=4,min_ctas=1,mma=m16n8k16.single-p"},
           {"min_work_items": 6, "min_context": 1400, "schedule": "warps=8,min_ctas=1,mma=m16n8k16.single-p"}])");
  kvarn_runtime_options options{0, jitCache.c_str(), 1, 0, configsDir.c_str()};
  kvarn_runtime jit = nullptr;
  ASSERT_KVARN(kvarn_runtime_create(&options, &jit));
  std::unique_ptr<kvarn_runtime_t, void (*)(kvarn_runtime)> owner(jit, kvarn_runtime_destroy);
  ASSERT_KVARN(kvarn_jit_install(jit));
  kvarn_kernel kernel = nullptr;
  ASSERT_KVARN(kvarn_prepare(jit, "decode:kvarn_k4v2_g128:d128:q8:f16", nullptr, &kernel));
  const char *schedule = nullptr, *how = nullptr;
  ASSERT_KVARN(kvarn_kernel_describe(kernel, &schedule, &how));
  EXPECT_EQ(std::string(how).find("not used"), std::string::npos) << how;
  EXPECT_NE(std::string(how).find("from 6 work items and 1400 tokens: warps=8"), std::string::npos)
      << how;
  EXPECT_EQ(ArtifactCache(ArtifactCache::Options{jitCache}).checkEntries().size(), 3u)
      << "the schedule and two distinct variants, each built once";
  expectEachLaunchSizeDecodes(kernel, 71);
  EXPECT_NE(scheduleAt(kernel, 1, 2, 700).find("warps=2,"), std::string::npos);
  EXPECT_NE(scheduleAt(kernel, 3, 2, 700).find("warps=4,"), std::string::npos);
  EXPECT_NE(scheduleAt(kernel, 3, 2, 2049).find("warps=8,"), std::string::npos);
}

/// A prepare that compiles holds no lock another thread's prepare needs: while one thread's
/// JIT build is held, a kernel prepared before is found at once from another thread.
TEST_F(CApiGpuTest, APrepareThatCompilesNeverHoldsUpAnotherThreadsPrepare) {
  kvarn_kernel ready = nullptr;
  ASSERT_KVARN(kvarn_prepare(runtime, "append:kvarn_k4v2_g128:d128:q1:f16", nullptr, &ready));
  std::mutex mutex;
  std::condition_variable changed;
  bool entered = false, released = false;
  setJitCompiler(runtime, [&](const KernelSpec &, const Schedule &) -> Expected<Artifact> {
    std::unique_lock<std::mutex> lock(mutex);
    entered = true;
    changed.notify_all();
    changed.wait_for(lock, std::chrono::seconds(60), [&] { return released; });
    return makeError(ErrorCode::Internal, "compile held by the test");
  });
  kvarn_status coldStatus = KVARN_OK;
  std::string coldMessage;
  std::thread cold([&] {
    kvarn_kernel kernel = nullptr;
    coldStatus = kvarn_prepare(runtime, "dequantize:kvarn_k4v2_g128:d128:q1:f16", nullptr, &kernel);
    coldMessage = kvarn_last_error();
  });
  {
    std::unique_lock<std::mutex> lock(mutex);
    changed.wait_for(lock, std::chrono::seconds(60), [&] { return entered; });
  }
  EXPECT_TRUE(entered) << "the cold prepare never reached the JIT";
  // While the build is held: the prepared kernel, from another thread.
  std::future<kvarn_kernel> hot = std::async(std::launch::async, [&] {
    kvarn_kernel kernel = nullptr;
    return kvarn_prepare(runtime, "append:kvarn_k4v2_g128:d128:q1:f16", nullptr, &kernel) ==
                   KVARN_OK
               ? kernel
               : nullptr;
  });
  const bool prompt = hot.wait_for(std::chrono::seconds(10)) == std::future_status::ready;
  {
    std::lock_guard<std::mutex> lock(mutex);
    released = true;
  }
  changed.notify_all();
  cold.join();
  EXPECT_TRUE(prompt) << "a prepared kernel's prepare waited on another thread's compile";
  EXPECT_EQ(hot.get(), ready);
  EXPECT_EQ(coldStatus, KVARN_ERROR_INTERNAL);
  EXPECT_NE(coldMessage.find("compile held by the test"), std::string::npos) << coldMessage;
}

/// Two threads that never used CUDA (no current context) preparing the same kernel on an empty
/// cache at once: one build, and both get the same prepared kernel, loaded in the runtime's
/// context, which decodes.
TEST_F(CApiGpuTest, TwoThreadsPreparingOneKernelShareOneBuild) {
  std::atomic<int> builds{0};
  setJitCompiler(
      runtime, [&](const KernelSpec &spec, const Schedule &schedule) -> Expected<Artifact> {
        ++builds;
        Expected<compiler::CompiledKernel> kernel = compiler::compileKernel(spec, schedule);
        if (!kernel)
          return kernel.error();
        return compiler::toArtifact(*kernel, spec, schedule);
      });
  kvarn_kernel kernels[2] = {nullptr, nullptr};
  kvarn_status statuses[2] = {KVARN_ERROR_INTERNAL, KVARN_ERROR_INTERNAL};
  std::thread threads[2];
  for (int t = 0; t < 2; ++t)
    threads[t] = std::thread([&, t] {
      statuses[t] =
          kvarn_prepare(runtime, "decode:kvarn_k4v2_g128:d128:q8:f16", "warps=2", &kernels[t]);
    });
  for (std::thread &thread : threads)
    thread.join();
  ASSERT_EQ(statuses[0], KVARN_OK);
  ASSERT_EQ(statuses[1], KVARN_OK);
  EXPECT_EQ(kernels[0], kernels[1]);
  EXPECT_EQ(builds.load(), 1);
  DecodeFixture fx(*parseFormat("kvarn_k4v2_g128", 128), 2, 8, {700, 129, 1}, 91);
  EXPECT_LE(decode(kernels[0], fx, {700, 129, 1}, 2), 1e-3);
}

/// A bundle built for another arch is recompiled from its sources at load (no JIT) and runs.
TEST_F(CApiGpuTest, BundleForAnotherArchIsRecompiledFromItsSources) {
  const char *arch = nullptr;
  int smCount = 0;
  ASSERT_KVARN(kvarn_runtime_device(runtime, &arch, &smCount));
  const std::string other = std::string(arch) == "sm_80" ? "sm_86" : "sm_80";
  TuningEnvironment environment;
  environment.arch = other;
  ArtifactCache buildCache(ArtifactCache::Options{cacheDir + "/build"});
  Expected<Bundle> bundle = compiler::buildBundle(
      {*parseKernelSpec("decode:kvarn_k4v4_g64:d128:q4:f16:" + other)}, "", environment, buildCache);
  ASSERT_TRUE(bundle) << bundle.error().str();
  const std::string path = cacheDir + "/other.kvarnbundle";
  ASSERT_TRUE(writeBundle(path, *bundle));
  ASSERT_NO_FATAL_FAILURE(createProductionRuntime());
  ASSERT_KVARN(kvarn_load_bundle(production, path.c_str()));
  kvarn_kernel kernel = nullptr;
  ASSERT_KVARN(kvarn_prepare(production, "decode:kvarn_k4v4_g64:d128:q4:f16", nullptr, &kernel));
  DecodeFixture fx(*parseFormat("kvarn_k4v4_g64", 128), 2, 4, {300, 65}, 41);
  EXPECT_LE(decode(kernel, fx, {300, 65}, 2), 1e-3);
}
