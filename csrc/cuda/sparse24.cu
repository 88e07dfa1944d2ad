// 2:4 structured-sparse matmul kernels; see sparse24.cuh for the contracts.
//
// Tensor-core path: the 2:4 weight W [n, k] is the sparse operand A of mma.sp (A must be the
// row-major M x K operand), x^T the dense operand B, so each mma computes a 16 (weight rows) x
// 8 (tokens) tile of out^T. A and its metadata come pre-permuted into fragment order (one
// 16-byte / 8-byte read per lane), x through ldmatrix from a padded shared-memory tile.
// Decode path: one warp per few weight rows streams the canonical values and meta with
// 16-byte loads, picks the matching x values in registers and reduces across the warp.
#include "cuda/sparse24.cuh"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <type_traits>

namespace llmkern {
namespace sparse24 {
namespace {

// The kernels use cp.async, ldmatrix and mma.sp: compiled to a trap below sm_80 (the glue
// refuses such devices before launching).
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
#define LLMKERN_SM80 1
#else
#define LLMKERN_SM80 0
#endif

// ::ordered_metadata (PTX 8.5, CUDA 12.5) is the form recommended from sm_90 on; it requires
// idx0 < idx1 in each code, which the canonical format guarantees.
#if defined(__CUDACC_VER_MAJOR__) && \
    (__CUDACC_VER_MAJOR__ > 12 || (__CUDACC_VER_MAJOR__ == 12 && __CUDACC_VER_MINOR__ >= 5))
#define LLMKERN_MMA_SP "mma.sp::ordered_metadata.sync.aligned"
#else
#define LLMKERN_MMA_SP "mma.sp.sync.aligned"
#endif

// ---------------------------------------------------------------------------------------------
// Small device helpers
// ---------------------------------------------------------------------------------------------

__device__ __forceinline__ uint32_t smem_u32(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16-byte global -> shared copy; `valid == false` writes zeros and reads nothing.
__device__ __forceinline__ void cp_async16(void* dst, const void* src, bool valid) {
#if LLMKERN_SM80
  const int bytes = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_u32(dst)), "l"(src),
               "r"(bytes));
#endif
}

__device__ __forceinline__ void cp_async_commit() {
#if LLMKERN_SM80
  asm volatile("cp.async.commit_group;\n" ::);
#endif
}

template <int N>
__device__ __forceinline__ void cp_async_wait() {
#if LLMKERN_SM80
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
#endif
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* p) {
#if LLMKERN_SM80
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_u32(p)));
#endif
}

template <class T>
__device__ __forceinline__ float to_float(T v) {
  return static_cast<float>(v);
}
template <>
__device__ __forceinline__ float to_float<__half>(__half v) {
  return __half2float(v);
}
template <>
__device__ __forceinline__ float to_float<__nv_bfloat16>(__nv_bfloat16 v) {
  return __bfloat162float(v);
}

template <class T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) {
  return v;
}
template <>
__device__ __forceinline__ __half from_float<__half>(float v) {
  return __float2half_rn(v);
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

// Two floats (exact small integers here) packed as one 32-bit register of T pairs.
template <class T>
__device__ __forceinline__ uint32_t pack2(float lo, float hi);
template <>
__device__ __forceinline__ uint32_t pack2<__half>(float lo, float hi) {
  __half2 h = __floats2half2_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&h);
}
template <>
__device__ __forceinline__ uint32_t pack2<__nv_bfloat16>(float lo, float hi) {
  __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&h);
}

// ---------------------------------------------------------------------------------------------
// Tensor-core path
// ---------------------------------------------------------------------------------------------

// Per-instruction traits. Both layouts take 64 bytes of each x row per K-tile (32 fp16/bf16 or
// 64 int8 values), so the x staging is shared.
template <class T, class AV>
struct Mma16 {  // mma.sp.m16n8k32, T = __half or __nv_bfloat16, A stored as T or int8
  using X = T;
  using Acc = float;
  static constexpr int kTileK = 32;
  static constexpr int kALaneBytes = 8 * sizeof(AV);  // 8 values per lane per tile
  static constexpr int kMetaWords = 16;               // lanes 4g and 4g+1 (selector 0)

