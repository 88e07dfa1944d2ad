// AVX2 2:4 column kernel for many x rows (layout and dispatch: sparse24_kernels.h). A vector
// holds 8 x rows of one column; each kept weight value is broadcast and multiplied with the
// vectors of its column, so the pruned half of the multiply-adds never happens and nothing is
// permuted. A register tile is one weight row against up to 64 x rows (8 accumulators); each
// FMA takes its x vector straight from L1, so loads and FMAs run about one to one. W8A8 runs the
// same kernel on int8 x and values as fp32, exactly (kExactCols).
#pragma GCC target("avx2,fma,f16c")
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "cpu/sparse24_avx2_values.h"
#include "cpu/sparse24_kernels.h"

namespace llmkern::sparse24 {
namespace {

constexpr int kChunkCols = 64;                // x columns per chunk: 32 kept values, 64 meta bits
constexpr int kChunkKept = kChunkCols / 2;

// The chunk's kept values (count <= kChunkKept, starting at value index at) as fp32: F32 rows
// are used in place, other types are widened into buf.
template <class V>
const float* chunk_values(const void* values, int64_t at, int count, float* buf) {
  using S = typename V::S;
  const S* p = static_cast<const S*>(values) + at;
  if constexpr (std::is_same_v<V, F32Values>) {
    return p;
  } else {
    int j = 0;
    for (; j + 8 <= count; j += 8) _mm256_storeu_ps(buf + j, V::load(p + j));
    if (j < count) {  // a short last chunk: its values, zero-padded to 8
      S tail[8] = {};
      std::memcpy(tail, p + j, (count - j) * sizeof(S));
      _mm256_storeu_ps(buf + j, V::load(tail));
    }
    return buf;
  }
}

// y[0 .. 8R) (+)= sum over the chunk's kept values j of v[j] * x column c(j), where column c
// of the chunk is xt[c * 8R .. c * 8R + 8R). Count is kChunkKept, or fewer for K's last chunk.
template <int R, int Count>
inline void chunk(const float* __restrict xt, const float* __restrict v, uint64_t mw,
                  float* __restrict y, bool first, int count = Count) {
  __m256 acc[R];
  for (int r = 0; r < R; ++r) acc[r] = first ? _mm256_setzero_ps() : _mm256_loadu_ps(y + 8 * r);
  auto kept = [&](int j) {
    const int c = 4 * (j >> 1) + static_cast<int>((mw >> (2 * j)) & 3);
    const float* xc = xt + c * (8 * R);
    const __m256 w = _mm256_broadcast_ss(v + j);
    for (int r = 0; r < R; ++r) acc[r] = _mm256_fmadd_ps(w, _mm256_loadu_ps(xc + 8 * r), acc[r]);
  };
  if constexpr (Count > 0) {
#pragma GCC unroll 32
    for (int j = 0; j < Count; ++j) kept(j);
  } else {
    for (int j = 0; j < count; ++j) kept(j);
  }
  for (int r = 0; r < R; ++r) _mm256_storeu_ps(y + 8 * r, acc[r]);
}

// Chunk c0 (columns c0 .. c0 + 63) of one x tile (8R rows, xt) against weight rows [n0, n1):
// y[(n - n0) * 8R + i] (+)= row n's sum over the chunk for tile row i. next: the x columns
// wanted after this chunk (nullptr: none).
template <class V, int R>
void chunk_rows(const ColumnArgs& a, const float* xt, int64_t c0, const float* next, bool first,
                int64_t n0, int64_t n1, float* y) {
  constexpr int64_t kWidth = 8 * R;
  constexpr int kValueBytes = sizeof(typename V::S);
  constexpr int64_t kAhead = 2;  // weight rows
  const int64_t half = a.k / 2, mbytes = meta_bytes(a.k);
  const float* xc = xt + c0 * kWidth;
  const int count = static_cast<int>(std::min<int64_t>(kChunkCols, a.k - c0) / 2);
  alignas(32) float buf[kChunkKept];
  // The next x columns into L1, spread over this chunk's weight rows.
  const int64_t lines = next ? kChunkCols * kWidth * 4 / 64 : 0;
  const int64_t per_row = (lines + (n1 - n0) - 1) / (n1 - n0);
  for (int64_t n = n0; n < n1; ++n) {
    for (int64_t l = (n - n0) * per_row, le = std::min(lines, l + per_row); l < le; ++l)
      _mm_prefetch(reinterpret_cast<const char*>(next) + 64 * l, _MM_HINT_T0);
    if (n + kAhead < n1) {  // rows are far apart: no hardware prefetcher follows them
      const char* vn = static_cast<const char*>(a.values) + ((n + kAhead) * half + c0 / 2) * kValueBytes;
      for (int b = 0; b < kChunkKept * kValueBytes; b += 64) _mm_prefetch(vn + b, _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(a.meta + (n + kAhead) * mbytes + c0 / 8), _MM_HINT_T0);
    }
    const uint8_t* mrow = a.meta + n * mbytes + c0 / 8;
    const float* v = chunk_values<V>(a.values, n * half + c0 / 2, count, buf);
    float* yn = y + (n - n0) * kWidth;
    if (count == kChunkKept) {
      uint64_t mw;
      std::memcpy(&mw, mrow, 8);
      chunk<R, kChunkKept>(xc, v, mw, yn, first);
    } else {  // K's last chunk: only its own meta bytes exist
      uint64_t mw = 0;
      std::memcpy(&mw, mrow, mbytes - c0 / 8);
      chunk<R, 0>(xc, v, mw, yn, first, count);
    }
  }
}

// Exact int sums (int8 x and values): fp32 sums of at most this many columns (1024 products of
// magnitude <= 2^14) are integers of magnitude <= 2^24, so exact; they are added up in int32.
constexpr int64_t kExactCols = 2048;

// One x tile against weight rows [n0, n1) over all columns, into y as chunk_rows. With yi
// (exact int sums), y's fp32 sums are flushed into yi every kExactCols columns and y ends
// holding yi's int32 bit patterns. next_xt: the tile that follows (nullptr: none).
template <class V, int R>
void tile(const ColumnArgs& a, const float* xt, const float* next_xt, int64_t n0, int64_t n1,
          float* y, int32_t* yi) {
  constexpr int64_t kWidth = 8 * R;
  const int64_t block = yi ? kExactCols : a.k;
  for (int64_t b0 = 0; b0 < a.k; b0 += block) {
    for (int64_t c0 = b0; c0 < std::min(a.k, b0 + block); c0 += kChunkCols) {
      const float* next = c0 + kChunkCols < a.k ? xt + (c0 + kChunkCols) * kWidth : next_xt;
      chunk_rows<V, R>(a, xt, c0, next, c0 == b0, n0, n1, y);
    }
    if (!yi) continue;
    for (int64_t j = 0; j < (n1 - n0) * kWidth; j += 8) {
      __m256i s = _mm256_cvtps_epi32(_mm256_loadu_ps(y + j));
      if (b0) s = _mm256_add_epi32(s, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(yi + j)));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(yi + j), s);
    }
  }
  if (yi) std::memcpy(y, yi, (n1 - n0) * kWidth * 4);
}

