#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,fma,f16c")
// AVX-512 row kernels of the fused KD loss: 16 float32 lanes; bf16/fp16 converted in registers.
// GCC 12's own intrinsics (_mm512_getexp_ps, masked ops, ...) start from an "undefined" vector
// that -Wuninitialized reports once inlined; the lanes are fully overwritten.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <cstdint>

#include "cpu/kd_kernel.h"

namespace {

using llmkern::kd::Bf16;
using llmkern::kd::Half;

struct Vec {
  static constexpr int W = 16;
  using T = __m512;
  using M = __mmask16;

  static T set1(float x) { return _mm512_set1_ps(x); }
  static M gt(T a, T b) { return _mm512_cmp_ps_mask(a, b, _CMP_GT_OQ); }
  static T select(M m, T a, T b) { return _mm512_mask_blend_ps(m, b, a); }
  static T vmax(T a, T b) { return _mm512_max_ps(a, b); }
  static T fma(T a, T b, T c) { return _mm512_fmadd_ps(a, b, c); }
  static float reduce_add(T a) { return _mm512_reduce_add_ps(a); }
  static float reduce_max(T a) { return _mm512_reduce_max_ps(a); }

  // exp: Cephes-style range reduction x = n ln2 + r, |r| <= ln2/2, degree-6 polynomial, 2^n by
  // scalef. Relative error <= 2 ulp for x in [-87.3, 88.3] (tests/cpu/test_kd.py); 0 below
  // -87.3 (no denormals) and for -inf; NaN propagates.
  static T exp(T x) {
    const M under = _mm512_cmp_ps_mask(x, set1(-87.33654f), _CMP_LT_OQ);
    x = _mm512_min_ps(set1(88.3762626f), _mm512_max_ps(set1(-87.33654f), x));
    const T n = _mm512_roundscale_ps(_mm512_mul_ps(x, set1(1.44269504088896341f)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    T r = _mm512_fnmadd_ps(n, set1(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, set1(-2.12194440e-4f), r);
    T p = set1(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, set1(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, set1(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, set1(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, set1(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, set1(5.0000001201e-1f));
    p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, set1(1.0f)));
    return _mm512_maskz_mov_ps(static_cast<M>(~under), _mm512_scalef_ps(p, n));
  }

  // log: x = m 2^e with m in [sqrt(1/2), sqrt(2)), log m = 2 atanh((m-1)/(m+1)) as an odd series
  // to t^9.
  // Error <= 4e-7 max(1, |log x|) (tests/cpu/test_kd.py); log 0 = -inf.
  static T log(T x) {
    T e = _mm512_getexp_ps(x);
    T m = _mm512_getmant_ps(x, _MM_MANT_NORM_1_2, _MM_MANT_SIGN_zero);
    const M big = _mm512_cmp_ps_mask(m, set1(1.41421356f), _CMP_GT_OQ);
    m = _mm512_mask_mul_ps(m, big, m, set1(0.5f));
    e = _mm512_mask_add_ps(e, big, e, set1(1.0f));
    const T t = _mm512_div_ps(_mm512_sub_ps(m, set1(1.0f)), _mm512_add_ps(m, set1(1.0f)));
    const T t2 = _mm512_mul_ps(t, t);
    T s = set1(1.0f / 9.0f);
    s = _mm512_fmadd_ps(s, t2, set1(1.0f / 7.0f));
    s = _mm512_fmadd_ps(s, t2, set1(1.0f / 5.0f));
    s = _mm512_fmadd_ps(s, t2, set1(1.0f / 3.0f));
    s = _mm512_fmadd_ps(s, t2, set1(1.0f));
    const T log_m = _mm512_mul_ps(_mm512_mul_ps(set1(2.0f), t), s);
    return _mm512_fmadd_ps(e, set1(0.693147180559945f), log_m);
  }

  static M first(int64_t n) { return static_cast<M>((1u << n) - 1u); }
  static T widen_bf16(__m256i h) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
  }
  // float -> bf16, round to nearest even; NaN stays a (quiet) NaN.
  static __m256i narrow_bf16(T x) {
    const __m512i bits = _mm512_castps_si512(x);
    const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
    __m512i r = _mm512_add_epi32(bits, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff)));
    r = _mm512_srli_epi32(r, 16);
    const M nan = _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q);
    r = _mm512_mask_or_epi32(r, nan, _mm512_srli_epi32(bits, 16), _mm512_set1_epi32(0x40));
    return _mm512_cvtepi32_epi16(r);
  }

  static T load(const float* p) { return _mm512_loadu_ps(p); }
  static T load(const Bf16* p) { return widen_bf16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))); }
  static T load(const Half* p) { return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))); }
  static T load_n(const float* p, int64_t n, float fill) {
    return _mm512_mask_loadu_ps(set1(fill), first(n), p);
  }
  static T load_n(const Bf16* p, int64_t n, float fill) {
    return _mm512_mask_blend_ps(first(n), set1(fill), widen_bf16(_mm256_maskz_loadu_epi16(first(n), p)));
  }
  static T load_n(const Half* p, int64_t n, float fill) {
    return _mm512_mask_blend_ps(first(n), set1(fill), _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(first(n), p)));
  }
  static void store(float* p, T x) { _mm512_storeu_ps(p, x); }
  static void store(Bf16* p, T x) { _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), narrow_bf16(x)); }
  static void store(Half* p, T x) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  }
  static void store_n(float* p, T x, int64_t n) { _mm512_mask_storeu_ps(p, first(n), x); }
  static void store_n(Bf16* p, T x, int64_t n) { _mm256_mask_storeu_epi16(p, first(n), narrow_bf16(x)); }
  static void store_n(Half* p, T x, int64_t n) {
    _mm256_mask_storeu_epi16(p, first(n), _mm512_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  }
};

}  // namespace

#include "cpu/kd_row_impl.h"

const llmkern::kd::RowKernels llmkern::kd::kRowKernelsAvx512 = kKernels;
