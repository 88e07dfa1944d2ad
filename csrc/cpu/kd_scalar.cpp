// Portable (scalar) row kernels of the fused KD loss: one lane, libm exp/log, software
// bf16/fp16 conversion (round to nearest even). Used when the CPU lacks AVX2 and as the
// reference path of the ISA tests.
#include <cstdint>
#include <cstring>

#include "cpu/kd_kernel.h"

namespace {

using llmkern::kd::Bf16;
using llmkern::kd::Half;

inline uint32_t bits_of(float x) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  return u;
}
inline float float_of(uint32_t u) {
  float x;
  std::memcpy(&x, &u, 4);
  return x;
}

inline float half_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu, man = h & 0x3ffu;
  if (exp == 0) {  // zero or denormal: man * 2^-24
    const float f = static_cast<float>(man) * 5.9604644775390625e-8f;
    return sign ? -f : f;
  }
  if (exp == 31) return float_of(sign | 0x7f800000u | (man << 13));
  return float_of(sign | ((exp + 112u) << 23) | (man << 13));
}

inline uint16_t float_to_half(float f) {
  uint32_t x = bits_of(f);
  const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000u);
  x &= 0x7fffffffu;
  if (x >= 0x7f800000u) return sign | (x > 0x7f800000u ? 0x7e00u : 0x7c00u);  // NaN / inf
  if (x >= 0x477ff000u) return sign | 0x7c00u;  // rounds to >= 65520: overflow to inf
  if (x < 0x38800000u)  // below 2^-14: a denormal half, man = round_even(|f| 2^24)
    return sign | static_cast<uint16_t>(__builtin_rintf(float_of(x) * 16777216.0f));
  x += 0xc8000fffu + ((x >> 13) & 1u);  // rebias the exponent by -112 and round to even
  return sign | static_cast<uint16_t>(x >> 13);
}

inline uint16_t float_to_bf16(float f) {
  const uint32_t x = bits_of(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((x >> 16) | 0x40u);
  return static_cast<uint16_t>((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
}

struct Vec {
  static constexpr int W = 1;
  using T = float;
  using M = bool;

  static T set1(float x) { return x; }
  static M gt(T a, T b) { return a > b; }
  static T select(M m, T a, T b) { return m ? a : b; }
  static T vmax(T a, T b) { return a > b ? a : b; }
  static T fma(T a, T b, T c) { return a * b + c; }
  static float reduce_add(T a) { return a; }
  static float reduce_max(T a) { return a; }
  static T exp(T x) { return __builtin_expf(x); }
  static T log(T x) { return __builtin_logf(x); }

  static T load(const float* p) { return *p; }
  static T load(const Bf16* p) { return float_of(static_cast<uint32_t>(p->bits) << 16); }
  static T load(const Half* p) { return half_to_float(p->bits); }
  template <class S>
  static T load_n(const S* p, int64_t, float) { return load(p); }
  static void store(float* p, T x) { *p = x; }
  static void store(Bf16* p, T x) { p->bits = float_to_bf16(x); }
  static void store(Half* p, T x) { p->bits = float_to_half(x); }
  template <class S>
  static void store_n(S* p, T x, int64_t) { store(p, x); }
};

}  // namespace

#include "cpu/kd_row_impl.h"

const llmkern::kd::RowKernels llmkern::kd::kRowKernelsScalar = kKernels;
