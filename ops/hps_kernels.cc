// CPU kernels of the tf_hps ops: thin adapters from TensorFlow tensors to the
// TF-free parameter server (core/), which does the work. Core errors
// (HpsError) become absl::Status here, and so tf.errors.* in Python.
#include <algorithm>
#include <cmath>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <type_traits>
#include <vector>

#include "base/error.h"
#include "base/log.h"
#include "base/unique_keys.h"
#include "core/config.h"
#include "core/parameter_server.h"
#include "core/scratch.h"
#include "ops/hps_kernel_common.h"
#include "ops/sparse_combine.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/tensor.h"
#include "tensorflow/core/platform/threadpool.h"

namespace tf_hps {
namespace {

using ::tensorflow::OpKernel;
using ::tensorflow::OpKernelConstruction;
using ::tensorflow::OpKernelContext;
using ::tensorflow::Tensor;
using ::tensorflow::TensorShape;

class ParseConfigOp : public OpKernel {
 public:
  using OpKernel::OpKernel;

  void Compute(OpKernelContext* ctx) override {
    const Tensor& path = ctx->input(0);
    OP_REQUIRES(ctx, TensorShapeUtils::IsScalar(path.shape()),
                absl::InvalidArgumentError("config_file must be a scalar string"));
    RunKernelGuarded(ctx, [&] {
      std::vector<std::string> warnings;
      const ParameterServerConfig config = LoadConfigFile(path.scalar<tensorflow::tstring>()(), &warnings);
      Tensor* canonical = nullptr;
      Tensor* warning_out = nullptr;
      OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({}), &canonical));
      OP_REQUIRES_OK(ctx, ctx->allocate_output(
                              1, TensorShape({static_cast<int64_t>(warnings.size())}), &warning_out));
      canonical->scalar<tensorflow::tstring>()() = ToCanonicalJson(config);
      auto flat = warning_out->flat<tensorflow::tstring>();
      for (size_t i = 0; i < warnings.size(); ++i) flat(i) = warnings[i];
    });
  }

 private:
  using TensorShapeUtils = ::tensorflow::TensorShapeUtils;
};

class InitOp : public OpKernel {
 public:
  explicit InitOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("ps_config", &config_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("ps_config_file", &config_file_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("model_name", &model_name_));
    std::string traced_in;
    OP_REQUIRES_OK(ctx, ctx->GetAttr("traced_in", &traced_in));
    traced_here_ = !traced_in.empty() && traced_in == ParameterServerRegistry::ProcessToken();
    OP_REQUIRES_OK(ctx, ctx->GetAttr("bind", &bind_));
    OP_REQUIRES(ctx, !bind_ || (!config_.empty() && !config_file_.empty()),
                absl::InvalidArgumentError("TfHpsInit with bind needs ps_config and ps_config_file"));
  }

  void Compute(OpKernelContext* ctx) override {
    RunKernelGuarded(ctx, [&] {
      std::string handle;
      {
        std::lock_guard<std::mutex> lock(mutex_);
        if (handle_.empty()) handle_ = Resolve();
        handle = handle_;
      }
      Tensor* out = nullptr;
      OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({}), &out));
      out->scalar<tensorflow::tstring>()() = handle;
    });
  }

 private:
  // Which server serves (the op's doc): throws HpsError when none can.
  std::string Resolve() const {
    ParameterServerRegistry& registry = ParameterServerRegistry::Global();
    if (bind_) {
      std::string handle = registry.GetOrCreate(config_);
      registry.Bind(config_file_, handle);
      return handle;
    }
    if (traced_here_ && !config_file_.empty()) {  // a layer of this process given a config file
      std::string bound = registry.BoundForFile(config_file_);
      if (!bound.empty()) return bound;
    } else if (!model_name_.empty()) {  // a layer without a config, or a graph from another process
      std::string bound = registry.ResolveBound(model_name_);
      if (!bound.empty()) return bound;
    }
    if (!config_.empty()) return registry.GetOrCreate(config_);
    if (!config_file_.empty()) {  // recorded when the layer's file did not exist yet: read it now
      std::vector<std::string> warnings;
      ParameterServerConfig config;
      try {
        config = LoadConfigFile(config_file_, &warnings);
      } catch (const HpsError& e) {
        throw HpsError(e.code(), "model '" + model_name_ + "': its layer's ps_config_file: " + e.what() +
                                     " (or call hps.Init(ps_config_file=...) naming the model before the first lookup)");
      }
      for (const std::string& w : warnings) Log(LogLevel::kWarning, w);
      return registry.GetOrCreate(ToCanonicalJson(config));
    }
    throw HpsError(ErrorCode::kFailedPrecondition,
                   "model '" + model_name_ +
                       "' has no config in this process: call hps.Init(ps_config_file=...) naming it before the "
                       "first lookup, or give the layer a ps_config_file");
  }

  std::string config_;
  std::string config_file_;
  std::string model_name_;
  bool traced_here_ = false;
  bool bind_ = false;
  std::mutex mutex_;
  std::string handle_;  // set by the first successful Compute
};

