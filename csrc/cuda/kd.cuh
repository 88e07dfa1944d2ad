// Plain C++ launchers of the CUDA KD-loss row kernels (csrc/cuda/kd.cu). Numerical contract:
// llmkern/ops/kd.py (op kd_loss_rows / kd_loss_topk_rows). All pointers are device pointers;
// rows are row-major with a row stride in elements, the vocabulary dimension contiguous.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "cuda/float_type.h"

namespace llmkern {
namespace cuda {

enum class Divergence { KL, ReverseKL, JSD };

// Weights: with labels, w_kd = alpha and w_ce = 1 - alpha; without, w_kd = 1 and w_ce = 0.
// A weight of 0 skips its term (the teacher is then not read at all).
struct KdRowsParams {
  const void* student;  // [n_rows, vocab]
  FloatType student_type;
  int64_t ld_student;
  const void* teacher;  // [n_rows, >= vocab]: entries beyond vocab are ignored
  FloatType teacher_type;
  int64_t ld_teacher;
  const int64_t* labels;  // [n_rows] or nullptr
  int64_t ignore_index;
  int64_t n_rows, vocab;
  float tau, w_kd, w_ce, beta;
  Divergence divergence;
  float* row_loss;  // [n_rows]
  void* grad;       // [n_rows, vocab] in student_type (row stride ld_grad), or nullptr
  int64_t ld_grad;
};

// Sparse teacher: per row k vocabulary indices (int64, in [0, vocab)) and their
// log-probabilities (float32), both contiguous [n_rows, k]; divergence KL only.
struct KdTopkParams {
  const void* student;
  FloatType student_type;
  int64_t ld_student;
  const int64_t* topk_idx;
  const float* topk_logprobs;
  int64_t k;
  const int64_t* labels;
  int64_t ignore_index;
  int64_t n_rows, vocab;
  float tau, w_kd, w_ce;
  float* row_loss;
  void* grad;
  int64_t ld_grad;
};

cudaError_t kd_loss_rows(const KdRowsParams& params, cudaStream_t stream);
cudaError_t kd_loss_topk_rows(const KdTopkParams& params, cudaStream_t stream);

}  // namespace cuda
}  // namespace llmkern
