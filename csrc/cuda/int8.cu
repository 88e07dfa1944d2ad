// CUDA INT8 kernels (sm_80+): per-token activation quantisation, the W8A8 GEMM on int8 tensor
// cores (mma.sync.m16n8k32, cp.async multistage pipeline, ldmatrix from a swizzled tile, fused
// dequant + bias + cast epilogue), and the weight-only W8 GEMM (a warp-per-channel GEMV for
// decode-sized M, a tiled kernel beyond). Numerical contract: llmkern/ops/int8.py. Launchers:
// int8.cuh. Any M, N, K: rows and k beyond the matrix are zero-filled on load and never stored.
#include "cuda/common.cuh"
#include "cuda/int8.cuh"
#include "cuda/int8_layout.cuh"

namespace llmkern {
namespace cuda {
namespace {

// =============================================================================================
// quantize_per_token: one block per row, absmax reduction, then q = clamp(rint(x * inv)).
// =============================================================================================

constexpr int kQuantThreads = 256;

// E elements per thread access (E = 1 when the rows are not aligned for wider accesses).
// static_scale != nullptr: static quantisation with that per-tensor scale (the absmax pass still
// runs: it finds the rows with a non-finite value).
template <class T, int E>
__global__ void __launch_bounds__(kQuantThreads)
    quantize_rows_kernel(const T* __restrict__ x, int64_t ld_x, int8_t* __restrict__ q,
                         int64_t ld_q, float* __restrict__ scale,
                         const float* __restrict__ static_scale, int64_t K) {
  __shared__ float scratch[kQuantThreads / kWarp];
  const int64_t row = blockIdx.x;
  const T* xr = x + row * ld_x;
  int8_t* qr = q + row * ld_q;
  const int64_t n_vec = K / E;

  float amax = 0.0f;
  int nan = 0;  // fmaxf drops NaN, so NaN is tracked on its own
  for (int64_t i = threadIdx.x; i < n_vec; i += kQuantThreads) {
    float v[E];
    load_floats<T, E>(xr + i * E, v);
#pragma unroll
    for (int e = 0; e < E; ++e) {
      amax = fmaxf(amax, fabsf(v[e]));
      nan |= v[e] != v[e];
    }
  }
  amax = block_reduce<kQuantThreads>(amax, scratch, MaxOp{});
  const bool finite = !__syncthreads_or(nan) && amax != __int_as_float(0x7f800000);
  float inv, row_scale;
  if (static_scale != nullptr) {
    const float s = *static_scale;
    inv = __fdiv_rn(1.0f, s);
    // A scale that is not finite and > 0 (unchecked on the GPU): NaN outputs, not wrong ones.
    row_scale = s > 0.0f && s <= 3.4028234663852886e38f ? s : __int_as_float(0x7fc00000);
  } else {
    const bool positive = finite && amax > 0.0f;
    // As the reference (ieee_div): correctly rounded divisions; a tiny row whose 127 / absmax
    // overflows quantises like a zero row.
    const float r = positive ? __fdiv_rn(127.0f, amax) : 0.0f;
    const bool usable = positive && r <= 3.4028234663852886e38f;
    inv = usable ? r : 0.0f;
    row_scale = usable ? __fdiv_rn(amax, 127.0f) : 1.0f;
  }
  if (threadIdx.x == 0) scale[row] = finite ? row_scale : __int_as_float(0x7fc00000);
  for (int64_t i = threadIdx.x; i < n_vec; i += kQuantThreads) {
    float v[E];
    load_floats<T, E>(xr + i * E, v);
    Pack<int8_t, E> out;
#pragma unroll
    for (int e = 0; e < E; ++e) {
      const float r = rintf(__fmul_rn(v[e], inv));
      // NaN here is 0 * inf (a static scale whose reciprocal overflows): 0, as the reference.
      // Tested before the clamp, which would turn NaN into -127.
      out.v[e] = (!finite || r != r)
                     ? int8_t(0)
                     : static_cast<int8_t>(__float2int_rn(fminf(fmaxf(r, -127.0f), 127.0f)));
    }
    *reinterpret_cast<Pack<int8_t, E>*>(qr + i * E) = out;
  }
}

template <class T>
cudaError_t launch_quantize(const T* x, int64_t ld_x, int8_t* q, int64_t ld_q, float* scale,
                            const float* static_scale, int64_t M, int64_t K,
                            cudaStream_t stream) {
  constexpr int E = 16 / sizeof(T);  // 16-byte loads; E int8 stores
  const bool vec = K % E == 0 && ld_x % E == 0 && ld_q % E == 0 && is_aligned(x, 16) &&
                   is_aligned(q, E);
  if (vec)
    quantize_rows_kernel<T, E>
        <<<M, kQuantThreads, 0, stream>>>(x, ld_x, q, ld_q, scale, static_scale, K);
  else
    quantize_rows_kernel<T, 1>
        <<<M, kQuantThreads, 0, stream>>>(x, ld_x, q, ld_q, scale, static_scale, K);
  return cudaGetLastError();
}

// =============================================================================================
// W8A8 GEMM on int8 tensor cores.
// =============================================================================================

__device__ __forceinline__ uint32_t smem_u32(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16-byte async copy global -> shared; bytes beyond `src_bytes` (0..16) are zero-filled.
__device__ __forceinline__ void cp_async_16(uint32_t dst, const void* src, int src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src),
               "r"(src_bytes)
               : "memory");
}

__device__ __forceinline__ void cp_async_commit() {
  asm volatile("cp.async.commit_group;\n" ::: "memory");
}

template <int kPending>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending) : "memory");
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr)
               : "memory");
}