  static __device__ __forceinline__ void load_a(uint32_t (&a)[4], const uint8_t* tile, int lane) {
    if constexpr (sizeof(AV) == 2) {
      const uint4 v = reinterpret_cast<const uint4*>(tile)[lane];
      a[0] = v.x, a[1] = v.y, a[2] = v.z, a[3] = v.w;
    } else {  // int8 weights: widen exactly (|v| <= 128 fits fp16 and bf16)
      const uint2 v = reinterpret_cast<const uint2*>(tile)[lane];
      const int8_t* b = reinterpret_cast<const int8_t*>(&v);
#pragma unroll
      for (int r = 0; r < 4; ++r) a[r] = pack2<T>(float(b[2 * r]), float(b[2 * r + 1]));
    }
  }
  static __device__ __forceinline__ uint32_t load_e(const uint8_t* tile, int lane) {
    return reinterpret_cast<const uint32_t*>(tile)[2 * (lane >> 2) + (lane & 1)];
  }
  static __device__ __forceinline__ void mma(float (&d)[4], const uint32_t (&a)[4],
                                             const uint32_t (&b)[4], uint32_t e) {
#if LLMKERN_SM80
    if constexpr (std::is_same_v<T, __half>) {
      asm volatile(LLMKERN_MMA_SP
                   ".m16n8k32.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
                   "{%8,%9,%10,%11}, {%0,%1,%2,%3}, %12, 0x0;\n"
                   : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                   : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]),
                     "r"(b[2]), "r"(b[3]), "r"(e));
    } else {
      asm volatile(LLMKERN_MMA_SP
                   ".m16n8k32.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
                   "{%8,%9,%10,%11}, {%0,%1,%2,%3}, %12, 0x0;\n"
                   : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                   : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]),
                     "r"(b[2]), "r"(b[3]), "r"(e));
    }
#endif
  }
};

struct MmaS8 {  // mma.sp.m16n8k64 s8 x s8 -> s32
  using X = int8_t;
  using Acc = int;
  static constexpr int kTileK = 64;
  static constexpr int kALaneBytes = 16;
  static constexpr int kMetaWords = 32;  // every lane (selector 0)

  static __device__ __forceinline__ void load_a(uint32_t (&a)[4], const uint8_t* tile, int lane) {
    const uint4 v = reinterpret_cast<const uint4*>(tile)[lane];
    a[0] = v.x, a[1] = v.y, a[2] = v.z, a[3] = v.w;
  }
  static __device__ __forceinline__ uint32_t load_e(const uint8_t* tile, int lane) {
    return reinterpret_cast<const uint32_t*>(tile)[lane];
  }
  static __device__ __forceinline__ void mma(int (&d)[4], const uint32_t (&a)[4],
                                             const uint32_t (&b)[4], uint32_t e) {
#if LLMKERN_SM80
    asm volatile(LLMKERN_MMA_SP
                 ".m16n8k64.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
                 "{%8,%9,%10,%11}, {%0,%1,%2,%3}, %12, 0x0;\n"
                 : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "r"(b[2]),
                   "r"(b[3]), "r"(e));
#endif
  }
};

// Block tile: BW weight rows x BT tokens, 4 warps as 2 (weights) x 2 (tokens), K staged two
// K-tiles (128 bytes of each x row) per step through a kStages-deep cp.async pipeline.
template <class Op, int BW, int BT>
struct Tile {
  static constexpr int kThreads = 128;
  static constexpr int kMT = BW / 32;  // m16 tiles per warp
  static constexpr int kNT = BT / 16;  // n8 tiles per warp
  static constexpr int kStages = 3;
  static constexpr int kATile = Op::kALaneBytes * 32;  // bytes per (16 rows, K-tile)
  static constexpr int kETile = Op::kMetaWords * 4;
  static constexpr int kXRow = 128 + 16;  // padded: ldmatrix rows land in distinct banks
  static constexpr int kABytes = (BW / 16) * 2 * kATile;
  static constexpr int kEBytes = (BW / 16) * 2 * kETile;
  static constexpr int kXBytes = BT * kXRow;
  static constexpr int kStageBytes = kABytes + kEBytes + kXBytes;
  static constexpr int kSmem = kStages * kStageBytes;
  static_assert(kMT >= 1 && kNT >= 1 && kABytes % 16 == 0 && kEBytes % 16 == 0, "tile");
};

