// The Python module `llmkern._C`: build and CPU facts for `llmkern info` and the backend
// registry. Kernels register themselves as torch ops in the `llmkern_C` namespace with
// TORCH_LIBRARY_FRAGMENT in their own glue files (csrc/cpu/*_ops.cpp, csrc/cuda/*_ops.cpp).
#include <torch/extension.h>

#include "cpu/isa.h"

namespace {

int parallel_threads() { return at::get_num_threads(); }

bool built_with_cuda() {
#ifdef LLMKERN_WITH_CUDA
  return true;
#else
  return false;
#endif
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "llmkern native kernels";
  m.def("detected_isa", [] { return std::string(llmkern::isa_name(llmkern::detected_isa())); },
        "Best CPU ISA path this machine supports");
  m.def("active_isa", [] { return std::string(llmkern::isa_name(llmkern::active_isa())); },
        "ISA path the CPU kernels use now (LLMKERN_CPU_ISA may lower it)");
  m.def("has_avx512_bf16", &llmkern::has_avx512_bf16);
  m.def("built_with_cuda", &built_with_cuda);
  m.def("parallel_threads", &parallel_threads);
}
