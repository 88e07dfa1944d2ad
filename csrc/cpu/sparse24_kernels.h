// 2:4 sparse matmul kernels on the canonical compressed format (llmkern/ops/sparse24.py):
// values [N, K/2] and meta uint8 [N, ceil(K/8)], rows contiguous. The CPU kernels read this form
// directly, so no second copy of the weight exists and nothing is repacked per call.
//
// Key fact used by every variant: kept value j of a row (slot j & 1 of group j >> 1) has its
// 2-bit position in bits 2j..2j+1 of the row's meta bit stream, so its x column is
// 4 * (j >> 1) + ((meta >> 2j) & 3).
//
// Each ISA variant lives in its own translation unit (csrc/cpu/sparse24_<isa>.cpp) compiled for
// that ISA, without torch headers; sparse24_ops.cpp picks one at run time.
#pragma once

#include <algorithm>
#include <cstdint>

namespace llmkern::sparse24 {

// x columns are zero-padded to a multiple of this, so a chunk may read past K (padded kept
// values are 0 and point at padded columns).
constexpr int64_t kKPad = 128;

enum class ValueType : int { F32 = 0, BF16 = 1, F16 = 2, I8 = 3 };

struct Args {
  const void* x;  // float kernels: fp32 [m, ldx]; int kernels: int8 [m, ldx]; ldx >= round_up(k, kKPad)
  int64_t m;
  int64_t ldx;
  const void* values;    // [n, k/2] of the value type, rows contiguous
  const uint8_t* meta;   // [n, ceil(k/8)], rows contiguous
  int64_t k;             // multiple of 4
  void* raw;             // float kernels: fp32 [m, ldr]; int kernels: int32 [m, ldr]
  int64_t ldr;
  int64_t n;             // rows of the weight (prefetching never goes past them)
  bool x_finite = false;  // float kernels: no NaN/inf in x, so pruned zeros may be multiplied
  // w8_int16_rows_*: x is int16 as two byte planes, row i's low bytes at x + 2 i ldx and high
  // bytes ldx on (for the AVX-512 VNNI kernel xor 0x80, the unsigned form vpdpbusd takes); its
  // columns [128 b, 128 b + 128) scaled by x_scale[i * ceil(k / 128) + b]
  // (int8::round_x_int16_avx2, kW8XBlock columns).
  const float* x_scale = nullptr;
};

inline int64_t meta_bytes(int64_t k) { return (k + 7) / 8; }

// raw[i, n] = sum_k x[i, k] * W[n, k] for rows n in [n0, n1), every i < m, accumulated in fp32.
void float_rows_scalar(ValueType vt, const Args& a, int64_t n0, int64_t n1);
void float_rows_avx2(ValueType vt, const Args& a, int64_t n0, int64_t n1);
void float_rows_avx512(ValueType vt, const Args& a, int64_t n0, int64_t n1);

// Same with int8 x and int8 values, exact int32 sums.
void int_rows_scalar(const Args& a, int64_t n0, int64_t n1);
void int_rows_avx2(const Args& a, int64_t n0, int64_t n1);
void int_rows_avx512(const Args& a, int64_t n0, int64_t n1);
void int_rows_avx512_vnni(const Args& a, int64_t n0, int64_t n1);  // needs AVX512_VBMI too

// Int8 values against int16 x with block scales (Args::x_scale): raw[i, n] = sum over blocks of
// x_scale * (exact int32 sum of the block), in fp32. What the dense weight-only kernel does at
// few rows on AVX2 (int8::kW8Int16Rows), for the same numerics.
void w8_int16_rows_avx2(const Args& a, int64_t n0, int64_t n1);
// The same on AVX-512 VNNI + VBMI, up to int8::kW8Int16RowsVnni rows.
void w8_int16_rows_avx512_vnni(const Args& a, int64_t n0, int64_t n1);

// Column kernels, for many x rows (compute-bound): x transposed, so that one vector holds `lanes`
// rows of one x column (kColumnLanesAvx2 or kColumnLanesAvx512) and each kept value is broadcast
// against it; only kept values are multiplied. A tile is 8 vectors of rows,
// T = column_tile_rows(lanes): tile t holds x rows [T t, T t + T) as
// xt[t * T * k + c * w + i] = x[T t + i, c], w = column_tile_width(m, t, lanes); rows past m are
// zero.
constexpr int64_t kColumnLanesAvx2 = 8, kColumnLanesAvx512 = 16;
constexpr int64_t column_tile_rows(int64_t lanes) { return 8 * lanes; }
// Rows of tile t as stored: its x rows rounded up to whole vectors.
inline int64_t column_tile_width(int64_t m, int64_t t, int64_t lanes) {
  const int64_t tile = column_tile_rows(lanes);
  return (std::min(tile, m - t * tile) + lanes - 1) / lanes * lanes;
}
// A task of the column kernels: kColumnRowBlock weight rows (sharing each x chunk while it is in
// L1) against the x tiles of kColumnGroupRows rows (for which the weight rows stay in L2).
constexpr int64_t kColumnRowBlock = 64;
constexpr int64_t kColumnGroupRows = 256;
// Fewest x rows for which the glue runs the column kernel rather than the row kernels. AVX2 (AMD
// Zen 1): 1.5-2.9x the row kernels from 16 rows, about even at 8-12. AVX-512 (Intel Xeon, fp32
// and bf16 on 2048x5632 and 384x1536): 1.0-1.1x at 16 rows (a whole 16-row vector), 1.1-1.7x
// at 24-32, 0.8-0.9x at 12.
constexpr int64_t kColumnMinRowsAvx2 = 12;
constexpr int64_t kColumnMinRowsAvx512 = 16;

struct ColumnArgs {
  const float* xt;  // tiles as above
  int64_t m;
  int64_t k;              // multiple of 4
  const void* values;     // [n, k/2] of the value type, rows contiguous
  const uint8_t* meta;    // [n, ceil(k/8)], rows contiguous
  void* raw;              // float kernels: fp32 [m, ldr]; int kernel: int32 [m, ldr]
  int64_t ldr;
};

// Tile t of fp32 x [m, k] (row stride ldx, unit column stride) into d, as above.
void column_tile_f32_avx2(const float* x, int64_t ldx, int64_t m, int64_t k, int64_t t,
                          int64_t lanes, float* d);

// raw[i, n] = sum_k x[i, k] * W[n, k] for rows n in [n0, n1) and the x rows i of tiles
// [t0, t1), fp32 sums in column order (int8 values unscaled).
void float_columns_avx2(ValueType vt, const ColumnArgs& a, int64_t n0, int64_t n1, int64_t t0,
                        int64_t t1);
void float_columns_avx512(ValueType vt, const ColumnArgs& a, int64_t n0, int64_t n1, int64_t t0,
                          int64_t t1);
// Same with int8 x (as fp32 tiles) and int8 values: exact int32 sums.
void int_columns_avx2(const ColumnArgs& a, int64_t n0, int64_t n1, int64_t t0, int64_t t1);

}  // namespace llmkern::sparse24