// c += a (16x32, row) * b (32x8, col), int8 inputs, exact int32 accumulation.
__device__ __forceinline__ void mma_s8(int (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                       uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};\n"
      : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

template <int BM_, int BN_, int WARPS_M_, int WARPS_N_, int STAGES_>
struct GemmConfig {
  static constexpr int BM = BM_, BN = BN_, WARPS_M = WARPS_M_, WARPS_N = WARPS_N_;
  static constexpr int STAGES = STAGES_;
  static constexpr int kThreads = 32 * WARPS_M * WARPS_N;
  static constexpr int WM = BM / WARPS_M, WN = BN / WARPS_N;  // warp tile
  static constexpr int MI = WM / 16, NI = WN / 8;             // mma tiles per warp
  static constexpr int kSmemBytes = STAGES * (BM + BN) * w8a8::kTileK;
  static_assert(WM % 16 == 0 && WN % 16 == 0, "warp tile: m16 rows, pairs of n8 columns");
  static_assert((BM * w8a8::kChunks) % kThreads == 0 && (BN * w8a8::kChunks) % kThreads == 0,
                "each thread copies whole chunks");
  static_assert(STAGES >= 2, "pipeline depth");
};

using GemmLarge = GemmConfig<128, 128, 2, 4, 4>;  // 8 warps of 64 x 32
using GemmSmallM = GemmConfig<32, 128, 1, 4, 4>;  // M <= 32: 4 warps of 32 x 32

struct GemmArgs {
  const int8_t* a;  // x_q [M, K]
  int64_t lda;
  const int8_t* b;  // w_q [N, K]
  int64_t ldb;
  const float* x_scale;
  const float* w_scale;
  const float* bias;  // nullable
  void* out;
  int64_t ldc;
  int M, N, K;
};

// Copies rows [row0, row0 + kRows) x k [k0, k0 + 64) of a row-major int8 matrix into a swizzled
// tile; rows >= rows_total and k >= K read as zero. kVec = 16: rows 16-byte aligned (cp.async,
// partial chunks zero-filled by the hardware); kVec = 1: any alignment (byte loads).
template <int kRows, int kThreads, int kVec>
__device__ __forceinline__ void load_tile(uint8_t* tile, const int8_t* base, int64_t ld, int row0,
                                          int rows_total, int k0, int K) {
  constexpr int kIters = kRows * w8a8::kChunks / kThreads;
#pragma unroll
  for (int it = 0; it < kIters; ++it) {
    const int c = static_cast<int>(threadIdx.x) + it * kThreads;
    const int r = w8a8::copy_row(c), ch = w8a8::copy_chunk(c);
    const int k = k0 + ch * 16;
    const int row = row0 + r;
    const int bytes = row < rows_total ? min(max(K - k, 0), 16) : 0;
    const int8_t* src = bytes > 0 ? base + static_cast<int64_t>(row) * ld + k : base;
    uint8_t* dst = tile + w8a8::tile_offset(r, ch);
    if (kVec == 16) {
      cp_async_16(smem_u32(dst), src, bytes);
    } else {
      uint32_t w[4] = {0u, 0u, 0u, 0u};
#pragma unroll
      for (int i = 0; i < 16; ++i)
        if (i < bytes)
          w[i / 4] |= static_cast<uint32_t>(static_cast<uint8_t>(src[i])) << (8 * (i % 4));
      *reinterpret_cast<uint4*>(dst) = make_uint4(w[0], w[1], w[2], w[3]);
    }
  }
}

template <class C, int kVec, class TOut>
__global__ void __launch_bounds__(C::kThreads) w8a8_gemm_kernel(const GemmArgs p) {
  extern __shared__ __align__(128) uint8_t smem[];
  uint8_t* smem_a = smem;                                  // STAGES x [BM x 64]
  uint8_t* smem_b = smem + C::STAGES * C::BM * w8a8::kTileK;  // STAGES x [BN x 64]
  const int m0 = blockIdx.x * C::BM, n0 = blockIdx.y * C::BN;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int wm = (warp / C::WARPS_N) * C::WM, wn = (warp % C::WARPS_N) * C::WN;
  const int k_tiles = (p.K + w8a8::kTileK - 1) / w8a8::kTileK;

  int acc[C::MI][C::NI][4];
#pragma unroll
  for (int i = 0; i < C::MI; ++i)
#pragma unroll
    for (int j = 0; j < C::NI; ++j)
#pragma unroll
      for (int r = 0; r < 4; ++r) acc[i][j][r] = 0;

  auto load_stage = [&](int stage, int kt) {
    const int k0 = kt * w8a8::kTileK;
    load_tile<C::BM, C::kThreads, kVec>(smem_a + stage * C::BM * w8a8::kTileK, p.a, p.lda, m0,
                                        p.M, k0, p.K);
    load_tile<C::BN, C::kThreads, kVec>(smem_b + stage * C::BN * w8a8::kTileK, p.b, p.ldb, n0,
                                        p.N, k0, p.K);
  };

  // Prologue: STAGES - 1 tiles in flight (one commit group per tile, empty groups included,
  // so that wait_group counts tiles).
#pragma unroll
  for (int s = 0; s < C::STAGES - 1; ++s) {
    if (s < k_tiles) load_stage(s, s);
    cp_async_commit();
  }

  for (int kt = 0; kt < k_tiles; ++kt) {
    cp_async_wait<C::STAGES - 2>();  // tile kt has landed (for this thread's copies)
    __syncthreads();                 // ... for every thread's; stage (kt - 1) % STAGES is free
    const int next = kt + C::STAGES - 1;
    if (next < k_tiles) load_stage(next % C::STAGES, next);
    cp_async_commit();

    const int stage = kt % C::STAGES;
    const uint32_t a_tile = smem_u32(smem_a + stage * C::BM * w8a8::kTileK);
    const uint32_t b_tile = smem_u32(smem_b + stage * C::BN * w8a8::kTileK);
#pragma unroll
    for (int ks = 0; ks < w8a8::kTileK / w8a8::kMmaK; ++ks) {
      uint32_t af[C::MI][4];
      uint32_t bf[C::NI / 2][4];
#pragma unroll
      for (int i = 0; i < C::MI; ++i)
        ldmatrix_x4(af[i], a_tile + w8a8::tile_offset(wm + i * 16 + w8a8::ldsm_a_row(lane),
                                                      w8a8::ldsm_a_chunk(lane, ks)));
#pragma unroll
      for (int j = 0; j < C::NI / 2; ++j)
        ldmatrix_x4(bf[j], b_tile + w8a8::tile_offset(wn + j * 16 + w8a8::ldsm_b_row(lane),
                                                      w8a8::ldsm_b_chunk(lane, ks)));
#pragma unroll
      for (int i = 0; i < C::MI; ++i)
#pragma unroll
        for (int j = 0; j < C::NI; ++j)
          mma_s8(acc[i][j], af[i], bf[j / 2][(j % 2) * 2], bf[j / 2][(j % 2) * 2 + 1]);
    }
  }
  cp_async_wait<0>();

  // Epilogue: ((float(acc) * x_scale[m]) * w_scale[n]) + bias[n], each step rounded on its own
  // (no FMA contraction), as the reference's separate tensor ops.
  TOut* out = static_cast<TOut*>(p.out);
#pragma unroll
  for (int i = 0; i < C::MI; ++i) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int row = m0 + wm + i * 16 + w8a8::mma_c_row(lane, 2 * h);
      if (row >= p.M) continue;
      const float xs = p.x_scale[row];
      TOut* orow = out + static_cast<int64_t>(row) * p.ldc;
#pragma unroll
      for (int j = 0; j < C::NI; ++j)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int col = n0 + wn + j * 8 + w8a8::mma_c_col(lane, e);
          if (col >= p.N) continue;
          float v = __fmul_rn(__fmul_rn(__int2float_rn(acc[i][j][2 * h + e]), xs), p.w_scale[col]);
          if (p.bias != nullptr) v = __fadd_rn(v, p.bias[col]);
          orow[col] = from_float<TOut>(v);
        }
    }
  }
}

