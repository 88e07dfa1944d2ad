// AVX-512 2:4 column kernel (sparse24_columns.h): vectors of 16 x rows, tiles of 128 rows.
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")
#include "cpu/sparse24_avx2_values.h"
#include "cpu/sparse24_columns.h"

namespace llmkern::sparse24 {
namespace {

struct Zmm {
  using T = __m512;
  static constexpr int kLanes = kColumnLanesAvx512;
  static T zero() { return _mm512_setzero_ps(); }
  static T load(const float* p) { return _mm512_loadu_ps(p); }
  static void store(float* p, T v) { _mm512_storeu_ps(p, v); }
  static T broadcast(const float* p) { return _mm512_set1_ps(*p); }
  static T fmadd(T a, T b, T c) { return _mm512_fmadd_ps(a, b, c); }
};

}  // namespace

void float_columns_avx512(ValueType vt, const ColumnArgs& a, int64_t n0, int64_t n1, int64_t t0,
                          int64_t t1) {
  float_columns<Zmm>(vt, a, n0, n1, t0, t1);
}

}  // namespace llmkern::sparse24