template <class O>
struct EpiFloat {  // out = acc * w_scale + bias
  __device__ __forceinline__ void operator()(const MmaArgs& a, int tok, int row, float acc) const {
    float v = acc;
    if (a.w_scale) v *= a.w_scale[row];
    if (a.bias) v += a.bias[row];
    static_cast<O*>(a.out)[tok * a.ldo + row] = from_float<O>(v);
  }
};

template <class O>
struct EpiW8A8 {  // out = acc * x_scale * w_scale + bias, each step rounded like the reference
  __device__ __forceinline__ void operator()(const MmaArgs& a, int tok, int row, int acc) const {
    float v = __fmul_rn(__fmul_rn(__int2float_rn(acc), a.x_scale[tok]), a.w_scale[row]);
    if (a.bias) v = __fadd_rn(v, a.bias[row]);
    static_cast<O*>(a.out)[tok * a.ldo + row] = from_float<O>(v);
  }
};

template <class Op, int BW, int BT, class Epi>
__global__ void __launch_bounds__(128) mma_sp_kernel(const MmaArgs a, const Epi epi) {
#if LLMKERN_SM80
  using C = Tile<Op, BW, BT>;
  extern __shared__ __align__(16) uint8_t smem[];
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int warp_w = warp & 1, warp_t = warp >> 1;
  const int row0 = blockIdx.x * BW, tok0 = blockIdx.y * BT;
  const int ktiles = a.k_pad / Op::kTileK;  // even: k_pad is a multiple of 2 K-tiles
  const int steps = ktiles / 2;
  const uint8_t* gA = static_cast<const uint8_t*>(a.values);
  const char* gX = static_cast<const char*>(a.x);
  const int64_t x_row_bytes = a.ldx * int64_t(sizeof(typename Op::X));
  const int x_valid_bytes = a.k * int(sizeof(typename Op::X));  // a multiple of 16 (glue)

  auto load_step = [&](int stage, int step) {
    uint8_t* sA = smem + stage * C::kStageBytes;
    uint8_t* sE = sA + C::kABytes;
    uint8_t* sX = sE + C::kEBytes;
    // A and meta: (BW/16 row tiles) x (2 K-tiles), each a contiguous block in the layout.
    for (int c = tid; c < C::kABytes / 16; c += C::kThreads) {
      const int tile = c / (C::kATile / 16), off = (c % (C::kATile / 16)) * 16;
      const int64_t at = int64_t(row0 / 16 + (tile >> 1)) * ktiles + 2 * step + (tile & 1);
      cp_async16(sA + tile * C::kATile + off, gA + at * C::kATile + off, true);
    }
    for (int c = tid; c < C::kEBytes / 16; c += C::kThreads) {
      const int tile = c / (C::kETile / 16), off = (c % (C::kETile / 16)) * 16;
      const int64_t at = int64_t(row0 / 16 + (tile >> 1)) * ktiles + 2 * step + (tile & 1);
      cp_async16(sE + tile * C::kETile + off, a.meta + at * C::kETile + off, true);
    }
    // x: BT rows x 128 bytes; rows past m and columns past k read as zeros.
    for (int c = tid; c < BT * 8; c += C::kThreads) {
      const int r = c >> 3, byte = step * 128 + (c & 7) * 16;
      const bool ok = tok0 + r < a.m && byte < x_valid_bytes;
      const char* src = ok ? gX + (tok0 + r) * x_row_bytes + byte : gX;
      cp_async16(sX + r * C::kXRow + (c & 7) * 16, src, ok);
    }
  };

  typename Op::Acc acc[C::kMT][C::kNT][4] = {};

#pragma unroll
  for (int s = 0; s < C::kStages - 1; ++s) {
    if (s < steps) load_step(s, s);
    cp_async_commit();
  }
  for (int step = 0; step < steps; ++step) {
    cp_async_wait<C::kStages - 2>();
    __syncthreads();  // step's data visible; the stage refilled below is no longer read
    const int next = step + C::kStages - 1;
    if (next < steps) load_step(next % C::kStages, next);
    cp_async_commit();

    const uint8_t* sA = smem + (step % C::kStages) * C::kStageBytes;
    const uint8_t* sE = sA + C::kABytes;
    const uint8_t* sX = sE + C::kEBytes;
#pragma unroll
    for (int kk = 0; kk < 2; ++kk) {
      uint32_t af[C::kMT][4], ef[C::kMT];
#pragma unroll
      for (int mi = 0; mi < C::kMT; ++mi) {
        const int tile = (warp_w * C::kMT + mi) * 2 + kk;
        Op::load_a(af[mi], sA + tile * C::kATile, lane);
        ef[mi] = Op::load_e(sE + tile * C::kETile, lane);
      }
#pragma unroll
      for (int ni = 0; ni < C::kNT; ++ni) {
        // Matrix j of the x4 load = tokens (8 rows) x bytes 16j..16j+15 of the K-tile, which
        // is exactly B register j of the mma (k = 8j + 2t.. for 16-bit, 16j + 4t.. for s8).
        uint32_t bf[4];
        const int r = warp_t * (BT / 2) + ni * 8 + (lane & 7);
        ldmatrix_x4(bf, sX + r * C::kXRow + kk * 64 + (lane >> 3) * 16);
#pragma unroll
        for (int mi = 0; mi < C::kMT; ++mi) Op::mma(acc[mi][ni], af[mi], bf, ef[mi]);
      }
    }
  }
  cp_async_wait<0>();

  // Accumulator fragment: c0, c1 at (row g, tokens 2t, 2t+1), c2, c3 at row g + 8.
  const int g = lane >> 2, t = lane & 3;
#pragma unroll
  for (int mi = 0; mi < C::kMT; ++mi)
#pragma unroll
    for (int ni = 0; ni < C::kNT; ++ni)
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int row = row0 + (warp_w * C::kMT + mi) * 16 + g + 8 * (i >> 1);
        const int tok = tok0 + warp_t * (BT / 2) + ni * 8 + 2 * t + (i & 1);
        if (row < a.n && tok < a.m) epi(a, tok, row, acc[mi][ni][i]);
      }