template <class C, int kVec, class TOut>
cudaError_t launch_w8a8(const GemmArgs& p, cudaStream_t stream) {
  auto kernel = w8a8_gemm_kernel<C, kVec, TOut>;
  if (C::kSmemBytes > 48 * 1024) {  // opt in to the larger dynamic shared memory (per device)
    int device = 0;
    cudaError_t err = cudaGetDevice(&device);
    if (err != cudaSuccess) return err;
    static unsigned long long opted_in = 0;  // bit d: done on device d
    if (device >= 64 || !(__atomic_load_n(&opted_in, __ATOMIC_RELAXED) >> device & 1ull)) {
      err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                 C::kSmemBytes);
      if (err != cudaSuccess) return err;
      if (device < 64) __atomic_fetch_or(&opted_in, 1ull << device, __ATOMIC_RELAXED);
    }
  }
  const dim3 grid(static_cast<unsigned>(ceil_div(p.M, C::BM)),
                  static_cast<unsigned>(ceil_div(p.N, C::BN)));
  kernel<<<grid, C::kThreads, C::kSmemBytes, stream>>>(p);
  return cudaGetLastError();
}

template <class C, class TOut>
cudaError_t launch_w8a8_aligned(const GemmArgs& p, cudaStream_t stream) {
  const bool vec16 = p.lda % 16 == 0 && p.ldb % 16 == 0 && is_aligned(p.a, 16) &&
                     is_aligned(p.b, 16);
  return vec16 ? launch_w8a8<C, 16, TOut>(p, stream) : launch_w8a8<C, 1, TOut>(p, stream);
}

