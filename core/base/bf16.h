// bfloat16 <-> float32 scalar conversions: round to nearest even, NaN stays
// NaN (quieted), values past the largest bf16 round to infinity. The one
// implementation for shards, collectives and the bf16 encoder. Header-only.
#pragma once

#include <cstdint>
#include <cstring>

namespace sae {

inline float BF16ToFloat(uint16_t v) {
  const uint32_t u = static_cast<uint32_t>(v) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

inline uint16_t FloatToBF16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x0040u);  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

// f rounded to the nearest bfloat16 value, kept in float32.
inline float RoundToBF16(float f) { return BF16ToFloat(FloatToBF16(f)); }

}  // namespace sae
