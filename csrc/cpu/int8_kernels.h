// INT8 CPU kernels: per-token activation quantisation, W8A8 GEMM with a fused epilogue and
// int8 weight-only GEMM, on weights pre-packed once into the layouts described below.
//
// This header has no torch and no intrinsics: it is shared by the ISA-specific kernel files
// (int8_{scalar,avx2,avx512,avx512_vnni,amx}.cpp) and by the torch glue (int8_ops.cpp), which
// picks the variant at run time and parallelises over output tiles.
#pragma once

#include <algorithm>
#include <array>
#include <cstdint>
#include <utility>

#include <xmmintrin.h>

namespace llmkern::int8 {

enum class DType : int32_t { F32 = 0, BF16 = 1, F16 = 2 };

// How a kernel wants quantised activations: vpdpbusd multiplies unsigned by signed bytes, so
// the VNNI path stores q + 128 and subtracts 128 * sum_k w[n, k] afterwards; the AVX2 and
// AVX-512 paths widen to int16 for vpmaddwd (exact, unlike the saturating vpmaddubsw).
enum class ActFormat : int32_t { S8 = 0, U8 = 1, S16 = 2 };

constexpr int64_t kPanel = 64;  // output channels per weight panel (4 zmm of 16 lanes)
constexpr int64_t kLane = 16;   // N is padded to a multiple of this inside a packed weight
constexpr int64_t kHeaderBytes = 128;
constexpr int64_t kMagic = 0x39494b4c4d4c4c;  // "LLMLKI9" (layout version 2: w_has_min)
constexpr int64_t kKindW8A8 = 1;
constexpr int64_t kKindW8 = 2;

inline int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

// Every packed weight starts with this header, so the glue can check a buffer against the
// call before any kernel reads it.
struct PackedHeader {
  int64_t magic;
  int64_t kind;        // kKindW8A8 or kKindW8
  int64_t n, k;        // logical weight shape [N, K]
  int64_t group_size;  // W8: scale group along K (K for per-channel scales); W8A8: 0
  int64_t groups;      // W8: ceil(K / group_size); W8A8: 0
  int64_t aux_offset;  // byte offset of the int32 compensation (W8A8) or float scales (W8)
  int64_t nbytes;      // total size of the buffer
  int64_t w_has_min;   // W8A8: 1 when some weight is -128 (see W8a8Args::w_has_min); W8: 0
};
static_assert(sizeof(PackedHeader) <= kHeaderBytes, "header must fit its slot");

// W8A8 layout. K is padded to kp = round_up(K, 4) and N to round_up(N, 16), both with zero
// weights. Panels of 64 output channels (the last one 16, 32, 48 or 64 wide) follow each other;
// panel p starts at byte 64 * p * kp and holds, for each group of 4 k, 4 bytes per channel:
//   panel[(kk * width + j) * 4 + t] = w[64 p + j, 4 kk + t]
// which is the operand order of vpdpbusd. aux: int32 comp[n_pad] = 128 * sum_k w[n, k].
int64_t w8a8_packed_bytes(int64_t n, int64_t k);
// Packing: the header (and zeroed padding) first, then panels [p0, p1) (independent, so the
// glue packs them in parallel).
void pack_w8a8_header(int64_t n, int64_t k, bool w_has_min, uint8_t* dst);
void pack_w8a8_panels(const int8_t* w, uint8_t* dst, int64_t p0, int64_t p1);

// W8 (weight-only) layout: N padded to 16, panels of 64 channels, one k per row of a panel:
//   panel[k * width + j] = w[64 p + j, k]   (panel p starts at byte 64 * p * K)
// aux: float scales, per panel [groups][width] (per-channel scales are one group of size K).
int64_t w8_packed_bytes(int64_t n, int64_t k, int64_t groups);
void pack_w8_header(int64_t n, int64_t k, int64_t group_size, uint8_t* dst);
void pack_w8_panels(const int8_t* w, const float* scale, uint8_t* dst, int64_t p0, int64_t p1);

// Quantise rows [r0, r1) of x: dynamic per-row absmax (see llmkern/ops/int8.py), or a static
// per-tensor scale when is_static. Row r of q gets ld_q values; columns [k, ld_q) are zero
// (in q's domain). scale[r] is the row's dequantisation scale (NaN for a non-finite row).
struct QuantizeArgs {
  const void* x;
  DType x_dtype;
  int64_t ld_x, k;
  void* q;
  ActFormat q_format;
  int64_t ld_q;
  float* scale;
  bool is_static;
  float static_scale;
};

// The row's quantisation factor `inv` and dequantisation scale, by the rule of
// llmkern/ops/int8.py: a static scale when calibrated; else inv = 127 / absmax rounded once, and
// a zero row, or a tiny one whose inv overflows to inf, quantises to 0 with scale 1. A non-finite
// row gets inv 0 and scale NaN. `static` keeps one internal copy per ISA translation unit (each
// compiled for its own target).
static inline void row_scale(const QuantizeArgs& a, bool finite, float absmax, float* inv,
                             float* scale) {
  if (!finite) {
    *inv = 0.f;
    *scale = __builtin_nanf("");
  } else if (a.is_static) {
    *inv = 1.0f / a.static_scale;
    *scale = a.static_scale;
  } else {
    const float r = 127.0f / absmax;  // +inf when absmax is 0 or below 127 / FLT_MAX
    const bool ok = r <= 3.4028234663852886e38f;
    *inv = ok ? r : 0.f;
    *scale = ok ? absmax / 127.0f : 1.0f;
  }
}

// out[m, n] = float(sum_k a[m, k] * w[n, k]) * x_scale[m] * w_scale[n] + bias[n], cast to
// out_dtype, for rows [m0, m1) and panels [p0, p1). a is in the ISA's ActFormat, rows of kp.
struct W8a8Args {
  const void* a;
  int64_t m, n, kp;
  const int8_t* w;       // packed panels
  const int32_t* comp;  // [n_pad], used with ActFormat::U8
  const float* x_scale;  // [m]
  const float* w_scale;  // [n]
  const float* bias;     // [n] or nullptr
  void* out;
  DType out_dtype;
  int64_t ld_out;
  bool w_has_min;  // a weight is -128: kernels that move x's sign onto w (vpsignb) cannot run
};

// out[m, n] = sum_k x[m, k] * (w[n, k] * scale[n, k / group_size]) + bias[n], cast to
// out_dtype, for rows [m0, m1) and panels [p0, p1). x is float32 in blocks of x_rows rows
// (min(M, 8)), k-major inside a block so a micro-kernel's broadcasts read consecutive floats:
//   x[m, k] at x[((m / x_rows) * k_total + k) * x_rows + m % x_rows]   (rows past M are 0)
// Row tiles start at multiples of x_rows and micro-kernels never cross a block.
constexpr int64_t kMaxXRows = 8;
// Columns per int16 x block of the rounded weight-only path: even (k pairs never straddle two
// blocks) and small enough that a block's int32 sums stay exact: 128 * 128 * 32767 < 2^31.
constexpr int64_t kW8XBlock = 128;
// Rows of x up to which the AVX2 weight-only kernels (dense and 2:4) round x to int16.
constexpr int64_t kW8Int16Rows = 4;
// The same on AVX-512 VNNI (and VBMI for the 2:4 kernel): every row count up to where the
// weight-only op hands fp32 calls to torch's GEMM (llmkern.cpu.int8.W8_GEMM_ROWS), as vpdpwssd
// on int16 x beat the fp32 FMA kernel at every M measured (int8_avx512_vnni.cpp).
constexpr int64_t kW8Int16RowsVnni = 1024;
// And on AMX machines (from 3 rows on AMX tiles, kAmxW8Rows): every row count, as the tiles beat
// torch's fp32 GEMM on the dequantised weight at every M measured.
constexpr int64_t kW8Int16RowsAmx = INT64_MAX;
inline int64_t x_block_rows(int64_t m) { return m < kMaxXRows ? m : kMaxXRows; }

// The weight-only kernels stream each panel once, one row of `width` bytes per k. Row k + 16
// goes to L1 and row k + 64 to L2: with the L1 prefetch alone, M = 1 from DRAM read 19 GB/s of a
// measured 29 (Intel Xeon with AMX, 2 threads); with both, 22-24.
inline void prefetch_w8_row(const int8_t* panel, int64_t k, int64_t width) {
  _mm_prefetch(reinterpret_cast<const char*>(panel + (k + 16) * width), _MM_HINT_T0);
  _mm_prefetch(reinterpret_cast<const char*>(panel + (k + 64) * width), _MM_HINT_T1);
}

struct W8Args {
  const float* x;
  int64_t x_rows, m, n, k;
  const int8_t* w;       // packed panels
  const float* scales;   // packed scales
  int64_t group_size, groups;
  const float* bias;  // [n] or nullptr