template <class TOut>
cudaError_t launch_w8a8_out(const GemmArgs& p, cudaStream_t stream) {
  return p.M <= GemmSmallM::BM ? launch_w8a8_aligned<GemmSmallM, TOut>(p, stream)
                               : launch_w8a8_aligned<GemmLarge, TOut>(p, stream);
}

// =============================================================================================
// W8 weight-only GEMM.
// =============================================================================================

enum class ScaleMode {
  Channel,  // one scale per output channel, applied to the finished dot product
  Group16,  // per group along K, group_size a multiple of 16: one scale per 16-value chunk
  Group,    // per group, any group_size: each weight dequantised on its own
};

struct W8Args {
  const void* x;
  int64_t ld_x;
  const int8_t* w;
  int64_t ld_w;
  const float* scale;
  int64_t ld_scale;  // 1 for per-channel scales
  int64_t group_size;
  const float* bias;  // nullable
  void* out;
  int64_t ld_out;
  int64_t M, N, K;
  int64_t k_vec;  // k below this is read with 16-byte accesses (0: rows are misaligned)
};

// 4 int8 in a 32-bit word -> 4 floats: (byte ^ 0x80) placed in the mantissa of 2^23 gives
// 2^23 + 128 + value exactly, without an int->float conversion instruction.
__device__ __forceinline__ void decode_int8x4(uint32_t w, float* f) {
  const uint32_t u = w ^ 0x80808080u;
#pragma unroll
  for (int i = 0; i < 4; ++i)
    f[i] = __fsub_rn(__uint_as_float(__byte_perm(u, 0x4B000000u, 0x7440u + i)), 8388736.0f);
}

