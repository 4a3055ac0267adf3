#include "core/base/logging.h"

#include <sys/time.h>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>

namespace sae {
namespace {
LogLevel LevelFromEnv() {
  const char* v = std::getenv("SAE_LOG_LEVEL");
  if (v == nullptr) return LogLevel::kInfo;
  if (std::strcmp(v, "debug") == 0) return LogLevel::kDebug;
  if (std::strcmp(v, "warn") == 0) return LogLevel::kWarn;
  if (std::strcmp(v, "error") == 0) return LogLevel::kError;
  return LogLevel::kInfo;
}
std::atomic<int>& Level() {
  static std::atomic<int> level{static_cast<int>(LevelFromEnv())};
  return level;
}
}  // namespace

void SetLogLevel(LogLevel level) { Level() = static_cast<int>(level); }
LogLevel GetLogLevel() { return static_cast<LogLevel>(Level().load()); }

void LogLine(LogLevel level, const std::string& message) {
  static const char* kNames[] = {"D", "I", "W", "E"};
  timeval tv;
  gettimeofday(&tv, nullptr);
  tm t;
  gmtime_r(&tv.tv_sec, &t);
  char stamp[32];
  std::strftime(stamp, sizeof(stamp), "%H:%M:%S", &t);
  std::string line = std::string(kNames[static_cast<int>(level)]) + " " + stamp + "." +
                     std::to_string(tv.tv_usec / 1000 + 1000).substr(1) + " " + message + "\n";
  std::fwrite(line.data(), 1, line.size(), stderr);
}

}  // namespace sae
