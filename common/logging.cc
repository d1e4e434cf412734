#include "common/logging.h"

#include <spdlog/pattern_formatter.h>
#include <spdlog/sinks/stdout_color_sinks.h>

#include <memory>
#include <string>

namespace stasis {
namespace {

// Length of the valid UTF-8 sequence at s[0], or 0 when it is not one (overlong forms,
// surrogates and code points above U+10FFFF are invalid).
size_t Utf8SequenceLength(const unsigned char* s, size_t n) {
  const unsigned char c = s[0];
  if (c < 0x80) return 1;
  size_t len;
  uint32_t min;
  uint32_t cp;
  if ((c & 0xe0) == 0xc0) {
    len = 2, min = 0x80, cp = c & 0x1f;
  } else if ((c & 0xf0) == 0xe0) {
    len = 3, min = 0x800, cp = c & 0x0f;
  } else if ((c & 0xf8) == 0xf0) {
    len = 4, min = 0x10000, cp = c & 0x07;
  } else {
    return 0;
  }
  if (n < len) return 0;
  for (size_t i = 1; i < len; ++i) {
    if ((s[i] & 0xc0) != 0x80) return 0;
    cp = (cp << 6) | (s[i] & 0x3f);
  }
  if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return 0;
  return len;
}

// %* : the message as the inside of a JSON string. Quotes, backslashes and control
// characters are escaped and invalid UTF-8 becomes U+FFFD, so every line stays valid JSON
// whatever is logged (paths and names from requests included).
class JsonEscapedMessage final : public spdlog::custom_flag_formatter {
 public:
  void format(const spdlog::details::log_msg& msg, const std::tm&,
              spdlog::memory_buf_t& dest) override {
    const auto* s = reinterpret_cast<const unsigned char*>(msg.payload.data());
    const size_t n = msg.payload.size();
    auto put = [&dest](std::string_view v) { dest.append(v.data(), v.data() + v.size()); };
    for (size_t i = 0; i < n;) {
      const unsigned char c = s[i];
      if (c == '"') {
        put("\\\"");
      } else if (c == '\\') {
        put("\\\\");
      } else if (c == '\n') {
        put("\\n");
      } else if (c == '\r') {
        put("\\r");
      } else if (c == '\t') {
        put("\\t");
      } else if (c < 0x20 || c == 0x7f) {
        static constexpr char kHex[] = "0123456789abcdef";
        const char esc[6] = {'\\', 'u', '0', '0', kHex[c >> 4], kHex[c & 0xf]};
        put(std::string_view(esc, 6));
      } else if (c >= 0x80) {
        const size_t len = Utf8SequenceLength(s + i, n - i);
        if (len == 0) {
          put("\\ufffd");
          ++i;
          continue;
        }
        put(std::string_view(reinterpret_cast<const char*>(s + i), len));
        i += len;
        continue;
      } else {
        dest.push_back(static_cast<char>(c));
      }
      ++i;
    }
  }
  std::unique_ptr<custom_flag_formatter> clone() const override {
    return std::make_unique<JsonEscapedMessage>();
  }
};

}  // namespace

void InitLogging(LogFormat format, std::string_view level) {
  auto logger = spdlog::stderr_color_mt("stasis");
  if (format == LogFormat::kJson) {
    auto formatter = std::make_unique<spdlog::pattern_formatter>();
    formatter->add_flag<JsonEscapedMessage>('*').set_pattern(
        R"({"time":"%Y-%m-%dT%H:%M:%S.%e%z","level":"%l","msg":"%*"})");
    logger->set_formatter(std::move(formatter));
  } else {
    logger->set_pattern("%Y-%m-%d %H:%M:%S.%e %^%l%$ %v");
  }
  auto lvl = spdlog::level::from_str(std::string(level));
  logger->set_level(lvl == spdlog::level::off && level != "off" ? spdlog::level::info : lvl);
  spdlog::set_default_logger(logger);
}

}  // namespace stasis