class ProcessTokenOp : public OpKernel {
 public:
  using OpKernel::OpKernel;

  void Compute(OpKernelContext* ctx) override {
    Tensor* out = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({}), &out));
    out->scalar<tensorflow::tstring>()() = ParameterServerRegistry::ProcessToken();
  }
};

// Binds an op's (model_name, table_id, emb_vec_size) attrs to a table of the
// parameter server behind a handle; checks them against the config once per
// handle, and the key dtype against supportlonglong.
class TableBinding {
 public:
  explicit TableBinding(OpKernelConstruction* ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("model_name", &model_name_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("table_id", &table_id_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("emb_vec_size", &emb_vec_size_));
  }
  TableBinding(std::string model_name, int64_t table_id, int64_t emb_vec_size)
      : model_name_(std::move(model_name)), table_id_(table_id), emb_vec_size_(emb_vec_size) {}

  int64_t emb_vec_size() const { return emb_vec_size_; }

  // Throws HpsError naming what does not match.
  void Resolve(const std::string& handle, bool keys_are_int64, std::shared_ptr<const ParameterServer>* server,
               const EmbeddingTable** table) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (handle != handle_) {
      auto found = ParameterServerRegistry::Global().Find(handle);
      const EmbeddingTable& t = found->FindTable(model_name_, table_id_);
      CheckLookupAttrs(*found, t, model_name_, table_id_, emb_vec_size_, /*keys_are_int64=*/false);
      server_ = std::move(found);
      table_ = &t;
      handle_ = handle;
    }
    CheckLookupAttrs(*server_, *table_, model_name_, table_id_, emb_vec_size_, keys_are_int64);
    *server = server_;
    *table = table_;
  }

 private:
  std::string model_name_;
  int64_t table_id_ = 0;
  int64_t emb_vec_size_ = 0;
  std::mutex mutex_;
  std::string handle_;
  std::shared_ptr<const ParameterServer> server_;
  const EmbeddingTable* table_ = nullptr;
};

// The keys of a tensor as int64 (int32 keys sign-extended into a per-thread buffer).
template <typename K>
const int64_t* KeysAsInt64(const Tensor& keys) {
  if constexpr (std::is_same_v<K, int64_t>) {
    return keys.flat<int64_t>().data();
  } else {
    thread_local ScratchBuffer<int64_t> widened;
    const int64_t n = keys.NumElements();
    const K* raw = keys.flat<K>().data();
    int64_t* wide = widened.Get(n);
    std::copy(raw, raw + n, wide);
    return wide;
  }
}

ParallelFor WorkerPool(OpKernelContext* ctx) {
  auto* workers = ctx->device()->tensorflow_cpu_worker_threads()->workers;
  return [workers](int64_t total, int64_t cost, const std::function<void(int64_t, int64_t)>& work) {
    workers->ParallelFor(total, cost, work);
  };
}

template <typename K>
class LookupOp : public OpKernel {
 public:
  explicit LookupOp(OpKernelConstruction* ctx) : OpKernel(ctx), binding_(ctx) {}

  void Compute(OpKernelContext* ctx) override {
    const Tensor& keys = ctx->input(0);
    const Tensor& handle = ctx->input(1);
    OP_REQUIRES(ctx, ::tensorflow::TensorShapeUtils::IsScalar(handle.shape()),
                absl::InvalidArgumentError("ps_handle must be a scalar string"));
    RunKernelGuarded(ctx, [&] {
      std::shared_ptr<const ParameterServer> server;
      const EmbeddingTable* table = nullptr;
      binding_.Resolve(handle.scalar<tensorflow::tstring>()(), std::is_same_v<K, int64_t>, &server, &table);

      TensorShape out_shape = keys.shape();
      // AddDimWithStatus: a dimension too large for the shape is an error, not an abort.
      OP_REQUIRES_OK(ctx, out_shape.AddDimWithStatus(binding_.emb_vec_size()));
      Tensor* out = nullptr;
      OP_REQUIRES_OK(ctx, ctx->allocate_output(0, out_shape, &out));
      const int64_t n = keys.NumElements();
      if (n == 0) return;
      server->NoteServedOnCpu(*table);
      server->Lookup(*table, KeysAsInt64<K>(keys), n, out->flat<float>().data(), WorkerPool(ctx));
    });
  }

