// Minimal leveled logging to stderr with a UTC timestamp. Thread-safe (one
// write per line). Level from SAE_LOG_LEVEL (debug|info|warn|error) or SetLogLevel.
#pragma once

#include <sstream>
#include <string>

namespace sae {

enum class LogLevel { kDebug = 0, kInfo = 1, kWarn = 2, kError = 3 };

void SetLogLevel(LogLevel level);
LogLevel GetLogLevel();
void LogLine(LogLevel level, const std::string& message);

namespace internal {
class LogMessage {
 public:
  explicit LogMessage(LogLevel level) : level_(level) {}
  ~LogMessage() { LogLine(level_, stream_.str()); }
  std::ostringstream& stream() { return stream_; }

 private:
  LogLevel level_;
  std::ostringstream stream_;
};
}  // namespace internal
}  // namespace sae

#define SAE_LOG(level)                                 \
  if (::sae::LogLevel::level < ::sae::GetLogLevel()) { \
  } else                                               \
    ::sae::internal::LogMessage(::sae::LogLevel::level).stream()
