// The floating storage types the CUDA launchers accept (host-only header, no device code, so
// the torch glue .cpp files can include it).
#pragma once

namespace llmkern {
namespace cuda {

enum class FloatType { F32, F16, BF16 };

}  // namespace cuda
}  // namespace llmkern
