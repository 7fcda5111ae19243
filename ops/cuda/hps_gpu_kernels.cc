// GPU kernels of TfHpsLookup and TfHpsSparseLookup: keys in device memory,
// embeddings written to device memory on TensorFlow's compute stream.
//
// This file is plain C++ (g++, -DGOOGLE_CUDA=1) and launches no CUDA work of
// its own: the whole device-side pipeline (dedup -> L1 -> misses to the host
// -> insert -> scatter) lives in _tf_hps_gpu_cache.so behind the C ABI of
// gpu_lookup_c_api.h, which carries its own (static) CUDA runtime. What stays
// here is TensorFlow glue: finding the parameter server and table, keeping one
// pipeline per (server, table, device, key width), answering the pipeline's
// misses from the tiers below L1 (ParameterServer::FetchFromDatabases),
// keeping rows older than an online update out of its L1 (InsertGuard: the
// table's update epoch, as for the CPU cache), registering it for online
// updates and refreshes (AddCacheListener, AddCacheRefresher), and counting
// into the table's TableStats, which hps.stats() reports.
//
// Library: tf_hps/_tf_hps_ops_gpu.so, linked against _tf_hps_ops.so (the op
// registrations and the process's one ParameterServerRegistry) and
// _tf_hps_gpu_cache.so. Load it after the op library.
//
// Which L1 a table gets on the GPU (model config):
//   gpucache false               no L1: an empty static table, so every key
//                                goes to the databases and nothing is cached,
//                                as on the CPU path;
//   embedding_cache_type static  (or use_static_table) a read-only table of
//                                every row of the table's files;
//   dynamic / stochastic         a slab-set cache of gpucacheper x rows (at
//                                least 64), as the CPU cache is sized;
//   uvm                          a dynamic cache of every row (there is no
//                                unified-memory cache; the CPU path also sizes
//                                it to the whole table).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <exception>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

#include "base/error.h"
#include "base/log.h"
#include "core/config.h"
#include "core/parameter_server.h"
#include "core/table_file.h"
#include "ops/cuda/gpu_lookup_c_api.h"
#include "ops/hps_kernel_common.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/tensor.h"
#include "tensorflow/core/platform/threadpool.h"
#include "xla/stream_executor/stream.h"

