// Minimal logging for the TF-free core: one line to stderr per message,
// prefixed so serving logs show which component spoke.
//
// One level silences it, as TensorFlow's own C++ log: TF_HPS_LOG_LEVEL if set,
// else TF_CPP_MIN_LOG_LEVEL, else 0. 0 prints everything, 1 warnings and
// errors, 2 errors, 3 nothing; the names info, warning, error and none also
// work. Read at every message, so a process may change it while it runs.
#ifndef TF_HPS_BASE_LOG_H_
#define TF_HPS_BASE_LOG_H_

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

namespace tf_hps {

enum class LogLevel { kInfo, kWarning, kError };

// The lowest level printed: 0 (info) to 3 (none).
inline int MinLogLevel() {
  const char* value = std::getenv("TF_HPS_LOG_LEVEL");
  if (value == nullptr || *value == '\0') value = std::getenv("TF_CPP_MIN_LOG_LEVEL");
  if (value == nullptr || *value == '\0') return 0;
  static const char* const kNames[] = {"info", "warning", "error", "none"};
  for (int i = 0; i < 4; ++i)
    if (std::strcmp(value, kNames[i]) == 0) return i;
  if (value[0] >= '0' && value[0] <= '9' && value[1] == '\0') return value[0] - '0';
  return 0;  // not a level: print everything rather than hide a warning
}

// One line whatever the message holds: control bytes (a newline, a terminal
// escape) in text that came from outside, such as an update message's fields,
// are written as \xNN, so they cannot forge log lines or drive the terminal.
inline std::string OneLogLine(const std::string& message) {
  std::string out;
  out.reserve(message.size());
  for (const char c : message) {
    const unsigned char ch = static_cast<unsigned char>(c);
    if (ch < 0x20 || ch == 0x7f) {
      char hex[5];
      std::snprintf(hex, sizeof(hex), "\\x%02x", ch);
      out += hex;
    } else {
      out += c;
    }
  }
  return out;
}

inline void Log(LogLevel level, const std::string& message) {
  if (static_cast<int>(level) < MinLogLevel()) return;
  static const char* const kNames[] = {"I", "W", "E"};
  std::fprintf(stderr, "[tf_hps %s] %s\n", kNames[static_cast<int>(level)], OneLogLine(message).c_str());
  std::fflush(stderr);
}

}  // namespace tf_hps

#endif  // TF_HPS_BASE_LOG_H_
