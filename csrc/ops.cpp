// The Python module `llmkern._C`: build and CPU facts for `llmkern info` and the backend
// registry, and the CPU ISA switch. The kernels are torch ops of the `llmkern_C` namespace:
// declared once in csrc/schemas.cpp, implemented per dispatch key (CPU, CUDA) in their glue
// files (csrc/cpu/*_ops.cpp, csrc/cuda/*_ops.cpp).
#include <ATen/Parallel.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

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

// OR of the nbytes bytes at `address`, read once on torch's threads: the benchmarks' read-bandwidth
// probe (llmkern.apps.benchmark.read_bandwidth_gbs). A plain streaming loop that any ISA keeps
// memory-bound, unlike torch's reductions, which measured 10-20% below it on the AMX VM.
uint64_t stream_or(uintptr_t address, int64_t nbytes) {
  const auto* bytes = reinterpret_cast<const unsigned char*>(address);
  const int64_t words = nbytes / 64;  // 64-byte lines; the tail is read below
  std::vector<uint64_t> partial(at::get_num_threads(), 0);
  {
    pybind11::gil_scoped_release release;
    at::parallel_for(0, words, 1 << 14, [&](int64_t w0, int64_t w1) {
      uint64_t acc[8] = {};
      for (int64_t w = w0; w < w1; ++w)
        for (int j = 0; j < 8; ++j) {
          uint64_t v;
          std::memcpy(&v, bytes + 64 * w + 8 * j, 8);
          acc[j] |= v;
        }
      uint64_t all = 0;
      for (uint64_t a : acc) all |= a;
      partial[at::get_thread_num()] |= all;
    });
  }
  uint64_t all = 0;
  for (uint64_t p : partial) all |= p;
  for (int64_t i = 64 * words; i < nbytes; ++i) all |= bytes[i];
  return all;
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
  m.def("stream_or", &stream_or, pybind11::arg("address"), pybind11::arg("nbytes"),
        "OR of nbytes bytes at a raw address, read once on torch's threads (bandwidth probe)");
}
