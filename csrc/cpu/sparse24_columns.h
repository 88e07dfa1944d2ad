// The 2:4 column kernels for many x rows (layout and dispatch: sparse24_kernels.h), generic over
// the vector: Vec::kLanes x rows of one x column per vector; each kept weight value is broadcast
// and multiplied with the vectors of its column, so the pruned half of the multiply-adds never
// happens and nothing is permuted. A register tile is one weight row against one x tile
// (8 vectors of rows); each FMA takes its x vector straight from L1, so the kernel runs at the
// core's vector load rate: R + 1 loads (R vectors of x, one broadcast) per R FMAs. W8A8 runs the
// same kernel on int8 x and values as fp32, exactly (kExactCols).
//
// On an Intel Xeon (AVX-512, two 64-byte loads a cycle), one thread: the inner loop alone, all
// in L1, does 4.1 zmm FMAs per ns; the whole kernel 3.0-3.6 (the x chunk and the row sums share
// L1, and every chunk of a weight row loads and stores its sums); torch's dense fp32 GEMM
// 5.0-5.8, for twice the FMAs.
//
// Included by sparse24_columns_<isa>.cpp after its `#pragma GCC target`, after
// sparse24_avx2_values.h (the value widening, 8 at a time, also used under AVX-512); the
// anonymous namespace keeps each translation unit's copy its own.
#pragma once

#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>
#include <type_traits>

#include "cpu/sparse24_kernels.h"

namespace llmkern::sparse24 {
namespace {

constexpr int kChunkCols = 64;  // x columns per chunk: 32 kept values, 64 meta bits
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

// y[0 .. R lanes) (+)= sum over the chunk's kept values j of v[j] * x column c(j), where column c
// of the chunk is xt[c * R lanes ...], summed in column order. Count is kChunkKept, or fewer for
// K's last chunk. (One weight row at a time: two or more rows interleaved, for more independent
// accumulators when a tile has few vectors, measured no faster.)
template <class Vec, int R, int Count>
inline void chunk(const float* __restrict xt, const float* __restrict v, uint64_t mw,
                  float* __restrict y, bool first, int count = Count) {
  constexpr int kL = Vec::kLanes;
  typename Vec::T acc[R];
  for (int r = 0; r < R; ++r) acc[r] = first ? Vec::zero() : Vec::load(y + kL * r);
  auto kept = [&](int j) {
    // Column 4 (j >> 1) + its 2-bit position. The position's byte offset is made opaque to the
    // compiler, so that the loads address [pointer + constant]: an indexed address would split
    // each FMA into two uops at rename (5-6% slower at 4 vectors, 8-9% at 8, L1-hot).
    const char* p = reinterpret_cast<const char*>(xt) + ((mw >> (2 * j)) & 3) * (kL * R * 4);
    asm("" : "+r"(p));
    const float* xc = reinterpret_cast<const float*>(p) + 4 * (j >> 1) * (kL * R);
    const typename Vec::T w = Vec::broadcast(v + j);
    for (int r = 0; r < R; ++r) acc[r] = Vec::fmadd(w, Vec::load(xc + kL * r), acc[r]);
  };
  if constexpr (Count > 0) {
#pragma GCC unroll 32
    for (int j = 0; j < Count; ++j) kept(j);
  } else {
    for (int j = 0; j < count; ++j) kept(j);
  }
  for (int r = 0; r < R; ++r) Vec::store(y + kL * r, acc[r]);
}

// Chunk c0 (columns c0 .. c0 + 63) of one x tile (R vectors of rows, xt) against weight rows
// [n0, n1): y[(n - n0) * width + i] (+)= row n's sum over the chunk for tile row i. next: the x
// columns wanted after this chunk (nullptr: none), fetched into L1 over the chunk's rows.
template <class Vec, class V, int R>
void chunk_rows(const ColumnArgs& a, const float* xt, int64_t c0, const float* next, bool first,
                int64_t n0, int64_t n1, float* y) {
  constexpr int64_t kWidth = Vec::kLanes * R;
  constexpr int kValueBytes = sizeof(typename V::S);
  constexpr int64_t kAhead = 4;  // weight rows
  const int64_t half = a.k / 2, mbytes = meta_bytes(a.k);
  const float* xc = xt + c0 * kWidth;
  const int count = static_cast<int>(std::min<int64_t>(kChunkCols, a.k - c0) / 2);
  alignas(32) float buf[kChunkKept];
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
      chunk<Vec, R, kChunkKept>(xc, v, mw, yn, first);
    } else {  // K's last chunk: only its own meta bytes exist
      uint64_t mw = 0;
      std::memcpy(&mw, mrow, mbytes - c0 / 8);
      chunk<Vec, R, 0>(xc, v, mw, yn, first, count);
    }
  }
}

