// Errors raised by the TF-free core.
//
// The core (config, table files, storage, lookup session) never includes
// TensorFlow headers, so it reports failures as C++ exceptions carrying a
// status code. The op kernels catch them at the boundary and turn them into
// absl::Status values, which TensorFlow raises in Python as
// tf.errors.InvalidArgumentError, tf.errors.NotFoundError and so on.
#ifndef TF_HPS_BASE_ERROR_H_
#define TF_HPS_BASE_ERROR_H_

#include <stdexcept>
#include <string>

namespace tf_hps {

enum class ErrorCode {
  kInvalidArgument,     // bad config value, bad key dtype, bad table id
  kNotFound,            // missing config file or table file, unknown model
  kFailedPrecondition,  // state does not allow the call
  kUnimplemented,       // a configured feature this build does not provide
  kResourceExhausted,   // out of memory
  kUnavailable,         // a database server cannot be reached in time
  kInternal,            // a bug or an I/O failure
};

class HpsError : public std::runtime_error {
 public:
  HpsError(ErrorCode code, const std::string& message)
      : std::runtime_error(message), code_(code) {}
  ErrorCode code() const { return code_; }

 private:
  ErrorCode code_;
};

[[noreturn]] inline void ThrowInvalidArgument(const std::string& message) {
  throw HpsError(ErrorCode::kInvalidArgument, message);
}
[[noreturn]] inline void ThrowNotFound(const std::string& message) {
  throw HpsError(ErrorCode::kNotFound, message);
}

}  // namespace tf_hps

#endif  // TF_HPS_BASE_ERROR_H_
