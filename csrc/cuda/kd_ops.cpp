// Torch glue of the CUDA KD-loss kernels (csrc/cuda/kd.cu): built only with a CUDA torch
// (setup.py defines LLMKERN_WITH_CUDA). Arguments were validated in Python (llmkern/ops/kd.py);
// here only internal invariants are checked. The CUDA kernels of llmkern_C::kd_loss_* (schemas
// in csrc/schemas.cpp), called by llmkern/cuda/kd.py.
#ifdef LLMKERN_WITH_CUDA

#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "cuda/kd.cuh"
#include "cuda/torch_glue.h"

namespace {

using llmkern::cuda::check;
using llmkern::cuda::float_type;
using llmkern::cuda::FloatType;
using llmkern::cuda::row_major;
using llmkern::cuda::row_stride;

// Contiguous int64 labels [n] or nullopt.
c10::optional<at::Tensor> labels_i64(const c10::optional<at::Tensor>& labels, int64_t n) {
  if (!labels.has_value()) return c10::nullopt;
  TORCH_CHECK(labels->numel() == n, "llmkern kd cuda: labels must be [N]");
  return labels->to(at::kLong).contiguous();
}

std::tuple<at::Tensor, at::Tensor> kd_loss_rows(const at::Tensor& student_in,
                                                const at::Tensor& teacher_in,
                                                const c10::optional<at::Tensor>& labels_in,
                                                double tau, double alpha, int64_t ignore_index,
                                                c10::string_view divergence, double beta,
                                                bool compute_grad) {
  const at::Tensor student = row_major(student_in), teacher = row_major(teacher_in);
  const c10::cuda::CUDAGuard guard(student.device());
  const int64_t n = student.size(0), v = student.size(1);
  TORCH_CHECK(teacher.size(0) == n && teacher.size(1) >= v,
              "llmkern kd cuda: teacher must be [N, V_t >= V]");
  const c10::optional<at::Tensor> labels = labels_i64(labels_in, n);
  llmkern::cuda::Divergence div;
  if (divergence == "kl") div = llmkern::cuda::Divergence::KL;
  else if (divergence == "reverse_kl") div = llmkern::cuda::Divergence::ReverseKL;
  else if (divergence == "jsd") div = llmkern::cuda::Divergence::JSD;
  else TORCH_CHECK(false, "llmkern kd cuda: unknown divergence");

  at::Tensor rows = at::empty({n}, student.options().dtype(at::kFloat));
  at::Tensor grad = at::empty({compute_grad ? n : 0, compute_grad ? v : 0}, student.options());
  llmkern::cuda::KdRowsParams p{};
  p.student = student.const_data_ptr();
  p.student_type = float_type(student.scalar_type());
  p.ld_student = row_stride(student);
  p.teacher = teacher.const_data_ptr();
  p.teacher_type = float_type(teacher.scalar_type());
  p.ld_teacher = row_stride(teacher);
  p.labels = labels ? labels->const_data_ptr<int64_t>() : nullptr;
  p.ignore_index = ignore_index;
  p.n_rows = n;
  p.vocab = v;
  p.tau = static_cast<float>(tau);
  p.w_kd = labels ? static_cast<float>(alpha) : 1.0f;
  p.w_ce = labels ? static_cast<float>(1.0 - alpha) : 0.0f;
  p.beta = static_cast<float>(beta);
  p.divergence = div;
  p.row_loss = rows.data_ptr<float>();
  p.grad = compute_grad ? grad.data_ptr() : nullptr;
  p.ld_grad = v;
  check(llmkern::cuda::kd_loss_rows(p, c10::cuda::getCurrentCUDAStream()), "kd_loss_rows");
  return {rows, grad};
}

std::tuple<at::Tensor, at::Tensor> kd_loss_topk_rows(const at::Tensor& student_in,
                                                     const at::Tensor& topk_idx,
                                                     const at::Tensor& topk_logprobs,
                                                     const c10::optional<at::Tensor>& labels_in,
                                                     double tau, double alpha,
                                                     int64_t ignore_index, bool compute_grad) {
  const at::Tensor student = row_major(student_in);
  const c10::cuda::CUDAGuard guard(student.device());
  const int64_t n = student.size(0), v = student.size(1);
  const at::Tensor idx = topk_idx.to(at::kLong).contiguous();
  const at::Tensor lp = topk_logprobs.to(at::kFloat).contiguous();
  TORCH_CHECK(idx.dim() == 2 && idx.size(0) == n && lp.sizes() == idx.sizes(),
              "llmkern kd cuda: top-k indices and log-probs [N, k] expected");
  const c10::optional<at::Tensor> labels = labels_i64(labels_in, n);

  at::Tensor rows = at::empty({n}, student.options().dtype(at::kFloat));
  at::Tensor grad = at::empty({compute_grad ? n : 0, compute_grad ? v : 0}, student.options());
  llmkern::cuda::KdTopkParams p{};
  p.student = student.const_data_ptr();
  p.student_type = float_type(student.scalar_type());
  p.ld_student = row_stride(student);
  p.topk_idx = idx.const_data_ptr<int64_t>();
  p.topk_logprobs = lp.const_data_ptr<float>();
  p.k = idx.size(1);
  p.labels = labels ? labels->const_data_ptr<int64_t>() : nullptr;
  p.ignore_index = ignore_index;
  p.n_rows = n;
  p.vocab = v;
  p.tau = static_cast<float>(tau);
  p.w_kd = labels ? static_cast<float>(alpha) : 1.0f;
  p.w_ce = labels ? static_cast<float>(1.0 - alpha) : 0.0f;
  p.row_loss = rows.data_ptr<float>();
  p.grad = compute_grad ? grad.data_ptr() : nullptr;
  p.ld_grad = v;
  check(llmkern::cuda::kd_loss_topk_rows(p, c10::cuda::getCurrentCUDAStream()),
        "kd_loss_topk_rows");
  return {rows, grad};
}

}  // namespace

TORCH_LIBRARY_IMPL(llmkern_C, CUDA, m) {
  m.impl("kd_loss_rows", &kd_loss_rows);
  m.impl("kd_loss_topk_rows", &kd_loss_topk_rows);
}

#endif  // LLMKERN_WITH_CUDA
