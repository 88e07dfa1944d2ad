// Helpers shared by the torch glue of the CUDA kernels (csrc/cuda/*_ops.cpp): built only with a
// CUDA torch (LLMKERN_WITH_CUDA). Host code only.
#pragma once

#include "torch_ops.h"

#include <cuda_runtime.h>

#include "cuda/float_type.h"

namespace llmkern {
namespace cuda {

inline FloatType float_type(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return FloatType::F32;
    case at::kHalf: return FloatType::F16;
    case at::kBFloat16: return FloatType::BF16;
    default: TORCH_CHECK(false, "llmkern cuda: unsupported dtype ", t);
  }
}

// A 2-D CUDA tensor whose rows are contiguous (any row stride), else a contiguous copy.
inline at::Tensor row_major(const at::Tensor& t) {
  TORCH_CHECK(t.dim() == 2 && t.is_cuda(), "llmkern cuda: 2-D CUDA tensor expected");
  return t.stride(1) == 1 && t.stride(0) >= t.size(1) ? t : t.contiguous();
}

// Row stride to hand a kernel (a single row's stride is arbitrary in torch; use its length).
inline int64_t row_stride(const at::Tensor& t) { return t.size(0) > 1 ? t.stride(0) : t.size(1); }

inline void check(cudaError_t err, const char* what) {
  TORCH_CHECK(err == cudaSuccess, "llmkern ", what, ": ", cudaGetErrorString(err));
}

}  // namespace cuda
}  // namespace llmkern
