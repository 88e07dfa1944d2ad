#include "cpu/isa.h"

#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>

namespace llmkern {

Isa detected_isa() {
  static const Isa isa = [] {
    __builtin_cpu_init();
    const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                      __builtin_cpu_supports("f16c");
    const bool avx512 = avx2 && __builtin_cpu_supports("avx512f") &&
                        __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
                        __builtin_cpu_supports("avx512dq");
    if (avx512 && __builtin_cpu_supports("avx512vnni")) return Isa::Avx512Vnni;
    if (avx512) return Isa::Avx512;
    if (avx2) return Isa::Avx2;
    return Isa::Scalar;
  }();
  return isa;
}

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::Scalar: return "scalar";
    case Isa::Avx2: return "avx2";
    case Isa::Avx512: return "avx512";
    case Isa::Avx512Vnni: return "avx512_vnni";
  }
  return "unknown";
}

Isa active_isa() {
  const Isa best = detected_isa();
  const char* env = std::getenv("LLMKERN_CPU_ISA");
  if (env == nullptr || env[0] == '\0') return best;
  for (int i = 0; i <= static_cast<int>(Isa::Avx512Vnni); ++i) {
    const Isa want = static_cast<Isa>(i);
    if (std::strcmp(env, isa_name(want)) == 0) {
      if (want > best)
        throw std::invalid_argument(std::string("LLMKERN_CPU_ISA=") + env +
                                    " is not supported by this CPU (best: " + isa_name(best) + ")");
      return want;
    }
  }
  throw std::invalid_argument(std::string("LLMKERN_CPU_ISA=") + env +
                              " is unknown; expected scalar, avx2, avx512 or avx512_vnni");
}

bool has_avx512_bf16() {
  __builtin_cpu_init();
  return active_isa() >= Isa::Avx512 && __builtin_cpu_supports("avx512bf16");
}

}  // namespace llmkern
