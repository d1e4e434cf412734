#include "runtime/auth.h"

#include <cstddef>

#include "runtime/http_common.h"
#include "runtime/server.h"

namespace stasis::runtime {

bool ConstantTimeEquals(std::string_view given, std::string_view expected) {
  // Runs over `expected` whatever `given` is, so the time reveals only the token's length.
  volatile unsigned char diff = given.size() != expected.size() ? 1 : 0;
  for (size_t i = 0; i < expected.size(); ++i) {
    const unsigned char g = i < given.size() ? static_cast<unsigned char>(given[i]) : 0;
    diff = diff | (g ^ static_cast<unsigned char>(expected[i]));
  }
  return diff == 0;
}

namespace internal {

bool BearerTokenMatches(std::string_view authorization, std::string_view token) {
  std::string_view v = authorization;
  if (!IEqualsPrefix(v, "Bearer ")) return false;
  v.remove_prefix(7);
  while (!v.empty() && v.front() == ' ') v.remove_prefix(1);
  while (!v.empty() && (v.back() == ' ' || v.back() == '\t')) v.remove_suffix(1);
  return ConstantTimeEquals(v, token);
}

}  // namespace internal
}  // namespace stasis::runtime