#else
  __trap();
#endif
}

template <class Op, int BW, int BT, class Epi>
cudaError_t launch_tile(const MmaArgs& a, Epi epi, cudaStream_t stream) {
  using C = Tile<Op, BW, BT>;
  auto kernel = mma_sp_kernel<Op, BW, BT, Epi>;
  if (C::kSmem > 48 * 1024) {
    const cudaError_t err =
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, C::kSmem);
    if (err != cudaSuccess) return err;
  }
  const dim3 grid((a.n + BW - 1) / BW, (a.m + BT - 1) / BT);
  if (grid.y > 65535) return cudaErrorInvalidConfiguration;
  kernel<<<grid, C::kThreads, C::kSmem, stream>>>(a, epi);
  return cudaGetLastError();
}

// Tile by token count: small m needs many blocks along the weight rows to stream the weight at
// full bandwidth; large m wants big tiles for reuse.
template <class Op, class Epi>
cudaError_t launch_mma(const MmaArgs& a, Epi epi, cudaStream_t stream) {
  if (a.m <= 16) return launch_tile<Op, 32, 16>(a, epi, stream);
  if (a.m <= 64) return launch_tile<Op, 64, 64>(a, epi, stream);
  return launch_tile<Op, 128, 128>(a, epi, stream);
}

// ---------------------------------------------------------------------------------------------
// Decode path (CUDA cores, canonical layout)
// ---------------------------------------------------------------------------------------------

constexpr int kGemvRows = 4;  // weight rows per warp: each x load serves 4 rows
constexpr int kGemvWarps = 4;

__device__ __forceinline__ float pick(const float* x4, int idx) {
  const float lo = (idx & 1) ? x4[1] : x4[0];
  const float hi = (idx & 1) ? x4[3] : x4[2];
  return (idx & 2) ? hi : lo;
}

