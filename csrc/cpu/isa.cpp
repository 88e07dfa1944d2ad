#include "cpu/isa.h"

#include <cpuid.h>
#if defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif

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
  for (int i = 0; i <= static_cast<int>(Isa::Amx); ++i)
    if (std::strcmp(name, isa_name(static_cast<Isa>(i))) == 0) return i;
  return -1;
}

// AMX-TILE and AMX-INT8 (cpuid leaf 7: edx bits 24, 25), and the kernel's permission to use tile
// data in this process (Linux >= 5.16: arch_prctl ARCH_REQ_XCOMP_PERM for XFEATURE_XTILEDATA;
// without it the first tile instruction faults).
bool amx_int8_granted() {
  unsigned eax, ebx, ecx, edx;
  if (!__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx)) return false;
  if (!(edx & (1u << 24)) || !(edx & (1u << 25))) return false;
#if defined(__linux__)
  constexpr long kReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
  return syscall(SYS_arch_prctl, kReqXcompPerm, kXfeatureXtiledata) == 0;
#else
  return false;
#endif
}

// detected_isa(), lowered by LLMKERN_CPU_ISA when set.
Isa default_isa() {
  const Isa best = detected_isa();
  const char* env = std::getenv("LLMKERN_CPU_ISA");
  if (env == nullptr || env[0] == '\0') return best;
  const int want = isa_of(env);
  if (want < 0)
    throw std::invalid_argument(std::string("LLMKERN_CPU_ISA=") + env +
                                " is unknown; expected scalar, avx2, avx512, avx512_vnni or amx");
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
    const bool vnni = avx512 && __builtin_cpu_supports("avx512vnni");
    if (vnni && amx_int8_granted()) return Isa::Amx;
    if (vnni) return Isa::Avx512Vnni;
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
    case Isa::Amx: return "amx";
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

bool has_avx512_vnni_vbmi() {
  __builtin_cpu_init();
  return active_isa() >= Isa::Avx512Vnni && __builtin_cpu_supports("avx512vbmi");
}

bool has_avx512_bf16() {
  __builtin_cpu_init();
  return active_isa() >= Isa::Avx512 && __builtin_cpu_supports("avx512bf16");
}

}  // namespace llmkern
