// The Python module `llmkern._C`: build and CPU facts for `llmkern info` and the backend
// registry, and the CPU ISA switch. The kernels are torch ops of the `llmkern_C` namespace:
// declared once in csrc/schemas.cpp, implemented per dispatch key (CPU, CUDA) in their glue
// files (csrc/cpu/*_ops.cpp, csrc/cuda/*_ops.cpp).
#include <ATen/Parallel.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <optional>
#include <string>

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
        "ISA path the CPU kernels use now (chosen at first use; LLMKERN_CPU_ISA may lower it)");
  m.def(
      "set_isa",
      [](const std::optional<std::string>& name) {
        llmkern::set_active_isa(name ? name->c_str() : "");
      },
      pybind11::arg("name"),
      "Switch the CPU kernels to ISA path `name` (scalar, avx2, avx512, avx512_vnni, amx; at most "
      "detected_isa()); '' or None goes back to the default (detected, lowered by "
      "LLMKERN_CPU_ISA), chosen again at next use. ValueError for a name this CPU cannot run.");
  m.def("has_avx512_bf16", &llmkern::has_avx512_bf16);
  m.def("has_avx512_vnni_vbmi", &llmkern::has_avx512_vnni_vbmi);
  m.def("built_with_cuda", &built_with_cuda);
  m.def("parallel_threads", &parallel_threads);
}