constexpr int kGemvWarps = 8;  // output channels per block, one per warp

// Decode-sized M (<= MT): warp n computes out[:, n]; each lane streams 16 weights per step with
// one 16-byte load, dequantises in registers and accumulates every row of x in float32.
template <class T, int MT, ScaleMode S>
__global__ void __launch_bounds__(kGemvWarps * 32) w8_gemv_kernel(const W8Args p) {
  constexpr int E = 16 / sizeof(T);  // x elements per 16-byte load
  const int lane = threadIdx.x % 32;
  const int64_t n = static_cast<int64_t>(blockIdx.x) * kGemvWarps + threadIdx.x / 32;
  if (n >= p.N) return;  // whole warps leave; no block-wide synchronisation follows
  const T* x = static_cast<const T*>(p.x);
  const int8_t* wr = p.w + n * p.ld_w;
  const float* sr = p.scale + n * p.ld_scale;

  float acc[MT];
#pragma unroll
  for (int m = 0; m < MT; ++m) acc[m] = 0.0f;

#pragma unroll 2
  for (int64_t k = lane * 16; k < p.k_vec; k += 32 * 16) {
    const uint4 wv = __ldg(reinterpret_cast<const uint4*>(wr + k));
    float wf[16];
    decode_int8x4(wv.x, wf);
    decode_int8x4(wv.y, wf + 4);
    decode_int8x4(wv.z, wf + 8);
    decode_int8x4(wv.w, wf + 12);
    float s = 1.0f;
    if (S == ScaleMode::Group16) s = sr[k / p.group_size];
    if (S == ScaleMode::Group) {
#pragma unroll
      for (int e = 0; e < 16; ++e) wf[e] = __fmul_rn(wf[e], sr[(k + e) / p.group_size]);
    }
#pragma unroll
    for (int m = 0; m < MT; ++m) {
      if (m >= p.M) break;
      const T* xr = x + m * p.ld_x + k;
      float part = 0.0f;
#pragma unroll
      for (int c = 0; c < 16 / E; ++c) {
        float xv[E];
        load_floats<T, E>(xr + c * E, xv);
#pragma unroll
        for (int e = 0; e < E; ++e) part = fmaf(xv[e], wf[c * E + e], part);
      }
      acc[m] = S == ScaleMode::Group16 ? fmaf(s, part, acc[m]) : acc[m] + part;
    }
  }
  // The k tail (and every k when the rows are misaligned): one weight per lane.
  for (int64_t k = p.k_vec + lane; k < p.K; k += 32) {
    float wv = static_cast<float>(wr[k]);
    if (S != ScaleMode::Channel) wv = __fmul_rn(wv, sr[k / p.group_size]);
#pragma unroll
    for (int m = 0; m < MT; ++m) {
      if (m >= p.M) break;
      acc[m] = fmaf(to_float(x[m * p.ld_x + k]), wv, acc[m]);
    }
  }
#pragma unroll
  for (int m = 0; m < MT; ++m) acc[m] = warp_sum(acc[m]);
  T* out = static_cast<T*>(p.out);
#pragma unroll
  for (int m = 0; m < MT; ++m) {
    if (m >= p.M) break;
    if (lane == m) {
      float v = acc[m];
      if (S == ScaleMode::Channel) v *= sr[0];
      if (p.bias != nullptr) v += p.bias[n];
      out[m * p.ld_out + n] = from_float<T>(v);
    }
  }
}

