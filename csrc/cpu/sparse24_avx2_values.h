// The 2:4 value types as 8 fp32 lanes, for the AVX2 kernels (sparse24_avx2.cpp,
// sparse24_columns_avx2.cpp). Include only after `#pragma GCC target("avx2,fma,f16c")`; the
// anonymous namespace keeps each translation unit's copy its own.
#pragma once

#include <immintrin.h>

#include <cstdint>

namespace llmkern::sparse24 {
namespace {

// V::S is the stored type; V::load(p) widens 8 values at p.
struct F32Values {
  using S = float;
  static __m256 load(const float* p) { return _mm256_loadu_ps(p); }
};
struct Bf16Values {
  using S = uint16_t;
  static __m256 load(const uint16_t* p) {
    const __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
  }
};
struct F16Values {
  using S = uint16_t;
  static __m256 load(const uint16_t* p) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  }
};
struct I8Values {
  using S = int8_t;
  static __m256 load(const int8_t* p) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
  }
};

}  // namespace
}  // namespace llmkern::sparse24
