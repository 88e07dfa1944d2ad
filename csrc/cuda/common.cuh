// Small device helpers shared by the CUDA kernels: storage-type conversions, aligned vector
// loads, warp and block reductions. Toolkit headers only (no torch), and no operators on
// __half / __nv_bfloat16 (torch builds with __CUDA_NO_HALF_OPERATORS__ and friends).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace llmkern {
namespace cuda {

constexpr int kWarp = 32;

__host__ __device__ constexpr int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Storage type -> float32 and back (round to nearest even, as torch's .to()).
__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

template <class T>
__device__ __forceinline__ T from_float(float x);
template <>
__device__ __forceinline__ float from_float<float>(float x) {
  return x;
}
template <>
__device__ __forceinline__ __half from_float<__half>(float x) {
  return __float2half_rn(x);
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

// E consecutive elements of T moved as one aligned access (E * sizeof(T) in {2, 4, 8, 16}).
template <class T, int E>
struct alignas(sizeof(T) * E) Pack {
  T v[E];
};

// Loads E elements at p (aligned to E * sizeof(T)) and widens them to float32.
template <class T, int E>
__device__ __forceinline__ void load_floats(const T* p, float (&out)[E]) {
  const Pack<T, E> pk = *reinterpret_cast<const Pack<T, E>*>(p);
#pragma unroll
  for (int i = 0; i < E; ++i) out[i] = to_float(pk.v[i]);
}

// Rounds E floats to T and stores them at p (aligned to E * sizeof(T)).
template <class T, int E>
__device__ __forceinline__ void store_floats(T* p, const float (&in)[E]) {
  Pack<T, E> pk;
#pragma unroll
  for (int i = 0; i < E; ++i) pk.v[i] = from_float<T>(in[i]);
  *reinterpret_cast<Pack<T, E>*>(p) = pk;
}

__host__ __device__ __forceinline__ bool is_aligned(const void* p, int bytes) {
  return (reinterpret_cast<uintptr_t>(p) & static_cast<uintptr_t>(bytes - 1)) == 0;
}

// Butterfly reductions: every lane ends with the result.
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = kWarp / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = kWarp / 2; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Block-wide reduction of one float for a block of kThreads threads (a multiple of 32, all
// threads call it). `scratch` holds kThreads / 32 floats; it may be reused after the call.
// Every thread gets the result.
template <int kThreads, class Op>
__device__ __forceinline__ float block_reduce(float v, float* scratch, Op op) {
  static_assert(kThreads % kWarp == 0 && kThreads <= 1024, "block size");
  constexpr int kWarps = kThreads / kWarp;
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
#pragma unroll
  for (int o = kWarp / 2; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, o));
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = scratch[0];
#pragma unroll
  for (int w = 1; w < kWarps; ++w) v = op(v, scratch[w]);
  __syncthreads();  // scratch may be overwritten by the next reduction
  return v;
}

struct SumOp {
  __device__ __forceinline__ float operator()(float a, float b) const { return a + b; }
};
struct MaxOp {
  __device__ __forceinline__ float operator()(float a, float b) const { return fmaxf(a, b); }
};

}  // namespace cuda
}  // namespace llmkern