 private:
  TableBinding binding_;
};

// TfHpsFusedLookup: one TfHpsLookup of each keys tensor, through ParameterServer::LookupMany.
template <typename K>
class FusedLookupOp : public OpKernel {
 public:
  explicit FusedLookupOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    std::string model_name;
    std::vector<int64_t> table_ids, dims;
    OP_REQUIRES_OK(ctx, ctx->GetAttr("model_name", &model_name));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("table_ids", &table_ids));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("emb_vec_sizes", &dims));
    int64_t n = 0;
    OP_REQUIRES_OK(ctx, ctx->GetAttr("N", &n));
    OP_REQUIRES(ctx, static_cast<int64_t>(table_ids.size()) == n && static_cast<int64_t>(dims.size()) == n,
                absl::InvalidArgumentError(
                    "TfHpsFusedLookup: table_ids and emb_vec_sizes need one entry per keys tensor (" +
                    std::to_string(n) + "), got " + std::to_string(table_ids.size()) + " and " +
                    std::to_string(dims.size())));
    for (size_t i = 0; i < table_ids.size(); ++i)
      bindings_.push_back(std::make_unique<TableBinding>(model_name, table_ids[i], dims[i]));
  }

  void Compute(OpKernelContext* ctx) override {
    const int64_t n = static_cast<int64_t>(bindings_.size());
    OP_REQUIRES(ctx, ctx->num_inputs() == n + 1,
                absl::InvalidArgumentError("TfHpsFusedLookup needs one keys tensor per table"));
    const Tensor& handle = ctx->input(n);
    OP_REQUIRES(ctx, ::tensorflow::TensorShapeUtils::IsScalar(handle.shape()),
                absl::InvalidArgumentError("ps_handle must be a scalar string"));
    RunKernelGuarded(ctx, [&] {
      std::shared_ptr<const ParameterServer> server;
      std::vector<ParameterServer::LookupPart> parts;
      parts.reserve(n);
      // int32 keys widened, one buffer per table (KeysAsInt64's is one per thread).
      std::vector<std::vector<int64_t>> widened(std::is_same_v<K, int64_t> ? 0 : n);
      for (int64_t i = 0; i < n; ++i) {
        const EmbeddingTable* table = nullptr;
        bindings_[i]->Resolve(handle.scalar<tensorflow::tstring>()(), std::is_same_v<K, int64_t>, &server, &table);
        const Tensor& keys = ctx->input(i);
        TensorShape out_shape = keys.shape();
        OP_REQUIRES_OK(ctx, out_shape.AddDimWithStatus(bindings_[i]->emb_vec_size()));
        Tensor* out = nullptr;
        OP_REQUIRES_OK(ctx, ctx->allocate_output(i, out_shape, &out));
        const int64_t count = keys.NumElements();
        if (count == 0) continue;
        server->NoteServedOnCpu(*table);
        const int64_t* wide = nullptr;
        if constexpr (std::is_same_v<K, int64_t>) {
          wide = keys.flat<int64_t>().data();
        } else {
          const K* raw = keys.flat<K>().data();
          widened[i].assign(raw, raw + count);
          wide = widened[i].data();
        }
        parts.push_back({table, wide, count, out->flat<float>().data()});
      }
      if (!parts.empty()) server->LookupMany(parts, WorkerPool(ctx));
    });
  }

 private:
  std::vector<std::unique_ptr<TableBinding>> bindings_;
};

// float32 -> the output dtype, rounding to nearest even.
template <typename T>
inline T FromFloat(float x) {
  return static_cast<T>(x);
}