// dst[i * ldd + j] = src[j * lds + i] for i, j < 8: one 8x8 transpose in registers.
inline void transpose_8x8(const float* src, int64_t lds, float* dst, int64_t ldd) {
  __m256 r[8], t[8];
  for (int j = 0; j < 8; ++j) r[j] = _mm256_loadu_ps(src + j * lds);
  for (int j = 0; j < 8; j += 2) {
    t[j] = _mm256_unpacklo_ps(r[j], r[j + 1]);
    t[j + 1] = _mm256_unpackhi_ps(r[j], r[j + 1]);
  }
  for (int j = 0; j < 8; j += 4)
    for (int h = 0; h < 2; ++h) {
      r[j + h] = _mm256_shuffle_ps(t[j + h], t[j + h + 2], 0x44);
      r[j + h + 2] = _mm256_shuffle_ps(t[j + h], t[j + h + 2], 0xEE);
    }
  // r[0..3] hold columns 0-3 of rows {0,4}, {2,6}, {1,5}, {3,7}; r[4..7] columns 4-7 of the same.
  constexpr int kRow[4] = {0, 2, 1, 3};
  for (int q = 0; q < 4; ++q) {
    _mm256_storeu_ps(dst + kRow[q] * ldd, _mm256_permute2f128_ps(r[q], r[q + 4], 0x20));
    _mm256_storeu_ps(dst + (kRow[q] + 4) * ldd, _mm256_permute2f128_ps(r[q], r[q + 4], 0x31));
  }
}

