// File: common/float16.h
//
// The one conversion between f32 and the 16-bit floats (IEEE half, bfloat16): the HTTP
// wire codec, the model generators and the benchmarks all use it, so a value converts the
// same way everywhere. To 16 bits: round to nearest, ties to even (what torch and the
// reference writers do), with subnormals, overflow to infinity, and NaN kept a quiet NaN
// of the same sign. To f32: exact.
//
// Thread safety: pure functions.
#ifndef STASIS_COMMON_FLOAT16_H_
#define STASIS_COMMON_FLOAT16_H_

#include <bit>
#include <cstdint>

namespace stasis {

// f32 → IEEE half (F. Giesen's float_to_half_fast3_rtne).
inline uint16_t FloatToHalf(float f) {
  constexpr uint32_t kF32Infinity = 255u << 23;
  constexpr uint32_t kF16Max = (127u + 16) << 23;
  constexpr uint32_t kDenormMagic = ((127u - 15) + (23 - 10) + 1) << 23;
  uint32_t x = std::bit_cast<uint32_t>(f);
  const uint32_t sign = x & 0x80000000u;
  x ^= sign;
  uint32_t out;
  if (x >= kF16Max) {
    out = x > kF32Infinity ? 0x7e00 : 0x7c00;
  } else if (x < (113u << 23)) {  // the result is subnormal or zero
    const float v = std::bit_cast<float>(x) + std::bit_cast<float>(kDenormMagic);
    out = std::bit_cast<uint32_t>(v) - kDenormMagic;
  } else {
    const uint32_t mant_odd = (x >> 13) & 1;
    x += (static_cast<uint32_t>(15 - 127) << 23) + 0xfff;
    x += mant_odd;
    out = x >> 13;
  }
  return static_cast<uint16_t>(out | (sign >> 16));
}

// IEEE half → f32.
inline float HalfToFloat(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000) << 16;
  const uint32_t exp = (h >> 10) & 0x1f;
  const uint32_t mant = h & 0x3ff;
  if (exp == 0) {
    // Zero or subnormal: mant * 2^-24, exact in f32.
    const float f = static_cast<float>(mant) * 0x1p-24f;
    return sign != 0 ? -f : f;
  }
  const uint32_t x =
      exp == 31 ? sign | 0x7f800000 | (mant << 13) : sign | ((exp - 15 + 127) << 23) | (mant << 13);
  return std::bit_cast<float>(x);
}

// f32 → bfloat16.
inline uint16_t Float32ToBf16(float f) {
  uint32_t u = std::bit_cast<uint32_t>(f);
  if ((u & 0x7fffffff) > 0x7f800000) return static_cast<uint16_t>((u >> 16) | 0x40);
  u += 0x7fff + ((u >> 16) & 1);
  return static_cast<uint16_t>(u >> 16);
}

// bfloat16 → f32.
inline float Bf16ToFloat(uint16_t h) {
  return std::bit_cast<float>(static_cast<uint32_t>(h) << 16);
}

}  // namespace stasis

#endif  // STASIS_COMMON_FLOAT16_H_