namespace tf_hps {
namespace {

using ::tensorflow::OpKernel;
using ::tensorflow::OpKernelConstruction;
using ::tensorflow::OpKernelContext;
using ::tensorflow::Tensor;
using ::tensorflow::TensorShape;

// CUDA runtime error codes (cudaError_t) that say something about the cause;
// spelt out because this file includes no CUDA header.
constexpr int kCudaErrorMemoryAllocation = 2;
constexpr int kCudaErrorInsufficientDriver = 35;
constexpr int kCudaErrorDevicesUnavailable = 46;
constexpr int kCudaErrorNoDevice = 100;

// Rows read per chunk when building a static table from its files.
constexpr int64_t kStaticLoadChunkRows = 1 << 16;

// Turns a failed C ABI call into an HpsError whose code picks the tf.errors
// class: bad sizes are the caller's fault, a full GPU is ResourceExhausted, a
// missing driver or device is Unavailable, anything else (other CUDA errors,
// HPS_GPU_LOOKUP_INTERNAL) is Internal.
[[noreturn]] void ThrowGpuError(int code, const std::string& what) {
  std::string detail = hps_gpu_lookup_last_error();
  if (detail.empty()) detail = "error code " + std::to_string(code);
  const std::string message = "tf_hps GPU lookup: " + what + " failed: " + detail;
  ErrorCode error = ErrorCode::kInternal;
  switch (code) {
    case HPS_GPU_LOOKUP_INVALID_ARGUMENT: error = ErrorCode::kInvalidArgument; break;
    case kCudaErrorMemoryAllocation: error = ErrorCode::kResourceExhausted; break;
    case kCudaErrorInsufficientDriver:
    case kCudaErrorDevicesUnavailable:
    case kCudaErrorNoDevice: error = ErrorCode::kUnavailable; break;
    default: break;
  }
  throw HpsError(error, message);
}

const ModelConfig& ModelOf(const ParameterServer& server, const EmbeddingTable& table) {
  const int index = server.config().FindModel(table.model);
  if (index < 0) throw HpsError(ErrorCode::kInternal, "model '" + table.model + "' of table " + table.tag +
                                                          " is missing from its server's config");
  return server.config().models[index];
}

// Every row of the table's files (sparse_files[table_id]), for a static
// table. Throws HpsError when the files cannot be read.
void ReadStaticRows(const ParameterServer& server, const ModelConfig& model, const EmbeddingTable& table,
                    int64_t table_id, std::vector<int64_t>* keys, std::vector<float>* rows) {
  if (table_id >= static_cast<int64_t>(model.sparse_files.size()))
    ThrowNotFound("table " + table.tag + " has no entry in sparse_files to build its static table from");
  const TableFolderInfo info = InspectTableFolder(model.sparse_files[table_id], table.dim);
  DistinctTableKeys(info, !server.config().supportlonglong);  // throws naming a key the files hold twice
  keys->reserve(info.num_rows);
  rows->reserve(info.num_rows * table.dim);
  ReadTableFolder(info, kStaticLoadChunkRows, !server.config().supportlonglong,
                  [&](const int64_t* k, const float* v, int64_t n) {
                    keys->insert(keys->end(), k, k + n);
                    rows->insert(rows->end(), v, v + n * table.dim);
                  });
}

hps_gpu_lookup* CreateStatic(const EmbeddingTable& table, const std::vector<int64_t>& keys,
                             const std::vector<float>& rows, int key_bytes, const std::string& source) {
  hps_gpu_lookup* pipeline = nullptr;
  const int rc = hps_gpu_lookup_create_static(keys.data(), static_cast<int64_t>(keys.size()), rows.data(),
                                              table.dim, key_bytes, &pipeline);
  if (rc != 0)
    ThrowGpuError(rc, "building the static GPU table of " + table.tag + " (" + std::to_string(keys.size()) +
                          " rows of " + std::to_string(table.dim) + " floats)");
  Log(LogLevel::kInfo, "table " + table.tag + ": GPU L1 is a static table of " + std::to_string(keys.size()) +
                           " rows from " + source);
  return pipeline;
}

hps_gpu_lookup* CreateDynamic(const EmbeddingTable& table, int64_t capacity_rows, int key_bytes) {
  hps_gpu_lookup* pipeline = nullptr;
  const int rc = hps_gpu_lookup_create_dynamic(capacity_rows, table.dim, key_bytes, &pipeline);
  if (rc != 0)
    ThrowGpuError(rc, "creating the GPU cache of " + table.tag + " (" + std::to_string(capacity_rows) +
                          " rows of " + std::to_string(table.dim) + " floats; lower gpucacheper if the GPU "
                          "is short of memory)");
  Log(LogLevel::kInfo, "table " + table.tag + ": GPU L1 is a dynamic cache of " + std::to_string(capacity_rows) +
                           " rows");
  return pipeline;
}

// gpucache false: a pipeline with no L1. An empty static table (n = 0, which
// gpu_lookup_c_api.h allows for this) holds nothing and never inserts, so
// every key goes to the databases, exactly as on the CPU path without a
// cache. (A tiny dynamic cache would cache rows the config asked not to.)
hps_gpu_lookup* CreateWithoutL1(const EmbeddingTable& table, int key_bytes) {
  hps_gpu_lookup* pipeline = nullptr;
  const int rc = hps_gpu_lookup_create_static(nullptr, 0, nullptr, table.dim, key_bytes, &pipeline);
  if (rc != 0) ThrowGpuError(rc, "creating the GPU lookup of " + table.tag + " without an L1 (gpucache is false)");
  Log(LogLevel::kInfo, "table " + table.tag + ": no GPU L1 (gpucache is false); every key goes to the " +
                           "databases");
  return pipeline;
}

// Builds the pipeline a table's config asks for, on the current CUDA device:
// TensorFlow makes the op's device current (it activates the device's primary
// context around Compute), and the pipeline's CUDA runtime uses that context.
hps_gpu_lookup* CreatePipeline(const ParameterServer& server, const EmbeddingTable& table, int64_t table_id,
                               int key_bytes) {
  const ModelConfig& model = ModelOf(server, table);
  if (!model.gpucache) return CreateWithoutL1(table, key_bytes);
  if (model.embedding_cache_type == "static") {
    std::vector<int64_t> keys;
    std::vector<float> rows;
    try {
      ReadStaticRows(server, model, table, table_id, &keys, &rows);
    } catch (const HpsError& e) {
      // A table served from pre-ingested databases may have no files here.
      // Answers stay exact with a dynamic cache of the same size, so serve on.
      Log(LogLevel::kWarning, "table " + table.tag + ": cannot build a static GPU table from its files (" +
                                  e.what() + "); using a dynamic GPU cache of every row instead");
      return CreateDynamic(table, std::max<int64_t>(64, table.num_rows), key_bytes);
    }
    return CreateStatic(table, keys, rows, key_bytes, model.sparse_files[table_id]);
  }
  // The CPU cache's sizing rule (core/parameter_server.cc), so both paths
  // hold the same number of rows for one config.
  const bool whole_table = model.embedding_cache_type != "dynamic" && model.embedding_cache_type != "stochastic";
  const int64_t capacity =
      whole_table ? std::max<int64_t>(64, table.num_rows)
                  : std::max<int64_t>(64, static_cast<int64_t>(std::ceil(model.gpucacheper * table.num_rows)));
  return CreateDynamic(table, capacity, key_bytes);
}

// What one query's (or one refresh's) callbacks need; they run on the thread
// that called hps_gpu_lookup_query / hps_gpu_lookup_refresh, so this lives on
// that thread's stack.
struct FetchContext {
  const ParameterServer* server = nullptr;
  const EmbeddingTable* table = nullptr;
  ParallelFor parallel_for;
  std::vector<char> found;
  // The table's update epoch before the last fetch read the databases (odd,
  // so InsertGuard refuses, until a fetch has noted it).
  uint64_t epoch_seen = 1;
  // An exception must not unwind through the C library: it is kept here and
  // rethrown once the query has returned, so its error code survives (a Redis
  // outage stays Unavailable, a bad row stays InvalidArgument).
  std::exception_ptr error;
};

// hps_gpu_fetch_fn: the tiers below L1 (VDB -> PDB -> default) for the
// distinct keys the GPU L1 missed (or holds, for a refresh). The epoch is
// noted first, as the CPU lookup does, for InsertGuard.
int FetchMisses(void* ctx, const int64_t* keys, int64_t m, float* rows, int8_t* found) {
  auto* fetch = static_cast<FetchContext*>(ctx);
  try {
    fetch->epoch_seen = fetch->table->update_epoch.load(std::memory_order_acquire);
    fetch->found.assign(m, 0);
    fetch->server->FetchFromDatabases(*fetch->table, keys, m, rows, &fetch->found, fetch->parallel_for);
    for (int64_t i = 0; i < m; ++i) found[i] = fetch->found[i] ? 1 : 0;
    return 0;
  } catch (...) {
    fetch->error = std::current_exception();
    return 1;
  }
}

// hps_gpu_insert_guard_fn, asked under the pipeline's insert lock before the
// rows of the last FetchMisses go into its L1: yes only if no online update
// of the table began since they were read (UpdateGuard's rule: the epoch is
// even and unchanged). ParameterServer::ApplyUpdate moves the epoch before it
// calls the pipeline's listener (hps_gpu_lookup_update, which takes that
// lock), so an update either makes this say no or overwrites the insertion.
int InsertGuard(void* ctx) {
  const auto* fetch = static_cast<const FetchContext*>(ctx);
  return UpdateGuard{&fetch->table->update_epoch, fetch->epoch_seen}.Holds() ? 1 : 0;
}

// The process's GPU pipelines, one per (server handle, table tag, device,
// key width), created once even when first lookups race, and shared by every
// kernel instance (and SavedModel) that names the same table on the same GPU.
// int32 and int64 keys of one table get separate pipelines: a pipeline's key
// width is fixed, and widening on the device would need a CUDA kernel here.
//
// Pipelines are never destroyed: parameter servers live until the process
// exits too, and freeing device memory from a static destructor can run after
// the CUDA runtime has shut down.
class GpuPipelines {
 public:
  static GpuPipelines& Global() {
    static GpuPipelines* pipelines = new GpuPipelines;  // leaked on purpose, see above
    return *pipelines;
  }

