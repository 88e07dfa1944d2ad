#include "cpu/isa.h"

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>

namespace llmkern {

namespace {

constexpr int kUnset = -1;
// The ISA the kernels run, chosen at first use (or by set_active_isa); kUnset until then.
std::atomic<int> g_active{kUnset};

// The Isa called `name`, or -1 when no ISA has that name.
int isa_of(const char* name) {
  for (int i = 0; i <= static_cast<int>(Isa::Avx512Vnni); ++i)
    if (std::strcmp(name, isa_name(static_cast<Isa>(i))) == 0) return i;
  return -1;
}

// detected_isa(), lowered by LLMKERN_CPU_ISA when set.
Isa default_isa() {
  const Isa best = detected_isa();
  const char* env = std::getenv("LLMKERN_CPU_ISA");
  if (env == nullptr || env[0] == '\0') return best;
  const int want = isa_of(env);
  if (want < 0)
    throw std::invalid_argument(std::string("LLMKERN_CPU_ISA=") + env +
                                " is unknown; expected scalar, avx2, avx512 or avx512_vnni");
  if (static_cast<Isa>(want) > best)
    throw std::invalid_argument(std::string("LLMKERN_CPU_ISA=") + env +
                                " is not supported by this CPU (best: " + isa_name(best) + ")");
  return static_cast<Isa>(want);
}

// "scalar, avx2, ..." up to the detected ISA.
std::string supported_names() {
  std::string out;
  for (int i = 0; i <= static_cast<int>(detected_isa()); ++i)
    out += (i ? ", " : "") + std::string(isa_name(static_cast<Isa>(i)));
  return out;
}

}  // namespace

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
  const int chosen = g_active.load(std::memory_order_relaxed);
  if (chosen != kUnset) return static_cast<Isa>(chosen);
  // First use: an invalid LLMKERN_CPU_ISA throws and stores nothing, so every call keeps
  // raising the same error. Racing first calls compute the same value; the first store wins.
  int expected = kUnset;
  g_active.compare_exchange_strong(expected, static_cast<int>(default_isa()));
  return static_cast<Isa>(g_active.load(std::memory_order_relaxed));
}

void set_active_isa(const char* name) {
  if (name == nullptr || name[0] == '\0') {
    g_active.store(kUnset);
    return;
  }
  const int want = isa_of(name);
  if (want < 0 || static_cast<Isa>(want) > detected_isa())
    throw std::invalid_argument(std::string("llmkern set_isa: '") + name + "' is " +
                                (want < 0 ? "unknown" : "not supported by this CPU") +
                                "; choose from " + supported_names() +
                                " (or '' / None for the default)");
  g_active.store(want);
}

bool has_avx512_bf16() {
  __builtin_cpu_init();
  return active_isa() >= Isa::Avx512 && __builtin_cpu_supports("avx512bf16");
}

}  // namespace llmkern