// TfHpsSparseLookup: dedups the keys, looks each distinct key up once, then
// writes every output row in one pass over its keys (grouped by a stable
// counting sort on the segment ids, so the input need not be sorted and each
// row combines its keys in input order), in the order of TF's sparse segment
// kernels (sparse_combine.h).
template <typename K, typename S, typename T>
class SparseLookupOp : public OpKernel {
 public:
  explicit SparseLookupOp(OpKernelConstruction* ctx) : OpKernel(ctx), binding_(ctx) {
    std::string combiner;
    OP_REQUIRES_OK(ctx, ctx->GetAttr("combiner", &combiner));
    if (combiner == "sum") {
      combiner_ = Combiner::kSum;
    } else if (combiner == "mean") {
      combiner_ = Combiner::kMean;
    } else if (combiner == "sqrtn") {
      combiner_ = Combiner::kSqrtn;
    } else {
      ctx->CtxFailure(absl::InvalidArgumentError("combiner must be 'sum', 'mean' or 'sqrtn', got '" + combiner +
                                                 "'"));
      return;
    }
    extended_ = ctx->def().op() == "TfHpsWeightedSparseLookup";
    if (extended_) {
      OP_REQUIRES_OK(ctx, ctx->GetAttr("weighted", &weighted_));
      OP_REQUIRES_OK(ctx, ctx->GetAttr("clip", &clip_));
      int64_t lanes = 8;
      OP_REQUIRES_OK(ctx, ctx->GetAttr("lanes", &lanes));
      OP_REQUIRES(ctx, lanes == 4 || lanes == 8 || lanes == 16,
                  absl::InvalidArgumentError("lanes must be 4, 8 or 16, got " + std::to_string(lanes)));
      lanes_ = static_cast<int>(lanes);
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
    const float* weights = nullptr;
    const float* divisor_weights = nullptr;
    float max_norm = 0.0f;
    if (extended_) {
      const Tensor& w = ctx->input(4);
      const Tensor& dw = ctx->input(5);
      const Tensor& c = ctx->input(6);
      if (weighted_) {
        OP_REQUIRES(ctx, TensorShapeUtils::IsVector(w.shape()) && w.NumElements() == nnz,
                    absl::InvalidArgumentError("sp_weights must have as many values as sp_ids (the same indices): "
                                               "weights has shape " + w.shape().DebugString() + ", keys has " +
                                               std::to_string(nnz) + " values"));
        weights = w.flat<float>().data();
        if (combiner_ != Combiner::kSum) {
          OP_REQUIRES(ctx, TensorShapeUtils::IsVector(dw.shape()) && dw.NumElements() == nnz,
                      absl::InvalidArgumentError("divisor_weights has shape " + dw.shape().DebugString() +
                                                 " but keys has " + std::to_string(nnz) + " values"));
          divisor_weights = dw.flat<float>().data();
        }
      }
      if (clip_) {
        OP_REQUIRES(ctx, TensorShapeUtils::IsScalar(c.shape()),
                    absl::InvalidArgumentError("max_norm must be a scalar, got shape " + c.shape().DebugString()));
        max_norm = c.scalar<float>()();
      }
    }

    RunKernelGuarded(ctx, [&] {
      std::shared_ptr<const ParameterServer> server;
      const EmbeddingTable* table = nullptr;
      binding_.Resolve(handle.scalar<tensorflow::tstring>()(), std::is_same_v<K, int64_t>, &server, &table);
      const int64_t dim = binding_.emb_vec_size();
      // The output first: a shape too large for int64 is an error, not a crash,
      // and TF's allocator refuses a size it cannot hold before scratch grows.
      TensorShape out_shape;
      OP_REQUIRES_OK(ctx, TensorShape::BuildTensorShape({num_rows, dim}, &out_shape));
      Tensor* out = nullptr;
      OP_REQUIRES_OK(ctx, ctx->allocate_output(0, out_shape, &out));

      // Group the keys by output row: offsets (num_rows + 1), order (nnz).
      thread_local ScratchBuffer<int64_t> offsets_buffer;
      thread_local ScratchBuffer<int64_t> order_buffer;
      int64_t* offsets = offsets_buffer.Get(num_rows + 1);
      int64_t* order = order_buffer.Get(nnz);
      std::fill_n(offsets, num_rows + 1, 0);
      const S* segments = segment_ids.flat<S>().data();
      for (int64_t i = 0; i < nnz; ++i) {
        const int64_t s = static_cast<int64_t>(segments[i]);
        if (s < 0 || s >= num_rows)
          ThrowInvalidArgument("segment_ids[" + std::to_string(i) + "] = " + std::to_string(s) +
                               " is out of range [0, " + std::to_string(num_rows) +
                               "): each key's row must be below num_rows (a SparseTensor's dense_shape[0])");
        ++offsets[s + 1];
      }

      T* out_data = out->flat<T>().data();
      if (num_rows == 0) return;
      if (nnz == 0) {
        std::fill_n(out_data, num_rows * dim, FromFloat<T>(0.0f));
        return;
      }
      for (int64_t r = 0; r < num_rows; ++r) offsets[r + 1] += offsets[r];
      {
        thread_local ScratchBuffer<int64_t> cursor_buffer;
        int64_t* cursor = cursor_buffer.Get(num_rows);
        std::copy(offsets, offsets + num_rows, cursor);
        for (int64_t i = 0; i < nnz; ++i) order[cursor[static_cast<int64_t>(segments[i])]++] = i;
      }

      // Each distinct key once.
      thread_local UniqueKeys this_thread_unique;
      UniqueKeys& unique = this_thread_unique;
      Dedup(KeysAsInt64<K>(keys), nnz, &unique);
      const int64_t u = static_cast<int64_t>(unique.keys.size());
      thread_local ScratchBuffer<float> rows_buffer;
      float* rows = rows_buffer.Get(u * dim);
      const ParallelFor parallel_for = WorkerPool(ctx);
      server->NoteServedOnCpu(*table);
      server->Lookup(*table, unique.keys.data(), u, rows, parallel_for);
      if (clip_) {  // each distinct row once, as TF clips the rows of its distinct ids
        const int lanes = lanes_;
        parallel_for(u, dim * 4 + 10, [rows, dim, max_norm, lanes](int64_t begin, int64_t end) {
          for (int64_t i = begin; i < end; ++i) ClipRowLikeTf(rows + i * dim, dim, max_norm, lanes);
        });
      }

      const int64_t* index = unique.index.data();
      const Combiner combiner = combiner_;
      const int lanes = lanes_;
      const int64_t cost = (nnz / num_rows + 1) * dim * 2 + 10;
      parallel_for(num_rows, cost, [&, rows, offsets, order, index, out_data, weights, divisor_weights, lanes](
                                       int64_t begin, int64_t end) {
        // Per worker thread: the float32 row (acc) and, with weights, three more accumulators.
        thread_local ScratchBuffer<float> combine_buffer;
        float* acc = combine_buffer.Get(4 * dim);
        float* scratch = acc + dim;
        for (int64_t r = begin; r < end; ++r) {
          const int64_t* positions = order + offsets[r];
          const int64_t n = offsets[r + 1] - offsets[r];
          const auto row = [rows, positions, index, dim](int64_t k) { return rows + index[positions[k]] * dim; };
          T* dst = out_data + r * dim;
          if (weights != nullptr) {
            const auto weight = [weights, positions](int64_t k) { return weights[positions[k]]; };
            WeightedSumLikeTf(n, dim, lanes, row, weight, acc, scratch);
            if (divisor_weights != nullptr) {  // div_no_nan(sum, divisor)
              float divisor =
                  ScalarSumLikeTf(n, [divisor_weights, positions](int64_t k) { return divisor_weights[positions[k]]; });
              if (combiner == Combiner::kSqrtn) divisor = std::sqrt(divisor);
              for (int64_t d = 0; d < dim; ++d) acc[d] = divisor == 0.0f ? 0.0f : acc[d] / divisor;
            }
            for (int64_t d = 0; d < dim; ++d) dst[d] = FromFloat<T>(acc[d]);
          } else if constexpr (std::is_same_v<T, float>) {
            CombineRows(combiner, n, dim, row, dst);
          } else {  // combined in float32, rounded to the output dtype once
            CombineRows(combiner, n, dim, row, acc);
            for (int64_t d = 0; d < dim; ++d) dst[d] = FromFloat<T>(acc[d]);
          }
        }
      });
    });
  }

 private:
  TableBinding binding_;
  Combiner combiner_ = Combiner::kMean;
  bool extended_ = false;  // TfHpsWeightedSparseLookup: weights, divisor_weights and max_norm inputs
  bool weighted_ = false;
  bool clip_ = false;
  int lanes_ = 8;
};

class StatsOp : public OpKernel {
 public:
  using OpKernel::OpKernel;

