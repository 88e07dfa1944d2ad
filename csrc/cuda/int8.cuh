// Plain C++ launchers of the CUDA INT8 kernels (csrc/cuda/int8.cu). Matrices are row-major with
// a row stride in elements (`ld_*`), the last dimension contiguous; all pointers are device
// pointers; every launcher enqueues on `stream` and returns the launch status. The numerical
// contract is the one of llmkern/ops/int8.py.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "cuda/float_type.h"

namespace llmkern {
namespace cuda {

// x [M, K] (type x_type) -> q int8 [M, K] (row stride ld_q), scale float32 [M]: per token, or
// with `static_scale` (one float32 in device memory, or nullptr) static per-tensor
// quantisation q = clamp(rint(x * (1 / s)), -127, 127), scale[m] = s.
cudaError_t quantize_per_token(const void* x, FloatType x_type, int64_t ld_x, int8_t* q,
                               int64_t ld_q, float* scale, const float* static_scale, int64_t M,
                               int64_t K, cudaStream_t stream);

// out [M, N] (out_type) = (float(x_q @ w_q.T) * x_scale[m]) * w_scale[n] + bias[n];
// x_q int8 [M, K], w_q int8 [N, K], bias float32 [N] or nullptr. Requires K <= 2^17.
cudaError_t w8a8_gemm(const int8_t* x_q, int64_t ld_x, const int8_t* w_q, int64_t ld_w,
                      const float* x_scale, const float* w_scale, const float* bias, void* out,
                      FloatType out_type, int64_t ld_out, int64_t M, int64_t N, int64_t K,
                      cudaStream_t stream);

// out [M, N] (type x_type) = x @ (w_q * scale).T + bias, float32 accumulation; x [M, K] of
// x_type, w_q int8 [N, K]; scale float32 [N] when group_size == 0, else [N, ceil(K / group_size)]
// with row stride ld_scale; bias float32 [N] or nullptr.
cudaError_t w8_gemm(const void* x, FloatType x_type, int64_t ld_x, const int8_t* w_q,
                    int64_t ld_w, const float* scale, int64_t ld_scale, int64_t group_size,
                    const float* bias, void* out, int64_t ld_out, int64_t M, int64_t N, int64_t K,
                    cudaStream_t stream);

}  // namespace cuda
}  // namespace llmkern