  hps_gpu_lookup* GetOrCreate(const std::string& handle, const ParameterServer& server, const EmbeddingTable& table,
                              int64_t table_id, int device, int key_bytes) {
    std::shared_ptr<Entry> entry;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      auto& slot = entries_[Key{handle, table.tag, device, key_bytes}];
      if (!slot) slot = std::make_shared<Entry>();
      entry = slot;
    }
    // Creation (reading a static table's files, allocating the cache) can be
    // slow; only lookups of this same pipeline wait for it. A failure is not
    // remembered: the next lookup tries again.
    std::lock_guard<std::mutex> lock(entry->init_mutex);
    if (entry->pipeline == nullptr) {
      hps_gpu_lookup* pipeline = CreatePipeline(server, table, table_id, key_bytes);
      // Online updates overwrite the rows this pipeline's L1 holds, as they
      // do the CPU cache's (the pipeline makes its own device current).
      server.AddCacheListener(table, [pipeline, tag = table.tag](const int64_t* keys, int64_t n, const float* rows) {
        if (hps_gpu_lookup_update(pipeline, keys, n, rows) != 0)
          Log(LogLevel::kWarning, "table " + tag + ": online update of the GPU cache failed: " +
                                      hps_gpu_lookup_last_error());
      });
      // hps.refresh_cache() (and refresh_interval) re-read its rows too, with
      // the lookups' guard, so a refresh never writes rows older than an
      // update's. The server owns the refresher, so it outlives neither.
      server.AddCacheRefresher(table, [pipeline, server = &server, table = &table]() -> int64_t {
        FetchContext fetch;
        fetch.server = server;
        fetch.table = table;
        fetch.parallel_for = SerialFor;  // as the CPU cache's refresh
        int64_t refreshed = 0;
        const int rc = hps_gpu_lookup_refresh(pipeline, &FetchMisses, &fetch, &InsertGuard, &fetch, &refreshed);
        if (fetch.error) std::rethrow_exception(fetch.error);
        if (rc != 0) ThrowGpuError(rc, "refresh of the GPU cache of table " + table->tag);
        return refreshed;
      });
      entry->pipeline = pipeline;
    }
    return entry->pipeline;
  }

