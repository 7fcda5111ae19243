// Minimal logging for the TF-free core: one line to stderr per message,
// prefixed so serving logs show which component spoke.
#ifndef TF_HPS_CORE_LOG_H_
#define TF_HPS_CORE_LOG_H_

#include <cstdio>
#include <string>

namespace tf_hps {

enum class LogLevel { kInfo, kWarning, kError };

inline void Log(LogLevel level, const std::string& message) {
  static const char* const kNames[] = {"I", "W", "E"};
  std::fprintf(stderr, "[tf_hps %s] %s\n", kNames[static_cast<int>(level)],
               message.c_str());
  std::fflush(stderr);
}

}  // namespace tf_hps

#endif  // TF_HPS_CORE_LOG_H_