// Larger M: 64 x 64 output tiles, x and the dequantised weights staged as float32 in shared
// memory (k-major), 4 x 4 outputs per thread.
constexpr int kTileM = 64, kTileN = 64, kTileK = 32, kTiledThreads = 256;

template <class T, bool kGrouped>
__global__ void __launch_bounds__(kTiledThreads) w8_tiled_kernel(const W8Args p) {
  __shared__ __align__(16) float xs[kTileK][kTileM + 4];
  __shared__ __align__(16) float ws[kTileK][kTileN + 4];
  const T* x = static_cast<const T*>(p.x);
  const int64_t m0 = static_cast<int64_t>(blockIdx.x) * kTileM;
  const int64_t n0 = static_cast<int64_t>(blockIdx.y) * kTileN;
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  float acc[4][4] = {};

  for (int64_t k0 = 0; k0 < p.K; k0 += kTileK) {
    // Consecutive threads read consecutive k of one row: coalesced.
#pragma unroll
    for (int it = 0; it < kTileM * kTileK / kTiledThreads; ++it) {
      const int e = threadIdx.x + it * kTiledThreads;
      const int r = e / kTileK, kk = e % kTileK;
      const int64_t m = m0 + r, k = k0 + kk;
      xs[kk][r] = (m < p.M && k < p.K) ? to_float(x[m * p.ld_x + k]) : 0.0f;
    }
#pragma unroll
    for (int it = 0; it < kTileN * kTileK / kTiledThreads; ++it) {
      const int e = threadIdx.x + it * kTiledThreads;
      const int r = e / kTileK, kk = e % kTileK;
      const int64_t n = n0 + r, k = k0 + kk;
      float v = 0.0f;
      if (n < p.N && k < p.K) {
        const float s = kGrouped ? p.scale[n * p.ld_scale + k / p.group_size] : p.scale[n];
        v = __fmul_rn(static_cast<float>(p.w[n * p.ld_w + k]), s);
      }
      ws[kk][r] = v;
    }
    __syncthreads();
#pragma unroll 8
    for (int kk = 0; kk < kTileK; ++kk) {
      const float4 a = *reinterpret_cast<const float4*>(&xs[kk][ty * 4]);
      const float4 b = *reinterpret_cast<const float4*>(&ws[kk][tx * 4]);
      const float av[4] = {a.x, a.y, a.z, a.w}, bv[4] = {b.x, b.y, b.z, b.w};
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(av[i], bv[j], acc[i][j]);
    }
    __syncthreads();
  }
  T* out = static_cast<T*>(p.out);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int64_t m = m0 + ty * 4 + i;
    if (m >= p.M) continue;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int64_t n = n0 + tx * 4 + j;
      if (n >= p.N) continue;
      float v = acc[i][j];
      if (p.bias != nullptr) v += p.bias[n];
      out[m * p.ld_out + n] = from_float<T>(v);
    }
  }
}

template <class T, int MT>
cudaError_t launch_gemv(const W8Args& p, cudaStream_t stream) {
  const unsigned blocks = static_cast<unsigned>(ceil_div(p.N, kGemvWarps));
  constexpr int threads = kGemvWarps * 32;
  if (p.group_size == 0)
    w8_gemv_kernel<T, MT, ScaleMode::Channel><<<blocks, threads, 0, stream>>>(p);
  else if (p.group_size % 16 == 0)
    w8_gemv_kernel<T, MT, ScaleMode::Group16><<<blocks, threads, 0, stream>>>(p);
  else
    w8_gemv_kernel<T, MT, ScaleMode::Group><<<blocks, threads, 0, stream>>>(p);
  return cudaGetLastError();
}