 private:
  using Key = std::tuple<std::string, std::string, int, int>;
  struct Entry {
    std::mutex init_mutex;
    hps_gpu_lookup* pipeline = nullptr;
  };
  std::mutex mutex_;
  std::map<Key, std::shared_ptr<Entry>> entries_;
};

// TensorFlow's compute stream of this op, as a cudaStream_t.
void* ComputeStream(OpKernelContext* ctx) {
  ::tensorflow::DeviceContext* device_context = ctx->op_device_context();
  stream_executor::Stream* stream = device_context ? device_context->stream() : nullptr;
  if (stream == nullptr)
    throw HpsError(ErrorCode::kInternal, "tf_hps GPU lookup: the op has no GPU stream (device " +
                                             ctx->device()->name() + ")");
  void* handle = stream->platform_specific_handle().stream;
  if (handle == nullptr)
    throw HpsError(ErrorCode::kInternal, "tf_hps GPU lookup: the GPU stream of device " + ctx->device()->name() +
                                             " has no CUDA stream handle");
  return handle;
}

// The ordinal of the op's GPU, to keep pipelines of different GPUs apart.
int DeviceOrdinal(OpKernelContext* ctx) {
  const auto* info = ctx->device()->tensorflow_accelerator_device_info();
  if (info != nullptr && info->gpu_id >= 0) return info->gpu_id;
  throw HpsError(ErrorCode::kInternal, "tf_hps GPU lookup: device " + ctx->device()->name() +
                                           " reports no GPU id");
}

// The server, table and pipeline a kernel instance serves, found once per
// handle (a kernel instance lives on one device, so the handle is the only
// thing that can change), with the op's attrs checked against the config as
// the CPU kernels do.
class GpuTableBinding {
 public:
  struct Resolved {
    std::shared_ptr<const ParameterServer> server;
    const EmbeddingTable* table = nullptr;
    hps_gpu_lookup* pipeline = nullptr;
  };

  explicit GpuTableBinding(OpKernelConstruction* ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("model_name", &model_name_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("table_id", &table_id_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("emb_vec_size", &emb_vec_size_));
  }

  int64_t emb_vec_size() const { return emb_vec_size_; }

  Resolved Resolve(OpKernelContext* ctx, const std::string& handle, int key_bytes) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (handle != handle_) {
      Resolved found;
      found.server = ParameterServerRegistry::Global().Find(handle);
      found.table = &found.server->FindTable(model_name_, table_id_);
      CheckLookupAttrs(*found.server, *found.table, model_name_, table_id_, emb_vec_size_, key_bytes == 8);
      found.pipeline = GpuPipelines::Global().GetOrCreate(handle, *found.server, *found.table, table_id_,
                                                          DeviceOrdinal(ctx), key_bytes);
      resolved_ = std::move(found);
      handle_ = handle;
    }
    return resolved_;
  }