// Exact int sums (int8 x and values): fp32 sums of at most this many columns (1024 products of
// magnitude <= 2^14) are integers of magnitude <= 2^24, so exact; they are added up in int32.
constexpr int64_t kExactCols = 2048;
// Columns per pass over a task's x tiles: the x rows of a tile group (kColumnGroupRows) over
// this many columns, 1 MB in fp32, stay in L2 with the weight rows' share (136 KB in fp32)
// while every weight row of the task goes over them.
constexpr int64_t kColumnKBlock = 1024;
static_assert(kExactCols % kColumnKBlock == 0, "exact flushes fall at pass ends");

// Columns [c_begin, c_end) (whole chunks, or up to K) of one x tile (R vectors of rows, xt)
// against weight rows [n0, n1), into y as chunk_rows. With yi (exact int sums), y's fp32 sums
// are flushed into yi at every kExactCols columns and at K. next: the x columns wanted after
// c_end (nullptr: none).
template <class Vec, class V, int R>
void tile_columns(const ColumnArgs& a, const float* xt, int64_t c_begin, int64_t c_end,
                  const float* next, int64_t n0, int64_t n1, float* y, int32_t* yi) {
  constexpr int64_t kWidth = Vec::kLanes * R;
  for (int64_t c0 = c_begin; c0 < c_end; c0 += kChunkCols) {
    const bool first = yi ? c0 % kExactCols == 0 : c0 == 0;
    const float* after = c0 + kChunkCols < c_end ? xt + (c0 + kChunkCols) * kWidth : next;
    chunk_rows<Vec, V, R>(a, xt, c0, after, first, n0, n1, y);
  }
  if (!yi || (c_end % kExactCols != 0 && c_end != a.k)) return;
  const bool add = (c_end - 1) / kExactCols > 0;  // not the first exact block
  for (int64_t j = 0; j < (n1 - n0) * kWidth; j += 8) {
    __m256i s = _mm256_cvtps_epi32(_mm256_loadu_ps(y + j));
    if (add) s = _mm256_add_epi32(s, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(yi + j)));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(yi + j), s);
  }
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

// A tile's sums y (as 32-bit patterns: fp32, or int32 from exact sums) for weight rows
// [n0, n1) into raw.
template <class Vec, int R>
void store_tile(const ColumnArgs& a, int64_t t, int64_t n0, int64_t n1, const float* y) {
  constexpr int64_t kWidth = Vec::kLanes * R;
  float* raw = static_cast<float*>(a.raw);
  const int64_t m0 = t * column_tile_rows(Vec::kLanes);
  const int64_t rows = std::min<int64_t>(kWidth, a.m - m0);
  int64_t n = n0;
  if (rows == kWidth) {  // x rows outer: each output line is finished while it is in L1
    const int64_t n8 = n0 + (n1 - n0) / 8 * 8;
    for (int64_t i = 0; i < rows; i += 8)
      for (int64_t j = n0; j < n8; j += 8)
        transpose_8x8(y + (j - n0) * kWidth + i, kWidth, raw + (m0 + i) * a.ldr + j, a.ldr);
    n = n8;
  }
  for (; n < n1; ++n)
    for (int64_t i = 0; i < rows; ++i) raw[(m0 + i) * a.ldr + n] = y[(n - n0) * kWidth + i];
}

