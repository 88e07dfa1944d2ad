// Torch glue of the CUDA INT8 kernels (csrc/cuda/int8.cu): built only with a CUDA torch
// (setup.py defines LLMKERN_WITH_CUDA). Arguments were validated in Python (llmkern/ops/int8.py);
// here only internal invariants are checked. The CUDA kernels of llmkern_C::int8_* (schemas in
// csrc/schemas.cpp; `weight` is the int8 [N, K] weight here), called by llmkern/cuda/int8.py.
#ifdef LLMKERN_WITH_CUDA

#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "cuda/int8.cuh"
#include "cuda/torch_glue.h"

namespace {

using llmkern::cuda::check;
using llmkern::cuda::float_type;
using llmkern::cuda::FloatType;
using llmkern::cuda::row_major;
using llmkern::cuda::row_stride;

// Dynamic per-token quantisation, or static with a one-element float32 x_scale on x's device
// (its value is read by the kernel: no host synchronisation).
std::tuple<at::Tensor, at::Tensor> quantize_per_token(const at::Tensor& x_in,
                                                      const c10::optional<at::Tensor>& x_scale) {
  const at::Tensor x = row_major(x_in);
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t m = x.size(0), k = x.size(1);
  c10::optional<at::Tensor> s;
  if (x_scale.has_value()) {
    TORCH_CHECK(x_scale->numel() == 1 && x_scale->device() == x.device(),
                "llmkern quantize cuda: x_scale must be one value on x's device");
    s = x_scale->to(at::kFloat).contiguous();
  }
  at::Tensor q = at::empty({m, k}, x.options().dtype(at::kChar));
  at::Tensor scale = at::empty({m}, x.options().dtype(at::kFloat));
  check(llmkern::cuda::quantize_per_token(
            x.const_data_ptr(), float_type(x.scalar_type()), row_stride(x), q.data_ptr<int8_t>(),
            k, scale.data_ptr<float>(), s ? s->const_data_ptr<float>() : nullptr, m, k,
            c10::cuda::getCurrentCUDAStream()),
        "quantize_per_token");
  return {q, scale};
}

c10::optional<at::Tensor> bias_f32(const c10::optional<at::Tensor>& bias, int64_t n) {
  if (!bias.has_value()) return c10::nullopt;
  TORCH_CHECK(bias->numel() == n, "llmkern int8 cuda: bias must have N elements");
  return bias->to(at::kFloat).contiguous();
}

at::Tensor w8a8_gemm(const at::Tensor& x_q_in, const at::Tensor& w_q_in, const at::Tensor& x_scale,
                     const at::Tensor& w_scale, const c10::optional<at::Tensor>& bias,
                     at::ScalarType out_dtype) {
  const at::Tensor x_q = row_major(x_q_in), w_q = row_major(w_q_in);
  const c10::cuda::CUDAGuard guard(x_q.device());
  const int64_t m = x_q.size(0), k = x_q.size(1), n = w_q.size(0);
  TORCH_CHECK(x_q.scalar_type() == at::kChar && w_q.scalar_type() == at::kChar && w_q.size(1) == k,
              "llmkern w8a8 cuda: int8 x_q [M, K] and w_q [N, K] expected");
  const at::Tensor xs = x_scale.to(at::kFloat).contiguous();
  const at::Tensor ws = w_scale.to(at::kFloat).contiguous();
  TORCH_CHECK(xs.numel() == m && ws.numel() == n, "llmkern w8a8 cuda: scales [M] and [N] expected");
  const c10::optional<at::Tensor> b = bias_f32(bias, n);
  at::Tensor out = at::empty({m, n}, x_q.options().dtype(out_dtype));
  check(llmkern::cuda::w8a8_gemm(x_q.const_data_ptr<int8_t>(), row_stride(x_q),
                                 w_q.const_data_ptr<int8_t>(), row_stride(w_q),
                                 xs.const_data_ptr<float>(), ws.const_data_ptr<float>(),
                                 b ? b->const_data_ptr<float>() : nullptr, out.data_ptr(),
                                 float_type(out_dtype), n, m, n, k,
                                 c10::cuda::getCurrentCUDAStream()),
        "w8a8_gemm");
  return out;
}

at::Tensor w8_gemm(const at::Tensor& x_in, const at::Tensor& w_q_in, const at::Tensor& w_scale,
                   const c10::optional<at::Tensor>& bias, int64_t group_size) {
  const at::Tensor x = row_major(x_in), w_q = row_major(w_q_in);
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t m = x.size(0), k = x.size(1), n = w_q.size(0);
  TORCH_CHECK(w_q.scalar_type() == at::kChar && w_q.size(1) == k && group_size >= 0,
              "llmkern w8 cuda: int8 w_q [N, K] and group_size >= 0 expected");
  const at::Tensor s = w_scale.to(at::kFloat).contiguous();
  const int64_t groups = group_size == 0 ? 1 : (k + group_size - 1) / group_size;
  TORCH_CHECK(s.numel() == n * groups, "llmkern w8 cuda: w_scale must be [N] or [N, groups]");
  const c10::optional<at::Tensor> b = bias_f32(bias, n);
  at::Tensor out = at::empty({m, n}, x.options());
  check(llmkern::cuda::w8_gemm(x.const_data_ptr(), float_type(x.scalar_type()), row_stride(x),
                               w_q.const_data_ptr<int8_t>(), row_stride(w_q),
                               s.const_data_ptr<float>(), groups, group_size,
                               b ? b->const_data_ptr<float>() : nullptr, out.data_ptr(), n, m, n,
                               k, c10::cuda::getCurrentCUDAStream()),
        "w8_gemm");
  return out;
}

// quantize_per_token (dynamic, or static with x_scale) then w8a8_gemm in x's dtype.
at::Tensor w8a8_linear(const at::Tensor& x, const at::Tensor& w_q, const at::Tensor& w_scale,
                       const c10::optional<at::Tensor>& bias,
                       const c10::optional<at::Tensor>& x_scale) {
  const auto [x_q, s] = quantize_per_token(x, x_scale);
  return w8a8_gemm(x_q, w_q, s, w_scale, bias, x.scalar_type());
}

}  // namespace

TORCH_LIBRARY_IMPL(llmkern_C, CUDA, m) {
  m.impl("int8_quantize_per_token", &quantize_per_token);
  m.impl("int8_w8a8_gemm", &w8a8_gemm);
  m.impl("int8_w8a8_linear", &w8a8_linear);
  m.impl("int8_w8_linear", &w8_gemm);
}

#endif  // LLMKERN_WITH_CUDA