 private:
  std::string model_name_;
  int64_t table_id_ = 0;
  int64_t emb_vec_size_ = 0;
  std::mutex mutex_;
  std::string handle_;  // the handle resolved_ belongs to
  Resolved resolved_;
};

// Looks n device keys up through the pipeline into d_out (n, dim) float32 on
// the op's stream, and counts the call into the table's stats.
void QueryOnGpu(OpKernelContext* ctx, const GpuTableBinding::Resolved& resolved, const void* d_keys, int64_t n,
                float* d_out, std::chrono::steady_clock::time_point start) {
  FetchContext fetch;
  fetch.server = resolved.server.get();
  fetch.table = resolved.table;
  // The fetch callback runs on this thread; the databases' work spreads
  // over TF's CPU worker pool, as in the CPU kernel.
  auto* workers = ctx->device()->tensorflow_cpu_worker_threads()->workers;
  fetch.parallel_for = [workers](int64_t total, int64_t cost, const std::function<void(int64_t, int64_t)>& work) {
    workers->ParallelFor(total, cost, work);
  };
  hps_gpu_lookup_counts counts{};
  const int rc = hps_gpu_lookup_query(resolved.pipeline, d_keys, n, d_out, &FetchMisses, &fetch, &InsertGuard,
                                      &fetch, ComputeStream(ctx), &counts);
  if (fetch.error) std::rethrow_exception(fetch.error);
  if (rc != 0) ThrowGpuError(rc, "lookup of " + std::to_string(n) + " keys in table " + resolved.table->tag);

  // hps.stats() shows GPU and CPU lookups of a table in the same counters.
  // vdb_hits, pdb_hits and defaults were counted by FetchFromDatabases.
  TableStats& stats = resolved.table->stats;
  stats.lookups.fetch_add(1, std::memory_order_relaxed);
  stats.keys.fetch_add(counts.keys, std::memory_order_relaxed);
  stats.l1_hits.fetch_add(counts.l1_hits, std::memory_order_relaxed);
  stats.missed_keys.fetch_add(counts.missed_keys, std::memory_order_relaxed);
  stats.cache_inserted.fetch_add(counts.inserted, std::memory_order_relaxed);
  stats.cache_evicted.fetch_add(counts.evicted, std::memory_order_relaxed);
  // Host time of the call: the work is enqueued on the stream, which is
  // only waited for when some key missed L1, so an all-hit batch records
  // its launch time, not its GPU time.
  stats.RecordLatency(
      std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() - start).count());
}

template <typename K>
class GpuLookupOp : public OpKernel {
 public:
  explicit GpuLookupOp(OpKernelConstruction* ctx) : OpKernel(ctx), binding_(ctx) {}

  void Compute(OpKernelContext* ctx) override {
    const Tensor& keys = ctx->input(0);
    const Tensor& handle = ctx->input(1);
    OP_REQUIRES(ctx, ::tensorflow::TensorShapeUtils::IsScalar(handle.shape()),
                absl::InvalidArgumentError("ps_handle must be a scalar string"));
    RunKernelGuarded(ctx, [&] {
      const auto start = std::chrono::steady_clock::now();
      const GpuTableBinding::Resolved resolved =
          binding_.Resolve(ctx, handle.scalar<tensorflow::tstring>()(), static_cast<int>(sizeof(K)));
      TensorShape out_shape = keys.shape();
      OP_REQUIRES_OK(ctx, out_shape.AddDimWithStatus(binding_.emb_vec_size()));
      Tensor* out = nullptr;
      OP_REQUIRES_OK(ctx, ctx->allocate_output(0, out_shape, &out));
      const int64_t n = keys.NumElements();
      if (n == 0) return;
      QueryOnGpu(ctx, resolved, keys.flat<K>().data(), n, out->flat<float>().data(), start);
    });
  }

 private:
  GpuTableBinding binding_;
};

// The output dtype's code in hps_gpu_combine_segments.
template <typename T>
constexpr int OutTypeOf() {
  if constexpr (std::is_same_v<T, float>) return HPS_GPU_OUT_FLOAT32;
  if constexpr (std::is_same_v<T, Eigen::half>) return HPS_GPU_OUT_FLOAT16;
  return HPS_GPU_OUT_BFLOAT16;
}