// f(std::integral_constant<int, R>) for R = r, 1 <= r <= RMax.
template <int RMax, class F>
void with_vectors(int r, const F& f) {
  if constexpr (RMax > 1) {
    if (r < RMax) return with_vectors<RMax - 1>(r, f);
  }
  f(std::integral_constant<int, RMax>{});
}

// Weight rows [n0, n1) against x tiles [t0, t1) (at most kColumnGroupRows rows): per block of
// kColumnRowBlock weight rows, kColumnKBlock columns at a time over all the tiles.
template <class Vec, class V, bool Exact = false>
void run_columns(const ColumnArgs& a, int64_t n0, int64_t n1, int64_t t0, int64_t t1) {
  constexpr int64_t kTile = column_tile_rows(Vec::kLanes), kBlockSums = kColumnRowBlock * kTile;
  // Uninitialised: every sum is written first (chunk_rows with `first`, tile_columns' flush).
  const std::unique_ptr<float[]> sums(new float[(t1 - t0) * kBlockSums]);
  const std::unique_ptr<int32_t[]> exact(new int32_t[Exact ? (t1 - t0) * kBlockSums : 1]);
  auto tile_x = [&](int64_t t, int64_t c) {
    return a.xt + t * kTile * a.k + c * column_tile_width(a.m, t, Vec::kLanes);
  };
  auto vectors = [&](int64_t t) {
    return static_cast<int>(column_tile_width(a.m, t, Vec::kLanes) / Vec::kLanes);
  };
  for (int64_t nb = n0; nb < n1; nb += kColumnRowBlock) {
    const int64_t ne = std::min(n1, nb + kColumnRowBlock);
    for (int64_t c = 0; c < a.k; c += kColumnKBlock) {
      const int64_t c_end = std::min(a.k, c + kColumnKBlock);
      for (int64_t t = t0; t < t1; ++t) {
        const float* next = t + 1 < t1    ? tile_x(t + 1, c)
                            : c_end < a.k ? tile_x(t0, c_end)
                                          : nullptr;
        float* y = sums.get() + (t - t0) * kBlockSums;
        int32_t* yi = Exact ? exact.get() + (t - t0) * kBlockSums : nullptr;
        with_vectors<kTile / Vec::kLanes>(vectors(t), [&](auto rc) {
          tile_columns<Vec, V, rc.value>(a, tile_x(t, 0), c, c_end, next, nb, ne, y, yi);
        });
      }
    }
    for (int64_t t = t0; t < t1; ++t) {
      const float* y = Exact ? reinterpret_cast<const float*>(exact.get() + (t - t0) * kBlockSums)
                             : sums.get() + (t - t0) * kBlockSums;
      with_vectors<kTile / Vec::kLanes>(vectors(t), [&](auto rc) {
        store_tile<Vec, rc.value>(a, t, nb, ne, y);
      });
    }
  }
}

template <class Vec>
void float_columns(ValueType vt, const ColumnArgs& a, int64_t n0, int64_t n1, int64_t t0,
                   int64_t t1) {
  switch (vt) {
    case ValueType::F32: run_columns<Vec, F32Values>(a, n0, n1, t0, t1); break;
    case ValueType::BF16: run_columns<Vec, Bf16Values>(a, n0, n1, t0, t1); break;
    case ValueType::F16: run_columns<Vec, F16Values>(a, n0, n1, t0, t1); break;
    case ValueType::I8: run_columns<Vec, I8Values>(a, n0, n1, t0, t1); break;
  }
}

}  // namespace
}  // namespace llmkern::sparse24