// 8 consecutive values of a 16-byte-aligned array as floats.
template <class V>
__device__ __forceinline__ void load8(const V* p, float* out) {
  if constexpr (sizeof(V) == 4) {
    const float4 a = reinterpret_cast<const float4*>(p)[0], b = reinterpret_cast<const float4*>(p)[1];
    out[0] = a.x, out[1] = a.y, out[2] = a.z, out[3] = a.w;
    out[4] = b.x, out[5] = b.y, out[6] = b.z, out[7] = b.w;
  } else if constexpr (sizeof(V) == 2) {
    const uint4 a = *reinterpret_cast<const uint4*>(p);
    const V* v = reinterpret_cast<const V*>(&a);
#pragma unroll
    for (int i = 0; i < 8; ++i) out[i] = to_float(v[i]);
  } else {
    const uint2 a = *reinterpret_cast<const uint2*>(p);
    const int8_t* v = reinterpret_cast<const int8_t*>(&a);
#pragma unroll
    for (int i = 0; i < 8; ++i) out[i] = float(v[i]);
  }
}

// MT tokens per block row (grid.y covers m in chunks of MT). VEC: k % 64 == 0 and 16-byte
// aligned rows, so each lane reads 16 positions per step (8 kept values, 2 meta bytes, 16 x per
// token) with vector loads; otherwise one group per lane per step with scalar loads.
template <class T, class V, int MT, bool VEC>
__global__ void __launch_bounds__(kGemvWarps * 32) gemv_kernel(const GemvArgs a) {
  const int lane = threadIdx.x & 31;
  const int row0 = (blockIdx.x * kGemvWarps + (threadIdx.x >> 5)) * kGemvRows;
  const int tok0 = blockIdx.y * MT;
  if (row0 >= a.n) return;  // warp-uniform
  const T* x = static_cast<const T*>(a.x) + tok0 * a.ldx;
  const V* values = static_cast<const V*>(a.values);
  const int half_k = a.k / 2, meta_cols = (a.k + 7) / 8;
  bool live[kGemvRows];
#pragma unroll
  for (int r = 0; r < kGemvRows; ++r) live[r] = row0 + r < a.n;
  float acc[kGemvRows][MT] = {};

  if constexpr (VEC) {
#pragma unroll 2  // two chunks of loads in flight per lane
    for (int c = lane; c < a.k / 16; c += 32) {  // chunk c: positions 16c..16c+15
      float w[kGemvRows][8];
      uint32_t code[kGemvRows];
#pragma unroll
      for (int r = 0; r < kGemvRows; ++r) {
        const int row = live[r] ? row0 + r : row0;
        load8(values + int64_t(row) * half_k + 8 * c, w[r]);
        code[r] = *reinterpret_cast<const uint16_t*>(a.meta + int64_t(row) * meta_cols + 2 * c);
      }
#pragma unroll
      for (int m = 0; m < MT; ++m) {
        if (tok0 + m >= a.m) break;
        float xv[16];
        load8(x + m * a.ldx + 16 * c, xv);
        load8(x + m * a.ldx + 16 * c + 8, xv + 8);
#pragma unroll
        for (int r = 0; r < kGemvRows; ++r)
#pragma unroll
          for (int j = 0; j < 4; ++j) {
            const int cj = (code[r] >> (4 * j)) & 0xF;
            acc[r][m] += w[r][2 * j] * pick(xv + 4 * j, cj & 3) +
                         w[r][2 * j + 1] * pick(xv + 4 * j, cj >> 2);
          }
      }
    }
  } else {
    for (int grp = lane; grp < a.k / 4; grp += 32) {
#pragma unroll
      for (int r = 0; r < kGemvRows; ++r) {
        if (!live[r]) continue;
        const int64_t row = row0 + r;
        const int cj = (a.meta[row * meta_cols + grp / 2] >> (4 * (grp & 1))) & 0xF;
        const float w0 = to_float(values[row * half_k + 2 * grp]);
        const float w1 = to_float(values[row * half_k + 2 * grp + 1]);
#pragma unroll
        for (int m = 0; m < MT; ++m) {
          if (tok0 + m >= a.m) break;
          const T* xm = x + m * a.ldx + 4 * grp;
          acc[r][m] += w0 * to_float(xm[cj & 3]) + w1 * to_float(xm[cj >> 2]);
        }
      }
    }
  }

#pragma unroll
  for (int r = 0; r < kGemvRows; ++r)
#pragma unroll
    for (int m = 0; m < MT; ++m) {
      float v = acc[r][m];
#pragma unroll
      for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
      if (lane == 0 && live[r] && tok0 + m < a.m) {
        const int row = row0 + r;
        if (a.w_scale) v *= a.w_scale[row];
        if (a.bias) v += a.bias[row];
        static_cast<T*>(a.out)[(tok0 + m) * a.ldo + row] = from_float<T>(v);
      }
    }
}

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

