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

}  // namespace llmkern::sparse24
