// AVX-512 helpers shared by int8_avx512.cpp, int8_avx512_vnni.cpp and int8_amx.cpp. Include only
// from files compiled under an AVX-512 `#pragma GCC target`; everything here has internal linkage
// so each file keeps its own copy compiled for its own target.
#pragma once

#include <immintrin.h>

#include <algorithm>
#include <cstdint>

#include "cpu/int8_kernels.h"

namespace llmkern::int8 {
namespace {

constexpr int kRne = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;

// Lanes [0, count) of 16 (none for count <= 0).
inline __mmask16 tail_mask(int64_t count) {
  if (count <= 0) return 0;
  return count >= 16 ? static_cast<__mmask16>(0xffff) : static_cast<__mmask16>((1u << count) - 1);
}

// 16 floats from x (count < 16 loads only the first count, the rest are 0).
// A full mask takes a plain load: masked loads with a computed mask made the quantiser's row
// loop 2.7x slower on AMD Zen 4 (the branch is predictable: only a row's tail is partial).
template <DType D>
inline __m512 load16(const void* base, int64_t i, __mmask16 mask) {
  if constexpr (D == DType::F32) {
    const float* p = static_cast<const float*>(base) + i;
    return mask == 0xffff ? _mm512_loadu_ps(p) : _mm512_maskz_loadu_ps(mask, p);
  } else {
    const uint16_t* p = static_cast<const uint16_t*>(base) + i;
    const __m256i h = mask == 0xffff ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))
                                     : _mm256_maskz_loadu_epi16(mask, p);
    if constexpr (D == DType::BF16)
      return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    else
      return _mm512_cvtph_ps(h);
  }
}

// Round-to-nearest-even float -> bfloat16 with NaN -> 0x7FC0, as torch converts (the
// AVX512_BF16 instruction would flush denormals).
inline __m256i to_bf16(__m512 v) {
  const __m512i bits = _mm512_castps_si512(v);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
  __m512i r = _mm512_add_epi32(_mm512_add_epi32(bits, _mm512_set1_epi32(0x7fff)), lsb);
  r = _mm512_srli_epi32(r, 16);
  r = _mm512_mask_mov_epi32(r, _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), _mm512_set1_epi32(0x7fc0));
  return _mm512_cvtepi32_epi16(r);
}

inline void store16(void* base, DType dtype, int64_t i, __m512 v, __mmask16 mask) {
  switch (dtype) {
    case DType::F32: _mm512_mask_storeu_ps(static_cast<float*>(base) + i, mask, v); break;
    case DType::BF16:
      _mm256_mask_storeu_epi16(static_cast<uint16_t*>(base) + i, mask, to_bf16(v));
      break;
    case DType::F16:
      _mm256_mask_storeu_epi16(static_cast<uint16_t*>(base) + i, mask, _mm512_cvtps_ph(v, kRne));
      break;
  }
}

// The W8A8 epilogue for 16 channels from n0 of row m: acc * x_scale * w_scale + bias, in the
// reference's order (the explicit-rounding forms keep the compiler from fusing into an FMA).
inline void w8a8_epilogue16(const W8a8Args& a, int64_t m, int64_t n0, __m512i acc) {
  if (n0 >= a.n) return;
  const __mmask16 mask = tail_mask(a.n - n0);
  __m512 v = _mm512_cvtepi32_ps(acc);
  v = _mm512_mul_round_ps(v, _mm512_set1_ps(a.x_scale[m]), kRne);
  v = _mm512_mul_round_ps(v, _mm512_maskz_loadu_ps(mask, a.w_scale + n0), kRne);
  if (a.bias) v = _mm512_add_round_ps(v, _mm512_maskz_loadu_ps(mask, a.bias + n0), kRne);
  store16(a.out, a.out_dtype, m * a.ld_out + n0, v, mask);
}

// The weight-only epilogue for 16 channels from n0 of row m: v (+ bias), cast to out_dtype.
inline void w8_epilogue16(const W8Args& a, int64_t m, int64_t n0, __m512 v) {
  if (n0 >= a.n) return;
  const __mmask16 mask = tail_mask(a.n - n0);
  if (a.bias) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mask, a.bias + n0));
  store16(a.out, a.out_dtype, m * a.ld_out + n0, v, mask);
}

// acc += dot4(a as u8, b as s8) per int32 lane (AVX-512 VNNI: call only from files compiled for
// it). Inline asm ties the accumulator to one register: GCC 12 copies the intrinsic's
// destination around and spills a 6 x 4 accumulator tile.
inline void dpbusd(__m512i& acc, __m512i a, __m512i b) {
  asm("vpdpbusd %[b], %[a], %[acc]" : [acc] "+v"(acc) : [a] "v"(a), [b] "v"(b));
}

// acc += a.lo * b.lo + a.hi * b.hi per int32 lane of int16 pairs (AVX-512 VNNI vpdpwssd, which
// wraps rather than saturates), register-tied as dpbusd.
inline void dpwssd(__m512i& acc, __m512i a, __m512i b) {
  asm("vpdpwssd %[b], %[a], %[acc]" : [acc] "+v"(acc) : [a] "v"(a), [b] "v"(b));
}

}  // namespace
}  // namespace llmkern::int8