  const float* x_row(int64_t row) const {
    return x + (row / x_rows) * k * x_rows + row % x_rows;
  }
  void* out;
  DType out_dtype;
  int64_t ld_out;
  // x rounded to int16 (AVX2, few rows, scale groups of whole blocks; round_x_int16_avx2), or null:
  // row r at xq + r * xq_ld (xq_ld even, zero past K), x ~ xq * xq_scale[r * blocks + k / kW8XBlock].
  const int16_t* xq = nullptr;
  const float* xq_scale = nullptr;
  int64_t xq_ld = 0;
  // The AMX kernel's bytes of xq, or null: xq = 256 hi + lo + 128 (hi, lo signed), as tiles
  // (split_x_bytes_amx) of amx_w8_x_rows(m) rows of x by kAmxW8Step columns, x_bytes_steps of
  // them per row tile.
  const int8_t* x_bytes = nullptr;
  int64_t x_bytes_steps = 0;
};

// Micro-kernel table: entry (mr - 1) * MaxNV + (nv - 1) is Kernel<mr, nv>::run.
template <template <int, int> class Kernel, class Args, int MaxNV, int... I>
auto kernel_table(std::integer_sequence<int, I...>) {
  using Fn = void (*)(const Args&, int64_t m, int64_t p, int64_t width, int64_t v0);
  return std::array<Fn, sizeof...(I)>{&Kernel<I / MaxNV + 1, I % MaxNV + 1>::run...};
}

// Runs Kernel<MR, NV> over rows [m0, m1) and panels [p0, p1): blocks of at most MaxMR rows
// and MaxNV 16-channel vectors of a panel.
template <int MaxMR, int MaxNV, template <int, int> class Kernel, class Args>
void run_tiles(const Args& a, int64_t m0, int64_t m1, int64_t p0, int64_t p1) {
  static const auto table =
      kernel_table<Kernel, Args, MaxNV>(std::make_integer_sequence<int, MaxMR * MaxNV>{});
  const int64_t n_pad = round_up(a.n, kLane);
  for (int64_t p = p0; p < p1; ++p) {
    const int64_t nvec = std::min(kPanel, n_pad - p * kPanel) / 16;
    for (int64_t m = m0; m < m1; m += MaxMR) {
      const int64_t mr = std::min<int64_t>(MaxMR, m1 - m);
      for (int64_t v0 = 0; v0 < nvec; v0 += MaxNV) {
        const int64_t nv = std::min<int64_t>(MaxNV, nvec - v0);
        table[(mr - 1) * MaxNV + (nv - 1)](a, m, p, nvec * 16, v0);
      }
    }
  }
}

#define LLMKERN_INT8_DECLARE(isa)                                                    \
  void quantize_rows_##isa(const QuantizeArgs& args, int64_t r0, int64_t r1);        \
  void w8a8_tile_##isa(const W8a8Args& args, int64_t m0, int64_t m1, int64_t p0, \
                       int64_t p1);                                                  \
  void w8_tile_##isa(const W8Args& args, int64_t m0, int64_t m1, int64_t p0, int64_t p1);

