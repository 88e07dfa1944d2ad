// Every op of the `llmkern_C` namespace, declared once for both builds. Kernels register per
// device in their glue files: TORCH_LIBRARY_IMPL(llmkern_C, CPU, m) in csrc/cpu/*_ops.cpp and
// TORCH_LIBRARY_IMPL(llmkern_C, CUDA, m) in csrc/cuda/*_ops.cpp (CUDA builds only). An op the
// CPU and the GPU both run has one name and one schema; `weight` is then the backend's prepared
// weight: the packed uint8 buffer of llmkern.cpu.int8.pack_* on CPU, the int8 [N, K] weight on
// CUDA. An op of one device only has a descriptive name and only that key's kernel (calling it
// with the other device's tensors raises torch's "could not run ... with arguments from the ...
// backend").
//
// Argument order follows the public ops (llmkern/ops): x first, then the weight, its scales,
// bias, then the options.
#include <torch/library.h>

namespace {

constexpr const char* kSchemas[] = {
    // int8 (csrc/cpu/int8_ops.cpp, csrc/cuda/int8_ops.cpp)
    "int8_quantize_per_token(Tensor x, Tensor? x_scale=None) -> (Tensor, Tensor)",
    "int8_w8a8_gemm(Tensor x_q, Tensor weight, Tensor x_scale, Tensor w_scale, Tensor? bias, "
    "ScalarType out_dtype) -> Tensor",
    "int8_w8a8_linear(Tensor x, Tensor weight, Tensor w_scale, Tensor? bias, Tensor? x_scale) "
    "-> Tensor",
    "int8_w8_linear(Tensor x, Tensor weight, Tensor w_scale, Tensor? bias, int group_size) "
    "-> Tensor",
    "int8_pack_w8a8(Tensor w_q) -> Tensor",                                    // CPU only
    "int8_pack_w8(Tensor w_q, Tensor w_scale, int group_size) -> Tensor",      // CPU only
    // KD losses (csrc/cpu/kd_ops.cpp, csrc/cuda/kd_ops.cpp)
    "kd_loss_rows(Tensor student, Tensor teacher, Tensor? labels, float tau, float alpha, "
    "int ignore_index, str divergence, float beta, bool compute_grad) -> (Tensor, Tensor)",
    "kd_loss_topk_rows(Tensor student, Tensor topk_idx, Tensor topk_logprobs, Tensor? labels, "
    "float tau, float alpha, int ignore_index, bool compute_grad) -> (Tensor, Tensor)",
    "kd_vector_math(Tensor x, str fn) -> Tensor",  // CPU only
    // 2:4 sparse (csrc/cpu/sparse24_ops.cpp, csrc/cuda/sparse24_ops.cpp). sparse24_matmul reads
    // the canonical compressed weight on both devices (on CUDA: the gemv kernel).
    "sparse24_matmul(Tensor x, Tensor values, Tensor meta, Tensor? w_scale, Tensor? bias) "
    "-> Tensor",
    "sparse24_w8a8_matmul(Tensor x_q, Tensor values, Tensor meta, Tensor x_scale, "
    "Tensor w_scale, Tensor? bias, ScalarType out_dtype) -> Tensor",  // CPU only
    // CUDA only: the weight in the mma.sp layout of llmkern/cuda/sparse24.py.
    "sparse24_mma(Tensor x, Tensor values, Tensor meta, int n, int k, Tensor? w_scale, "
    "Tensor? bias) -> Tensor",
    "sparse24_mma_s8(Tensor x_q, Tensor values, Tensor meta, int n, int k, Tensor x_scale, "
    "Tensor w_scale, Tensor? bias, ScalarType out_dtype) -> Tensor",
};

}  // namespace

TORCH_LIBRARY(llmkern_C, m) {
  for (const char* schema : kSchemas) m.def(schema);
}

// None of these ops is differentiable (the KD kernels return their gradient as an output):
// autograd passes them through to the device kernel, so inputs that require grad give plain
// outputs without a warning, as the catch-all registrations before the per-device split did.
TORCH_LIBRARY_IMPL(llmkern_C, Autograd, m) {
  for (const char* schema : kSchemas) {
    const std::string s(schema);
    m.impl(s.substr(0, s.find('(')).c_str(), torch::CppFunction::makeFallthrough());
  }
}
