// Run-time CPU ISA selection for the CPU kernels.
//
// Kernels for one ISA live in their own translation unit compiled under
// `#pragma GCC target(...)` and must not include torch headers (inline functions from
// headers compiled with AVX-512 could otherwise be picked by the linker for callers on
// CPUs without it). Glue code asks `active_isa()` which variant to call.
#pragma once

namespace llmkern {

enum class Isa : int { Scalar = 0, Avx2 = 1, Avx512 = 2, Avx512Vnni = 3, Amx = 4 };

// Best ISA this CPU (and OS) supports, from cpuid. Amx is AVX-512 VNNI plus AMX-INT8 tiles, which
// Linux hands out per process on request (arch_prctl): detection makes that request.
Isa detected_isa();

// The ISA the kernels run: chosen once, at first use, as detected_isa() lowered by the
// environment variable LLMKERN_CPU_ISA (scalar | avx2 | avx512 | avx512_vnni | amx), then kept
// in an atomic (a kernel call reads it without touching the environment). Throws
// std::invalid_argument for an unknown name or an ISA the CPU lacks.
Isa active_isa();

// Switches the active ISA in-process (llmkern._C.set_isa, the tests' hook); "" goes back to
// the default, chosen again at next use. Throws std::invalid_argument for an unknown name or an
// ISA above detected_isa(). Kernel calls already running keep the ISA they started with.
void set_active_isa(const char* name);

// True when the CPU supports AVX512_BF16 (vdpbf16ps, vcvtne2ps2bf16) and the active ISA
// is at least Avx512.
bool has_avx512_bf16();

// True when the active ISA is at least Avx512Vnni and the CPU has AVX512_VBMI (vpermi2b,
// vpmultishiftqb), which the VNNI 2:4 kernels need.
bool has_avx512_vnni_vbmi();

const char* isa_name(Isa isa);

}  // namespace llmkern