  void Compute(OpKernelContext* ctx) override {
    const auto servers = ParameterServerRegistry::Global().All();
    Tensor* out = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({static_cast<int64_t>(servers.size())}), &out));
    auto flat = out->flat<tensorflow::tstring>();
    for (size_t i = 0; i < servers.size(); ++i) flat(i) = servers[i]->StatsJson();
  }
};

class RefreshOp : public OpKernel {
 public:
  explicit RefreshOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("model_name", &model_name_));
  }

  void Compute(OpKernelContext* ctx) override {
    RunKernelGuarded(ctx, [&] {
      int64_t refreshed = 0;
      const auto servers = ParameterServerRegistry::Global().All();
      if (!model_name_.empty()) {  // a model no server of the process serves is a mistake, not 0 rows
        std::set<std::string> served;
        for (const auto& server : servers)
          for (const ModelConfig& m : server->config().models) served.insert(m.model);
        if (!served.count(model_name_)) {
          std::string names;
          for (const std::string& name : served) names += (names.empty() ? "'" : ", '") + name + "'";
          ThrowInvalidArgument("refresh_cache: no parameter server in this process serves model '" + model_name_ +
                               "' (served: " + (names.empty() ? "none yet" : names) + ")");
        }
      }
      for (const auto& server : servers) refreshed += server->RefreshCaches(model_name_);
      Tensor* out = nullptr;
      OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({}), &out));
      out->scalar<int64_t>()() = refreshed;
    });
  }

 private:
  std::string model_name_;
};

