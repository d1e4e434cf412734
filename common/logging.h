// File: common/logging.h
//
// spdlog set-up shared by every binary: text to stderr, or JSON lines.
#ifndef STASIS_COMMON_LOGGING_H_
#define STASIS_COMMON_LOGGING_H_

#include <spdlog/spdlog.h>

#include <string_view>

namespace stasis {

enum class LogFormat { kText, kJson };

// Configures the default logger. `level` is an spdlog level name ("info", "debug", ...);
// an unknown name keeps "info". Call once at start-up, before other threads log.
void InitLogging(LogFormat format, std::string_view level);

}  // namespace stasis

#endif  // STASIS_COMMON_LOGGING_H_