// TfHpsSparseLookup on the GPU: keys stay in device memory and are looked up
// through the table's pipeline, one row per key (the pipeline asks for each
// distinct key once); segment_ids come to the host (HostMemory), which groups
// the keys by output row with the CPU kernel's stable counting sort and its
// checks; the device then combines each row in the CPU kernel's order
// (hps_gpu_combine_segments, ops/sparse_combine.h), so both kernels give the
// same bits. Weights and max_norm (TfHpsWeightedSparseLookup) run on the CPU.
template <typename K, typename S, typename T>
class GpuSparseLookupOp : public OpKernel {
 public:
  explicit GpuSparseLookupOp(OpKernelConstruction* ctx) : OpKernel(ctx), binding_(ctx) {
    std::string combiner;
    OP_REQUIRES_OK(ctx, ctx->GetAttr("combiner", &combiner));
    if (combiner == "sum") {
      combiner_ = HPS_GPU_COMBINE_SUM;
    } else if (combiner == "mean") {
      combiner_ = HPS_GPU_COMBINE_MEAN;
    } else if (combiner == "sqrtn") {
      combiner_ = HPS_GPU_COMBINE_SQRTN;
    } else {
      ctx->CtxFailure(absl::InvalidArgumentError("combiner must be 'sum', 'mean' or 'sqrtn', got '" + combiner +
                                                 "'"));
    }
  }

  void Compute(OpKernelContext* ctx) override {
    using ::tensorflow::TensorShapeUtils;
    const Tensor& keys = ctx->input(0);
    const Tensor& segment_ids = ctx->input(1);
    const Tensor& num_rows_t = ctx->input(2);
    const Tensor& handle = ctx->input(3);
    OP_REQUIRES(ctx, TensorShapeUtils::IsVector(keys.shape()),
                absl::InvalidArgumentError("keys must be a vector, got shape " + keys.shape().DebugString()));
    OP_REQUIRES(ctx, TensorShapeUtils::IsVector(segment_ids.shape()),
                absl::InvalidArgumentError("segment_ids must be a vector, got shape " +
                                           segment_ids.shape().DebugString()));
    const int64_t nnz = keys.NumElements();
    OP_REQUIRES(ctx, segment_ids.NumElements() == nnz,
                absl::InvalidArgumentError("segment_ids has " + std::to_string(segment_ids.NumElements()) +
                                           " values but keys has " + std::to_string(nnz)));
    OP_REQUIRES(ctx, TensorShapeUtils::IsScalar(num_rows_t.shape()),
                absl::InvalidArgumentError("num_rows must be a scalar"));
    const int64_t num_rows = num_rows_t.scalar<int64_t>()();
    OP_REQUIRES(ctx, num_rows >= 0,
                absl::InvalidArgumentError("num_rows must be >= 0, got " + std::to_string(num_rows)));
    OP_REQUIRES(ctx, TensorShapeUtils::IsScalar(handle.shape()),
                absl::InvalidArgumentError("ps_handle must be a scalar string"));

    RunKernelGuarded(ctx, [&] {
      const auto start = std::chrono::steady_clock::now();
      const GpuTableBinding::Resolved resolved =
          binding_.Resolve(ctx, handle.scalar<tensorflow::tstring>()(), static_cast<int>(sizeof(K)));
      const int64_t dim = binding_.emb_vec_size();
      TensorShape out_shape;
      OP_REQUIRES_OK(ctx, TensorShape::BuildTensorShape({num_rows, dim}, &out_shape));
      Tensor* out = nullptr;
      OP_REQUIRES_OK(ctx, ctx->allocate_output(0, out_shape, &out));

      // Group the keys by output row (host): offsets (num_rows + 1), order (nnz).
      // Every segment id is checked first, as on the CPU, also when there are no rows.
      thread_local std::vector<int64_t> offsets;
      thread_local std::vector<int64_t> order;
      thread_local std::vector<int64_t> cursor;
      offsets.assign(num_rows + 1, 0);
      order.resize(nnz);
      const S* segments = segment_ids.flat<S>().data();
      for (int64_t i = 0; i < nnz; ++i) {
        const int64_t s = static_cast<int64_t>(segments[i]);
        if (s < 0 || s >= num_rows)
          ThrowInvalidArgument("segment_ids[" + std::to_string(i) + "] = " + std::to_string(s) +
                               " is out of range [0, " + std::to_string(num_rows) +
                               "): each key's row must be below num_rows (a SparseTensor's dense_shape[0])");
        ++offsets[s + 1];
      }
      if (num_rows == 0) return;
      for (int64_t r = 0; r < num_rows; ++r) offsets[r + 1] += offsets[r];
      cursor.assign(offsets.begin(), offsets.end() - 1);
      for (int64_t i = 0; i < nnz; ++i) order[cursor[static_cast<int64_t>(segments[i])]++] = i;

      // One row per key on the device, then the combine; both on the op's stream.
      Tensor rows;
      OP_REQUIRES_OK(ctx, ctx->allocate_temp(::tensorflow::DT_FLOAT, TensorShape({std::max<int64_t>(nnz, 1), dim}),
                                             &rows));
      Tensor scratch;
      OP_REQUIRES_OK(ctx, ctx->allocate_temp(::tensorflow::DT_INT64, TensorShape({num_rows + 1 + nnz}), &scratch));
      if (nnz > 0) QueryOnGpu(ctx, resolved, keys.flat<K>().data(), nnz, rows.flat<float>().data(), start);
      const int rc = hps_gpu_combine_segments(rows.flat<float>().data(), nnz, dim, offsets.data(), order.data(),
                                              num_rows, combiner_, OutTypeOf<T>(), scratch.flat<int64_t>().data(),
                                              out->flat<T>().data(), ComputeStream(ctx));
      if (rc != 0)
        ThrowGpuError(rc, "combining " + std::to_string(nnz) + " rows into " + std::to_string(num_rows) +
                              " in table " + resolved.table->tag);
    });
  }

