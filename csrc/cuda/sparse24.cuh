// 2:4 structured-sparse matmul kernels (CUDA, sm_80+). Plain launchers: pointers, sizes,
// strides and a stream; the torch glue is csrc/cuda/sparse24_ops.cpp.
//
// Two weight formats (llmkern/ops/sparse24.py, llmkern/cuda/sparse24.py):
// - canonical: values [n, k/2] (kept values in position order), meta uint8 [n, ceil(k/8)]
//   (4-bit code idx0 | idx1 << 2 per group of 4, even group in the low nibble);
// - mma.sp layout: the canonical form permuted into mma.sp A-fragment order, n padded to a
//   multiple of kRowPad and k to a multiple of kKPad (see llmkern/cuda/sparse24.py).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace llmkern {
namespace sparse24 {

enum class DType : int { kFloat32, kFloat16, kBFloat16, kInt8 };

constexpr int kRowPad = 128;
constexpr int kKPad = 128;

// out[m, n] = epilogue(sum_k x[m, k] * W[n, k]) with W in the mma.sp layout.
struct MmaArgs {
  const void* x;         // [m, k], row stride ldx elements; rows 16-byte aligned and zero-
                         // padded past k to a multiple of 16 bytes (read in 16-byte pieces)
  int64_t ldx;
  const void* values;    // mma.sp layout, [n_pad / 16, k_pad / tile_k, 32, *]
  const uint8_t* meta;   // mma.sp layout
  int m, n, k;           // logical sizes
  int k_pad;             // k rounded up to kKPad (n_pad is implied: n rounded up to kRowPad)
  const float* x_scale;  // [m], W8A8 only
  const float* w_scale;  // [n] or null
  const float* bias;     // [n] or null
  void* out;             // [m, n] row stride ldo
  int64_t ldo;
};

// x fp16/bf16, values of x's dtype or int8 (weight-only; widened in registers), fp32
// accumulation: out = acc * w_scale[n] + bias[n] in x's dtype (each term optional).
cudaError_t launch_mma16(DType x_dtype, DType value_dtype, const MmaArgs& args,
                         cudaStream_t stream);

// x int8, values int8 (m16n8k64 layout), exact int32 accumulation:
// out = float(acc) * x_scale[m] * w_scale[n] + bias[n], rounded step by step, in out_dtype.
cudaError_t launch_mma_s8(DType out_dtype, const MmaArgs& args, cudaStream_t stream);

// Canonical weight, CUDA cores (decode: small m; also fp32 x for any m).
struct GemvArgs {
  const void* x;         // [m, k], row stride ldx elements
  int64_t ldx;
  const void* values;    // [n, k/2] contiguous
  const uint8_t* meta;   // [n, ceil(k/8)] contiguous
  int m, n, k;
  const float* w_scale;  // [n] or null (int8 values)
  const float* bias;     // [n] or null
  void* out;             // [m, n] row stride ldo, x's dtype
  int64_t ldo;
};

// x fp32/fp16/bf16; values of x's dtype or int8. fp32 accumulation.
cudaError_t launch_gemv(DType x_dtype, DType value_dtype, const GemvArgs& args,
                        cudaStream_t stream);

}  // namespace sparse24
}  // namespace llmkern