// One tile's sums into raw (32-bit values, moved as fp32 bit patterns).
template <class V, int R>
void tile_into(const ColumnArgs& a, int64_t t, const float* next_xt, int64_t n0, int64_t n1,
               float* y, int32_t* yi) {
  constexpr int64_t kWidth = 8 * R;
  tile<V, R>(a, a.xt + t * kColumnTile * a.k, next_xt, n0, n1, y, yi);
  float* raw = static_cast<float*>(a.raw);
  const int64_t m0 = t * kColumnTile, rows = std::min<int64_t>(kWidth, a.m - m0);
  int64_t n = n0;
  if (rows == kWidth)
    for (; n + 8 <= n1; n += 8)
      for (int64_t i = 0; i < rows; i += 8)
        transpose_8x8(y + (n - n0) * kWidth + i, kWidth, raw + (m0 + i) * a.ldr + n, a.ldr);
  for (; n < n1; ++n)
    for (int64_t i = 0; i < rows; ++i) raw[(m0 + i) * a.ldr + n] = y[(n - n0) * kWidth + i];
}

template <class V, bool Exact = false>
void run(const ColumnArgs& a, int64_t n0, int64_t n1, int64_t t0, int64_t t1) {
  static_assert(kColumnTile == 64, "a full tile is 8 vectors of 8 rows");
  alignas(32) float y[kColumnRowBlock * kColumnTile];
  alignas(32) int32_t exact[Exact ? kColumnRowBlock * kColumnTile : 1];
  int32_t* yi = Exact ? exact : nullptr;
  for (int64_t nb = n0; nb < n1; nb += kColumnRowBlock) {
    const int64_t ne = std::min(n1, nb + kColumnRowBlock);
    for (int64_t t = t0; t < t1; ++t) {
      const float* next = t + 1 < t1 ? a.xt + (t + 1) * kColumnTile * a.k : nullptr;
      switch (column_tile_width(a.m, t) / 8) {
        case 8: tile_into<V, 8>(a, t, next, nb, ne, y, yi); break;
        case 7: tile_into<V, 7>(a, t, next, nb, ne, y, yi); break;
        case 6: tile_into<V, 6>(a, t, next, nb, ne, y, yi); break;
        case 5: tile_into<V, 5>(a, t, next, nb, ne, y, yi); break;
        case 4: tile_into<V, 4>(a, t, next, nb, ne, y, yi); break;
        case 3: tile_into<V, 3>(a, t, next, nb, ne, y, yi); break;
        case 2: tile_into<V, 2>(a, t, next, nb, ne, y, yi); break;
        default: tile_into<V, 1>(a, t, next, nb, ne, y, yi); break;
      }
    }
  }
}

}  // namespace

void column_tile_f32_avx2(const float* x, int64_t ldx, int64_t m, int64_t k, int64_t t, float* d) {
  const int64_t m0 = t * kColumnTile, w = column_tile_width(m, t);
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
  switch (vt) {
    case ValueType::F32: run<F32Values>(a, n0, n1, t0, t1); break;
    case ValueType::BF16: run<Bf16Values>(a, n0, n1, t0, t1); break;
    case ValueType::F16: run<F16Values>(a, n0, n1, t0, t1); break;
    case ValueType::I8: run<I8Values>(a, n0, n1, t0, t1); break;
  }
}

void int_columns_avx2(const ColumnArgs& a, int64_t n0, int64_t n1, int64_t t0, int64_t t1) {
  run<I8Values, true>(a, n0, n1, t0, t1);
}

}  // namespace llmkern::sparse24