template <class T>
cudaError_t launch_w8(W8Args p, cudaStream_t stream) {
  const bool rows_ok = p.ld_w % 16 == 0 && is_aligned(p.w, 16) && is_aligned(p.x, 16) &&
                       (p.M == 1 || (p.ld_x * static_cast<int64_t>(sizeof(T))) % 16 == 0);
  p.k_vec = rows_ok ? (p.K / 16) * 16 : 0;
  if (p.M == 1) return launch_gemv<T, 1>(p, stream);
  if (p.M == 2) return launch_gemv<T, 2>(p, stream);
  if (p.M <= 4) return launch_gemv<T, 4>(p, stream);
  const dim3 grid(static_cast<unsigned>(ceil_div(p.M, kTileM)),
                  static_cast<unsigned>(ceil_div(p.N, kTileN)));
  if (p.group_size == 0)
    w8_tiled_kernel<T, false><<<grid, kTiledThreads, 0, stream>>>(p);
  else
    w8_tiled_kernel<T, true><<<grid, kTiledThreads, 0, stream>>>(p);
  return cudaGetLastError();
}

constexpr int64_t kMaxGridY = 65535;

}  // namespace

cudaError_t quantize_per_token(const void* x, FloatType x_type, int64_t ld_x, int8_t* q,
                               int64_t ld_q, float* scale, const float* static_scale, int64_t M,
                               int64_t K, cudaStream_t stream) {
  if (M <= 0 || K <= 0 || M > INT32_MAX) return cudaErrorInvalidValue;
  switch (x_type) {
    case FloatType::F32:
      return launch_quantize(static_cast<const float*>(x), ld_x, q, ld_q, scale, static_scale,
                             M, K, stream);
    case FloatType::F16:
      return launch_quantize(static_cast<const __half*>(x), ld_x, q, ld_q, scale, static_scale,
                             M, K, stream);
    case FloatType::BF16:
      return launch_quantize(static_cast<const __nv_bfloat16*>(x), ld_x, q, ld_q, scale,
                             static_scale, M, K, stream);
  }
  return cudaErrorInvalidValue;
}

cudaError_t w8a8_gemm(const int8_t* x_q, int64_t ld_x, const int8_t* w_q, int64_t ld_w,
                      const float* x_scale, const float* w_scale, const float* bias, void* out,
                      FloatType out_type, int64_t ld_out, int64_t M, int64_t N, int64_t K,
                      cudaStream_t stream) {
  if (M <= 0 || N <= 0 || K <= 0 || K > (int64_t{1} << 17) || M > INT32_MAX ||
      ceil_div(N, GemmLarge::BN) > kMaxGridY)
    return cudaErrorInvalidValue;
  const GemmArgs p{x_q,  ld_x, w_q,    ld_w,
                   x_scale, w_scale, bias, out, ld_out,
                   static_cast<int>(M), static_cast<int>(N), static_cast<int>(K)};
  switch (out_type) {
    case FloatType::F32: return launch_w8a8_out<float>(p, stream);
    case FloatType::F16: return launch_w8a8_out<__half>(p, stream);
    case FloatType::BF16: return launch_w8a8_out<__nv_bfloat16>(p, stream);
  }
  return cudaErrorInvalidValue;
}

cudaError_t w8_gemm(const void* x, FloatType x_type, int64_t ld_x, const int8_t* w_q,
                    int64_t ld_w, const float* scale, int64_t ld_scale, int64_t group_size,
                    const float* bias, void* out, int64_t ld_out, int64_t M, int64_t N, int64_t K,
                    cudaStream_t stream) {
  if (M <= 0 || N <= 0 || K <= 0 || group_size < 0 || ceil_div(N, kTileN) > kMaxGridY ||
      ceil_div(N, kGemvWarps) > INT32_MAX || ceil_div(M, kTileM) > INT32_MAX)
    return cudaErrorInvalidValue;
  const W8Args p{x,     ld_x,   w_q,    ld_w, scale, group_size == 0 ? 1 : ld_scale,
                 group_size, bias, out, ld_out, M,    N,     K,      0};
  switch (x_type) {
    case FloatType::F32: return launch_w8<float>(p, stream);
    case FloatType::F16: return launch_w8<__half>(p, stream);
    case FloatType::BF16: return launch_w8<__nv_bfloat16>(p, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace cuda
}  // namespace llmkern
