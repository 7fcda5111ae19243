// Helpers shared by the CPU kernels (hps_kernels.cc, _tf_hps_ops.so) and the
// GPU kernels (cuda/hps_gpu_kernels.cc, _tf_hps_ops_gpu.so): how core errors
// become TF statuses, and the checks a TfHpsLookup's attrs must pass against
// the table they name. Header-only and inline, so each library carries its
// own copy and neither depends on the other's internal symbols.
#ifndef TF_HPS_OPS_HPS_KERNEL_COMMON_H_
#define TF_HPS_OPS_HPS_KERNEL_COMMON_H_

#include <new>
#include <stdexcept>
#include <string>

#include "absl/status/status.h"
#include "base/error.h"
#include "core/config.h"
#include "core/parameter_server.h"
#include "tensorflow/core/framework/op_kernel.h"

namespace tf_hps {

// The status a core error becomes (and so the tf.errors.* class Python sees).
inline absl::Status HpsErrorToStatus(const HpsError& e) {
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

// Runs fn, turning any exception into the kernel's error status: exceptions
// must never cross into TensorFlow, which is built without expecting them.
template <class Fn>
void RunKernelGuarded(::tensorflow::OpKernelContext* ctx, Fn&& fn) {
  try {
    fn();
  } catch (const HpsError& e) {
    ctx->SetStatus(HpsErrorToStatus(e));
  } catch (const std::bad_alloc&) {
    ctx->SetStatus(absl::ResourceExhaustedError("tf_hps: out of memory"));
  } catch (const std::exception& e) {
    ctx->SetStatus(absl::InternalError(std::string("tf_hps: ") + e.what()));
  }
}

// Checks a TfHpsLookup's attrs against the table they resolve to; throws
// HpsError(kInvalidArgument) naming the mismatch and how to fix it.
inline void CheckLookupAttrs(const ParameterServer& server, const EmbeddingTable& table,
                             const std::string& model_name, int64_t table_id, int64_t emb_vec_size,
                             bool keys_are_int64) {
  if (table.dim != emb_vec_size)
    ThrowInvalidArgument("emb_vec_size " + std::to_string(emb_vec_size) + " does not match table " +
                         std::to_string(table_id) + " ('" + table.name + "') of model '" + model_name +
                         "', whose embedding_vecsize_per_table is " + std::to_string(table.dim));
  if (keys_are_int64 && !server.config().supportlonglong)
    ThrowInvalidArgument("keys are int64 but the config sets supportlonglong to false; pass int32 keys "
                         "or set supportlonglong to true");
}

}  // namespace tf_hps

#endif  // TF_HPS_OPS_HPS_KERNEL_COMMON_H_
