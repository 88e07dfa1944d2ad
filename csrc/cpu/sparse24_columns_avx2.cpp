// AVX2 2:4 column kernel (sparse24_columns.h): vectors of 8 x rows, tiles of 64 rows.
#pragma GCC target("avx2,fma,f16c")
#include "cpu/sparse24_avx2_values.h"
#include "cpu/sparse24_columns.h"

namespace llmkern::sparse24 {
namespace {

struct Ymm {
  using T = __m256;
  static constexpr int kLanes = kColumnLanesAvx2;
  static T zero() { return _mm256_setzero_ps(); }
  static T load(const float* p) { return _mm256_loadu_ps(p); }
  static void store(float* p, T v) { _mm256_storeu_ps(p, v); }
  static T broadcast(const float* p) { return _mm256_broadcast_ss(p); }
  static T fmadd(T a, T b, T c) { return _mm256_fmadd_ps(a, b, c); }
};

}  // namespace

void column_tile_f32_avx2(const float* x, int64_t ldx, int64_t m, int64_t k, int64_t t,
                          int64_t lanes, float* d) {
  const int64_t m0 = t * column_tile_rows(lanes), w = column_tile_width(m, t, lanes);
  const int64_t rows = std::min(w, m - m0);
  const int64_t full = rows / 8 * 8, k8 = k / 8 * 8;
  for (int64_t c0 = 0; c0 < k8; c0 += kChunkCols)  // a chunk's columns at a time: they stay in L1
    for (int64_t i = 0; i < full; i += 8)
      for (int64_t c = c0; c < std::min(k8, c0 + kChunkCols); c += 8)
        transpose_8x8(x + (m0 + i) * ldx + c, ldx, d + c * w + i, w);
  for (int64_t i = 0; i < w; ++i) {
    const bool real = i < rows;
    for (int64_t c = i < full ? k8 : 0; c < k; ++c) d[c * w + i] = real ? x[(m0 + i) * ldx + c] : 0.f;
  }
}

void float_columns_avx2(ValueType vt, const ColumnArgs& a, int64_t n0, int64_t n1, int64_t t0,
                        int64_t t1) {
  float_columns<Ymm>(vt, a, n0, n1, t0, t1);
}

void int_columns_avx2(const ColumnArgs& a, int64_t n0, int64_t n1, int64_t t0, int64_t t1) {
  run_columns<Ymm, I8Values, true>(a, n0, n1, t0, t1);
}

}  // namespace llmkern::sparse24