template <class T, class V, int MT>
cudaError_t launch_gemv_mt(const GemvArgs& a, cudaStream_t stream) {
  const dim3 grid((a.n + kGemvWarps * kGemvRows - 1) / (kGemvWarps * kGemvRows),
                  (a.m + MT - 1) / MT);
  if (grid.y > 65535) return cudaErrorInvalidConfiguration;
  const bool vec = a.k % 64 == 0 && aligned16(a.x) && aligned16(a.values) &&
                   aligned16(a.meta) && (a.ldx * int64_t(sizeof(T))) % 16 == 0;
  if (vec)
    gemv_kernel<T, V, MT, true><<<grid, kGemvWarps * 32, 0, stream>>>(a);
  else
    gemv_kernel<T, V, MT, false><<<grid, kGemvWarps * 32, 0, stream>>>(a);
  return cudaGetLastError();
}

template <class T, class V>
cudaError_t launch_gemv_typed(const GemvArgs& a, cudaStream_t stream) {
  if (a.m <= 1) return launch_gemv_mt<T, V, 1>(a, stream);
  if (a.m <= 2) return launch_gemv_mt<T, V, 2>(a, stream);
  if (a.m <= 4) return launch_gemv_mt<T, V, 4>(a, stream);
  return launch_gemv_mt<T, V, 8>(a, stream);
}

}  // namespace

cudaError_t launch_mma16(DType x_dtype, DType value_dtype, const MmaArgs& a, cudaStream_t s) {
  const bool int8_values = value_dtype == DType::kInt8;
  if (a.m <= 0 || a.n <= 0) return cudaSuccess;
  if (x_dtype == DType::kFloat16 && (int8_values || value_dtype == x_dtype))
    return int8_values ? launch_mma<Mma16<__half, int8_t>>(a, EpiFloat<__half>{}, s)
                       : launch_mma<Mma16<__half, __half>>(a, EpiFloat<__half>{}, s);
  if (x_dtype == DType::kBFloat16 && (int8_values || value_dtype == x_dtype))
    return int8_values
               ? launch_mma<Mma16<__nv_bfloat16, int8_t>>(a, EpiFloat<__nv_bfloat16>{}, s)
               : launch_mma<Mma16<__nv_bfloat16, __nv_bfloat16>>(a, EpiFloat<__nv_bfloat16>{}, s);
  return cudaErrorInvalidValue;
}

cudaError_t launch_mma_s8(DType out_dtype, const MmaArgs& a, cudaStream_t s) {
  if (a.m <= 0 || a.n <= 0) return cudaSuccess;
  switch (out_dtype) {
    case DType::kFloat32: return launch_mma<MmaS8>(a, EpiW8A8<float>{}, s);
    case DType::kFloat16: return launch_mma<MmaS8>(a, EpiW8A8<__half>{}, s);
    case DType::kBFloat16: return launch_mma<MmaS8>(a, EpiW8A8<__nv_bfloat16>{}, s);
    default: return cudaErrorInvalidValue;
  }
}

cudaError_t launch_gemv(DType x_dtype, DType value_dtype, const GemvArgs& a, cudaStream_t s) {
  if (a.m <= 0 || a.n <= 0) return cudaSuccess;
  const bool int8_values = value_dtype == DType::kInt8;
  if (!int8_values && value_dtype != x_dtype) return cudaErrorInvalidValue;
  switch (x_dtype) {
    case DType::kFloat32:
      return int8_values ? launch_gemv_typed<float, int8_t>(a, s)
                         : launch_gemv_typed<float, float>(a, s);
    case DType::kFloat16:
      return int8_values ? launch_gemv_typed<__half, int8_t>(a, s)
                         : launch_gemv_typed<__half, __half>(a, s);
    case DType::kBFloat16:
      return int8_values ? launch_gemv_typed<__nv_bfloat16, int8_t>(a, s)
                         : launch_gemv_typed<__nv_bfloat16, __nv_bfloat16>(a, s);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace sparse24
}  // namespace llmkern