 private:
  GpuTableBinding binding_;
  int combiner_ = HPS_GPU_COMBINE_MEAN;
};

// Keys and embeddings stay in device memory; the handle names a host-side
// server, so TensorFlow keeps it on the host (with the sparse kernels'
// segment ids and row count, which the host groups).
REGISTER_KERNEL_BUILDER(Name("TfHpsLookup")
                            .Device(::tensorflow::DEVICE_GPU)
                            .HostMemory("ps_handle")
                            .TypeConstraint<int32_t>("Tkeys"),
                        GpuLookupOp<int32_t>);
REGISTER_KERNEL_BUILDER(Name("TfHpsLookup")
                            .Device(::tensorflow::DEVICE_GPU)
                            .HostMemory("ps_handle")
                            .TypeConstraint<int64_t>("Tkeys"),
                        GpuLookupOp<int64_t>);

#define TF_HPS_REGISTER_GPU_SPARSE_LOOKUP(K, S, T)            \
  REGISTER_KERNEL_BUILDER(Name("TfHpsSparseLookup")           \
                              .Device(::tensorflow::DEVICE_GPU) \
                              .HostMemory("segment_ids")      \
                              .HostMemory("num_rows")         \
                              .HostMemory("ps_handle")        \
                              .TypeConstraint<K>("Tkeys")     \
                              .TypeConstraint<S>("Tsegments") \
                              .TypeConstraint<T>("dtype"),    \
                          GpuSparseLookupOp<K, S, T>);
#define TF_HPS_REGISTER_GPU_SPARSE_LOOKUP_ALL_DTYPES(K, S)    \
  TF_HPS_REGISTER_GPU_SPARSE_LOOKUP(K, S, float)              \
  TF_HPS_REGISTER_GPU_SPARSE_LOOKUP(K, S, Eigen::half)        \
  TF_HPS_REGISTER_GPU_SPARSE_LOOKUP(K, S, ::tensorflow::bfloat16)
TF_HPS_REGISTER_GPU_SPARSE_LOOKUP_ALL_DTYPES(int32_t, int32_t)
TF_HPS_REGISTER_GPU_SPARSE_LOOKUP_ALL_DTYPES(int32_t, int64_t)
TF_HPS_REGISTER_GPU_SPARSE_LOOKUP_ALL_DTYPES(int64_t, int32_t)
TF_HPS_REGISTER_GPU_SPARSE_LOOKUP_ALL_DTYPES(int64_t, int64_t)
#undef TF_HPS_REGISTER_GPU_SPARSE_LOOKUP_ALL_DTYPES
#undef TF_HPS_REGISTER_GPU_SPARSE_LOOKUP

}  // namespace
}  // namespace tf_hps
