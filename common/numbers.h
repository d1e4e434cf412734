// File: common/numbers.h
//
// Numbers in messages: the one decimal formatter error messages and reports use.
#ifndef STASIS_COMMON_NUMBERS_H_
#define STASIS_COMMON_NUMBERS_H_

#include <concepts>
#include <string>

namespace stasis {

// `v` in decimal ("4096", "-1").
template <std::integral T>
std::string Num(T v) {
  return std::to_string(v);
}

}  // namespace stasis

#endif  // STASIS_COMMON_NUMBERS_H_