// x [m, k] (rows ld_x apart, unit column stride) rounded for W8Int16 into q (rows ld_q apart,
// zero past k) and scale [m, blocks]: per row and kW8XBlock columns, q = round(x / s) clamped to
// +-32767 with s = 2^(e - 15), e the block's absmax exponent (absmax < 2^e). So |x - q s| <=
// 2^-14 absmax, and bf16 x within 2^7 of its block's absmax is exact. False when a block is not
// finite or its absmax is below 2^-100 (s would underflow): the float kernels take those calls.
bool round_x_int16_avx2(const void* x, DType dtype, int64_t ld_x, int64_t m, int64_t k, int16_t* q,
                        int64_t ld_q, float* scale);

LLMKERN_INT8_DECLARE(scalar)
LLMKERN_INT8_DECLARE(avx2)
LLMKERN_INT8_DECLARE(avx512)
#undef LLMKERN_INT8_DECLARE

// The VNNI variant differs only in the W8A8 inner product (quantisation and weight-only are
// the AVX-512 ones).
void w8a8_tile_avx512_vnni(const W8a8Args& args, int64_t m0, int64_t m1, int64_t p0, int64_t p1);
// Weight-only on int16 x (W8Args::xq) with vpdpwssd, rows up to kW8Int16RowsVnni.
void w8_int16_tile_avx512_vnni(const W8Args& args, int64_t m0, int64_t m1, int64_t p0, int64_t p1);
// The AMX variant reads the VNNI activations and panels with tile instructions.
void w8a8_tile_amx(const W8a8Args& args, int64_t m0, int64_t m1, int64_t p0, int64_t p1);
// Weight-only on W8Args::x_bytes with AMX tiles: the same int32 block sums as
// w8_int16_tile_avx512_vnni, so the same results to the bit.
void w8_int16_tile_amx(const W8Args& args, int64_t m0, int64_t m1, int64_t p0, int64_t p1);
// Rows of x per tile of that kernel (two byte rows each), and for a call of m rows.
constexpr int64_t kAmxW8XRows = 8;
inline int64_t amx_w8_x_rows(int64_t m) { return m < kAmxW8XRows ? m : kAmxW8XRows; }
// Columns per k step of that kernel (64 bytes per tile row).
constexpr int64_t kAmxW8Step = 64;
// Row tiles [t0, t1) of xq (m x k, rows ld_q apart) as W8Args::x_bytes in dst: tile t, step s at
// dst + (t * steps + s) * 2 * rows * kAmxW8Step holds rows 2r (hi) and 2r + 1 (lo) of x row
// t * rows + r, columns [s * kAmxW8Step, (s + 1) * kAmxW8Step) (rows past m are 0; columns past k
// are any value: the weights there are 0).
void split_x_bytes_amx(const int16_t* xq, int64_t ld_q, int64_t m, int64_t k, int64_t t0, int64_t t1,
                       int8_t* dst);

}  // namespace llmkern::int8
