#pragma GCC target("avx2,fma,f16c")
// AVX2 row kernels of the fused KD loss: 8 float32 lanes; bf16/fp16 converted in registers.
#include <immintrin.h>

#include <cstdint>

#include "cpu/kd_kernel.h"

namespace {

using llmkern::kd::Bf16;
using llmkern::kd::Half;

struct Vec {
  static constexpr int W = 8;
  using T = __m256;
  using M = __m256;  // all-ones / all-zeros lanes

  static T set1(float x) { return _mm256_set1_ps(x); }
  static M gt(T a, T b) { return _mm256_cmp_ps(a, b, _CMP_GT_OQ); }
  static T select(M m, T a, T b) { return _mm256_blendv_ps(b, a, m); }
  static T vmax(T a, T b) { return _mm256_max_ps(a, b); }
  static T fma(T a, T b, T c) { return _mm256_fmadd_ps(a, b, c); }
  static float reduce_add(T a) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
  static float reduce_max(T a) {
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    s = _mm_max_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }

  // exp: as the AVX-512 version (Cephes-style, degree-6 polynomial), 2^n built in the exponent
  // field. Relative error <= 2 ulp for x in [-87.3, 88]; 0 below -87.3 and for -inf.
  static T exp(T x) {
    const T under = _mm256_cmp_ps(x, set1(-87.33654f), _CMP_LT_OQ);
    x = _mm256_min_ps(set1(88.0f), _mm256_max_ps(set1(-87.33654f), x));
    const T n = _mm256_round_ps(_mm256_mul_ps(x, set1(1.44269504088896341f)),
                                _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    T r = _mm256_fnmadd_ps(n, set1(0.693359375f), x);
    r = _mm256_fnmadd_ps(n, set1(-2.12194440e-4f), r);
    T p = set1(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, set1(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, set1(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, set1(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, set1(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, set1(5.0000001201e-1f));
    p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, set1(1.0f)));
    const __m256i pow2n = _mm256_slli_epi32(
        _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_andnot_ps(under, _mm256_mul_ps(p, _mm256_castsi256_ps(pow2n)));
  }

  // log: as the AVX-512 version, exponent and mantissa taken from the bit fields (denormal
  // inputs are not supported: they only occur for probabilities that contribute nothing).
  static T log(T x) {
    const __m256i bits = _mm256_castps_si256(x);
    T e = _mm256_cvtepi32_ps(_mm256_sub_epi32(
        _mm256_and_si256(_mm256_srli_epi32(bits, 23), _mm256_set1_epi32(0xff)),
        _mm256_set1_epi32(127)));
    T m = _mm256_castsi256_ps(_mm256_or_si256(_mm256_and_si256(bits, _mm256_set1_epi32(0x7fffff)),
                                              _mm256_set1_epi32(0x3f800000)));
    const T big = _mm256_cmp_ps(m, set1(1.41421356f), _CMP_GT_OQ);
    m = _mm256_blendv_ps(m, _mm256_mul_ps(m, set1(0.5f)), big);
    e = _mm256_add_ps(e, _mm256_and_ps(big, set1(1.0f)));
    const T t = _mm256_div_ps(_mm256_sub_ps(m, set1(1.0f)), _mm256_add_ps(m, set1(1.0f)));
    const T t2 = _mm256_mul_ps(t, t);
    T s = set1(1.0f / 9.0f);
    s = _mm256_fmadd_ps(s, t2, set1(1.0f / 7.0f));
    s = _mm256_fmadd_ps(s, t2, set1(1.0f / 5.0f));
    s = _mm256_fmadd_ps(s, t2, set1(1.0f / 3.0f));
    s = _mm256_fmadd_ps(s, t2, set1(1.0f));
    const T log_m = _mm256_mul_ps(_mm256_mul_ps(set1(2.0f), t), s);
    const T y = _mm256_fmadd_ps(e, set1(0.693147180559945f), log_m);
    const T zero = _mm256_cmp_ps(x, _mm256_setzero_ps(), _CMP_EQ_OQ);
    return _mm256_blendv_ps(y, set1(-__builtin_inff()), zero);
  }

  static T widen_bf16(__m128i h) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  }
  // float -> bf16, round to nearest even; NaN stays a (quiet) NaN.
  static __m128i narrow_bf16(T x) {
    const __m256i bits = _mm256_castps_si256(x);
    const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(1));
    __m256i r = _mm256_srli_epi32(
        _mm256_add_epi32(bits, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7fff))), 16);
    const __m256i quiet = _mm256_or_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(0x40));
    r = _mm256_castps_si256(_mm256_blendv_ps(_mm256_castsi256_ps(r), _mm256_castsi256_ps(quiet),
                                             _mm256_cmp_ps(x, x, _CMP_UNORD_Q)));
    return _mm_packus_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256(r, 1));
  }
  static __m128i narrow_half(T x) {
    return _mm256_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  }
  // Lanes < n all-ones.
  static T first(int64_t n) {
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    return _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(n)), lane));
  }
  template <class S>
  static __m128i load16_n(const S* p, int64_t n) {
    uint16_t buf[W] = {0, 0, 0, 0, 0, 0, 0, 0};
    for (int64_t l = 0; l < n; ++l) buf[l] = p[l].bits;
    return _mm_loadu_si128(reinterpret_cast<const __m128i*>(buf));
  }
  template <class S>
  static void store16_n(S* p, __m128i h, int64_t n) {
    uint16_t buf[W];
    _mm_storeu_si128(reinterpret_cast<__m128i*>(buf), h);
    for (int64_t l = 0; l < n; ++l) p[l].bits = buf[l];
  }

  static T load(const float* p) { return _mm256_loadu_ps(p); }
  static T load(const Bf16* p) { return widen_bf16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }
  static T load(const Half* p) { return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }
  static T load_n(const float* p, int64_t n, float fill) {
    return _mm256_blendv_ps(set1(fill), _mm256_maskload_ps(p, _mm256_castps_si256(first(n))), first(n));
  }
  static T load_n(const Bf16* p, int64_t n, float fill) {
    return _mm256_blendv_ps(set1(fill), widen_bf16(load16_n(p, n)), first(n));
  }
  static T load_n(const Half* p, int64_t n, float fill) {
    return _mm256_blendv_ps(set1(fill), _mm256_cvtph_ps(load16_n(p, n)), first(n));
  }
  static void store(float* p, T x) { _mm256_storeu_ps(p, x); }
  static void store(Bf16* p, T x) { _mm_storeu_si128(reinterpret_cast<__m128i*>(p), narrow_bf16(x)); }
  static void store(Half* p, T x) { _mm_storeu_si128(reinterpret_cast<__m128i*>(p), narrow_half(x)); }
  static void store_n(float* p, T x, int64_t n) { _mm256_maskstore_ps(p, _mm256_castps_si256(first(n)), x); }
  static void store_n(Bf16* p, T x, int64_t n) { store16_n(p, narrow_bf16(x), n); }
  static void store_n(Half* p, T x, int64_t n) { store16_n(p, narrow_half(x), n); }
};

}  // namespace

#include "cpu/kd_row_impl.h"

const llmkern::kd::RowKernels llmkern::kd::kRowKernelsAvx2 = kKernels;