REGISTER_KERNEL_BUILDER(Name("TfHpsStats").Device(::tensorflow::DEVICE_CPU), StatsOp);
REGISTER_KERNEL_BUILDER(Name("TfHpsRefresh").Device(::tensorflow::DEVICE_CPU), RefreshOp);
REGISTER_KERNEL_BUILDER(Name("TfHpsParseConfig").Device(::tensorflow::DEVICE_CPU), ParseConfigOp);
REGISTER_KERNEL_BUILDER(Name("TfHpsInit").Device(::tensorflow::DEVICE_CPU), InitOp);
REGISTER_KERNEL_BUILDER(Name("TfHpsProcessToken").Device(::tensorflow::DEVICE_CPU), ProcessTokenOp);
REGISTER_KERNEL_BUILDER(
    Name("TfHpsLookup").Device(::tensorflow::DEVICE_CPU).TypeConstraint<int32_t>("Tkeys"),
    LookupOp<int32_t>);
REGISTER_KERNEL_BUILDER(
    Name("TfHpsLookup").Device(::tensorflow::DEVICE_CPU).TypeConstraint<int64_t>("Tkeys"),
    LookupOp<int64_t>);
REGISTER_KERNEL_BUILDER(
    Name("TfHpsFusedLookup").Device(::tensorflow::DEVICE_CPU).TypeConstraint<int32_t>("Tkeys"),
    FusedLookupOp<int32_t>);
REGISTER_KERNEL_BUILDER(
    Name("TfHpsFusedLookup").Device(::tensorflow::DEVICE_CPU).TypeConstraint<int64_t>("Tkeys"),
    FusedLookupOp<int64_t>);

#define TF_HPS_REGISTER_SPARSE_LOOKUP(K, S, T)                                        \
  REGISTER_KERNEL_BUILDER(Name("TfHpsSparseLookup")                                   \
                              .Device(::tensorflow::DEVICE_CPU)                       \
                              .TypeConstraint<K>("Tkeys")                             \
                              .TypeConstraint<S>("Tsegments")                         \
                              .TypeConstraint<T>("dtype"),                            \
                          SparseLookupOp<K, S, T>);                           \
  REGISTER_KERNEL_BUILDER(Name("TfHpsWeightedSparseLookup")                           \
                              .Device(::tensorflow::DEVICE_CPU)                       \
                              .TypeConstraint<K>("Tkeys")                             \
                              .TypeConstraint<S>("Tsegments")                         \
                              .TypeConstraint<T>("dtype"),                            \
                          SparseLookupOp<K, S, T>);
#define TF_HPS_REGISTER_SPARSE_LOOKUP_ALL_DTYPES(K, S)         \
  TF_HPS_REGISTER_SPARSE_LOOKUP(K, S, float)                   \
  TF_HPS_REGISTER_SPARSE_LOOKUP(K, S, Eigen::half)             \
  TF_HPS_REGISTER_SPARSE_LOOKUP(K, S, ::tensorflow::bfloat16)
TF_HPS_REGISTER_SPARSE_LOOKUP_ALL_DTYPES(int32_t, int32_t)
TF_HPS_REGISTER_SPARSE_LOOKUP_ALL_DTYPES(int32_t, int64_t)
TF_HPS_REGISTER_SPARSE_LOOKUP_ALL_DTYPES(int64_t, int32_t)
TF_HPS_REGISTER_SPARSE_LOOKUP_ALL_DTYPES(int64_t, int64_t)
#undef TF_HPS_REGISTER_SPARSE_LOOKUP_ALL_DTYPES
#undef TF_HPS_REGISTER_SPARSE_LOOKUP

}  // namespace
}  // namespace tf_hps
