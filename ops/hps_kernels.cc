// CPU kernels of the tf_hps ops: thin adapters from TensorFlow tensors to the
// TF-free parameter server (core/), which does the work. Core errors
// (HpsError) become absl::Status here, and so tf.errors.* in Python.
#include <mutex>
#include <string>
#include <vector>

#include "core/config.h"
#include "core/error.h"
#include "core/parameter_server.h"
#include "core/scratch.h"
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

absl::Status ToStatus(const HpsError& e) {
  const std::string message = e.what();
  switch (e.code()) {
    case ErrorCode::kInvalidArgument: return absl::InvalidArgumentError(message);
    case ErrorCode::kNotFound: return absl::NotFoundError(message);
    case ErrorCode::kFailedPrecondition: return absl::FailedPreconditionError(message);
    case ErrorCode::kUnimplemented: return absl::UnimplementedError(message);
    case ErrorCode::kResourceExhausted: return absl::ResourceExhaustedError(message);
    case ErrorCode::kUnavailable: return absl::UnavailableError(message);
    case ErrorCode::kInternal: return absl::InternalError(message);
  }
  return absl::InternalError(message);
}

// Runs fn, turning any exception into the kernel's error status.
template <class Fn>
void RunGuarded(OpKernelContext* ctx, Fn&& fn) {
  try {
    fn();
  } catch (const HpsError& e) {
    ctx->SetStatus(ToStatus(e));
  } catch (const std::bad_alloc&) {
    ctx->SetStatus(absl::ResourceExhaustedError("tf_hps: out of memory"));
  } catch (const std::exception& e) {
    ctx->SetStatus(absl::InternalError(std::string("tf_hps: ") + e.what()));
  }
}

class ParseConfigOp : public OpKernel {
 public:
  using OpKernel::OpKernel;

  void Compute(OpKernelContext* ctx) override {
    const Tensor& path = ctx->input(0);
    OP_REQUIRES(ctx, TensorShapeUtils::IsScalar(path.shape()),
                absl::InvalidArgumentError("config_file must be a scalar string"));
    RunGuarded(ctx, [&] {
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
  }

  void Compute(OpKernelContext* ctx) override {
    RunGuarded(ctx, [&] {
      std::string handle;
      {
        std::lock_guard<std::mutex> lock(mutex_);
        if (handle_.empty()) handle_ = ParameterServerRegistry::Global().GetOrCreate(config_);
        handle = handle_;
      }
      Tensor* out = nullptr;
      OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({}), &out));
      out->scalar<tensorflow::tstring>()() = handle;
    });
  }

 private:
  std::string config_;
  std::mutex mutex_;
  std::string handle_;  // set by the first successful Compute
};

template <typename K>
class LookupOp : public OpKernel {
 public:
  explicit LookupOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("model_name", &model_name_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("table_id", &table_id_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("emb_vec_size", &emb_vec_size_));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& keys = ctx->input(0);
    const Tensor& handle = ctx->input(1);
    OP_REQUIRES(ctx, ::tensorflow::TensorShapeUtils::IsScalar(handle.shape()),
                absl::InvalidArgumentError("ps_handle must be a scalar string"));
    RunGuarded(ctx, [&] {
      std::shared_ptr<const ParameterServer> server;
      const EmbeddingTable* table = nullptr;
      Resolve(handle.scalar<tensorflow::tstring>()(), &server, &table);

      TensorShape out_shape = keys.shape();
      out_shape.AddDim(emb_vec_size_);
      Tensor* out = nullptr;
      OP_REQUIRES_OK(ctx, ctx->allocate_output(0, out_shape, &out));
      const int64_t n = keys.NumElements();
      if (n == 0) return;

      const int64_t* keys64 = nullptr;
      if constexpr (std::is_same_v<K, int64_t>) {
        keys64 = keys.flat<int64_t>().data();
      } else {
        thread_local ScratchBuffer<int64_t> widened;
        const K* raw = keys.flat<K>().data();
        int64_t* wide = widened.Get(n);
        std::copy(raw, raw + n, wide);  // sign-extends int32 keys
        keys64 = wide;
      }
      auto* workers = ctx->device()->tensorflow_cpu_worker_threads()->workers;
      ParallelFor parallel_for = [workers](int64_t total, int64_t cost,
                                           const std::function<void(int64_t, int64_t)>& work) {
        workers->ParallelFor(total, cost, work);
      };
      server->Lookup(*table, keys64, n, out->flat<float>().data(), parallel_for);
    });
  }

 private:
  // Finds the server and table once per handle, checking the op's attrs
  // against the config.
  void Resolve(const std::string& handle, std::shared_ptr<const ParameterServer>* server,
               const EmbeddingTable** table) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (handle != handle_) {
      auto found = ParameterServerRegistry::Global().Find(handle);
      const EmbeddingTable& t = found->FindTable(model_name_, table_id_);
      if (t.dim != emb_vec_size_)
        ThrowInvalidArgument("emb_vec_size " + std::to_string(emb_vec_size_) + " does not match table " +
                             std::to_string(table_id_) + " ('" + t.name + "') of model '" + model_name_ +
                             "', whose embedding_vecsize_per_table is " + std::to_string(t.dim));
      if (std::is_same_v<K, int64_t> && !found->config().supportlonglong)
        ThrowInvalidArgument("keys are int64 but the config sets supportlonglong to false; pass int32 keys "
                             "or set supportlonglong to true");
      server_ = std::move(found);
      table_ = &t;
      handle_ = handle;
    }
    *server = server_;
    *table = table_;
  }

  std::string model_name_;
  int64_t table_id_ = 0;
  int64_t emb_vec_size_ = 0;
  std::mutex mutex_;
  std::string handle_;
  std::shared_ptr<const ParameterServer> server_;
  const EmbeddingTable* table_ = nullptr;
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
    RunGuarded(ctx, [&] {
      int64_t refreshed = 0;
      for (const auto& server : ParameterServerRegistry::Global().All()) refreshed += server->RefreshCaches(model_name_);
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
REGISTER_KERNEL_BUILDER(
    Name("TfHpsLookup").Device(::tensorflow::DEVICE_CPU).TypeConstraint<int32_t>("Tkeys"),
    LookupOp<int32_t>);
REGISTER_KERNEL_BUILDER(
    Name("TfHpsLookup").Device(::tensorflow::DEVICE_CPU).TypeConstraint<int64_t>("Tkeys"),
    LookupOp<int64_t>);

}  // namespace
}  // namespace tf_hps
