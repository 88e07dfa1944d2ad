// AVX2 INT8 kernels: activation quantisation, W8A8 GEMM (int16 vpmaddwd, exact) and
// weight-only GEMM. Partial vectors at row ends go through small stack buffers.
#pragma GCC target("avx2,fma,f16c")

#include <immintrin.h>

#include <cmath>
#include <cstring>

#include "cpu/int8_kernels.h"

namespace llmkern::int8 {
namespace {

constexpr int kRne = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;

int64_t dtype_bytes(DType d) { return d == DType::F32 ? 4 : 2; }

// 8 floats from element i of x; only the first `count` are read (the rest are 0).
template <DType D>
__m256 load8(const void* base, int64_t i, int64_t count) {
  constexpr int64_t bytes = D == DType::F32 ? 4 : 2;
  alignas(32) uint8_t tmp[32] = {};
  const uint8_t* src = static_cast<const uint8_t*>(base) + i * bytes;
  if (count < 8) {
    if (count > 0) std::memcpy(tmp, src, count * bytes);
    src = tmp;
  }
  if constexpr (D == DType::F32) {
    return _mm256_loadu_ps(reinterpret_cast<const float*>(src));
  } else {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src));
    if constexpr (D == DType::BF16)
      return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
    else
      return _mm256_cvtph_ps(h);
  }
}

// 8 int32 lanes (each within 0..65535) -> 8 uint16 in a 128-bit register.
__m128i narrow16(__m256i v) {
  return _mm256_castsi256_si128(_mm256_permute4x64_epi64(_mm256_packus_epi32(v, v), 0xd8));
}

// Round-to-nearest-even float -> bfloat16, NaN -> 0x7FC0 (torch's conversion).
__m128i to_bf16(__m256 v) {
  const __m256i bits = _mm256_castps_si256(v);
  const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(1));
  __m256i r = _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(bits, _mm256_set1_epi32(0x7fff)), lsb), 16);
  const __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
  r = _mm256_blendv_epi8(r, _mm256_set1_epi32(0x7fc0), nan);
  return narrow16(r);
}

// Stores the first `count` (<= 8) of v at element i of out, converted to dtype.
void store8(void* base, DType dtype, int64_t i, __m256 v, int64_t count) {
  alignas(32) uint8_t tmp[32];
  const int64_t bytes = dtype_bytes(dtype);
  uint8_t* dst = static_cast<uint8_t*>(base) + i * bytes;
  uint8_t* to = count == 8 ? dst : tmp;
  switch (dtype) {
    case DType::F32: _mm256_storeu_ps(reinterpret_cast<float*>(to), v); break;
    case DType::BF16: _mm_storeu_si128(reinterpret_cast<__m128i*>(to), to_bf16(v)); break;
    case DType::F16:
      _mm_storeu_si128(reinterpret_cast<__m128i*>(to), _mm256_cvtps_ph(v, kRne));
      break;
  }
  if (to == tmp) std::memcpy(dst, tmp, count * bytes);
}

// 8 floats from p, only the first `count` read.
__m256 load_f32(const float* p, int64_t count) { return load8<DType::F32>(p, 0, count); }

// Bits of max |x| over elements [i, i + count) of x: as unsigned integers NaN and inf compare
// above every finite value, so bits >= 0x7f800000 means a non-finite element.
template <DType D>
uint32_t absmax_bits(const void* x, int64_t i, int64_t count) {
  __m256i mx = _mm256_setzero_si256();
  for (int64_t c = 0; c < count; c += 8) {
    const __m256 v = load8<D>(x, i + c, count - c);
    mx = _mm256_max_epu32(mx, _mm256_and_si256(_mm256_castps_si256(v), _mm256_set1_epi32(0x7fffffff)));
  }
  alignas(32) uint32_t lanes[8];
  _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), mx);
  uint32_t bits = 0;
  for (uint32_t l : lanes) bits = std::max(bits, l);
  return bits;
}

template <DType D>
void quantize_row(const QuantizeArgs& a, int64_t r) {
  const int64_t base = r * a.ld_x;
  const uint32_t maxbits = absmax_bits<D>(a.x, base, a.k);
  const bool finite = maxbits < 0x7f800000u;
  float absmax;
  std::memcpy(&absmax, &maxbits, 4);
  float inv, scale;
  row_scale(a, finite, absmax, &inv, &scale);
  a.scale[r] = scale;
  const __m256 vinv = _mm256_set1_ps(inv);
  const __m256 lo = _mm256_set1_ps(-127.f), hi = _mm256_set1_ps(127.f);
  const int64_t k = finite ? a.k : 0;  // columns past k (all, for a non-finite row) store 0
  for (int64_t c = 0; c < a.ld_q; c += 8) {
    // Clamp before converting: a static scale can map values beyond the int32 range.
    const __m256 v = _mm256_mul_ps(load8<D>(a.x, base + c, k - c), vinv);
    const __m256 clamped = _mm256_min_ps(_mm256_max_ps(v, lo), hi);
    __m256i q = _mm256_cvttps_epi32(_mm256_round_ps(clamped, kRne));
    const int64_t count = std::min<int64_t>(8, a.ld_q - c);
    const int64_t elem = a.q_format == ActFormat::S16 ? 2 : 1;
    uint8_t* dst = static_cast<uint8_t*>(a.q) + (r * a.ld_q + c) * elem;
    alignas(16) uint8_t tmp[16];
    uint8_t* to = count == 8 ? dst : tmp;  // whole vectors go straight to q
    switch (a.q_format) {
      case ActFormat::S8: {
        const __m128i w = _mm256_castsi256_si128(
            _mm256_permute4x64_epi64(_mm256_packs_epi32(q, q), 0xd8));
        _mm_storel_epi64(reinterpret_cast<__m128i*>(to), _mm_packs_epi16(w, w));
        break;
      }
      case ActFormat::U8: {
        const __m128i w = narrow16(_mm256_add_epi32(q, _mm256_set1_epi32(128)));
        _mm_storel_epi64(reinterpret_cast<__m128i*>(to), _mm_packus_epi16(w, w));
        break;
      }
      case ActFormat::S16:
        _mm_storeu_si128(reinterpret_cast<__m128i*>(to),
                         _mm256_castsi256_si128(_mm256_permute4x64_epi64(_mm256_packs_epi32(q, q), 0xd8)));
        break;
    }
    if (to == tmp) std::memcpy(dst, tmp, count * elem);
  }
}

// The 8 bytes at p in every 64-bit lane, loaded anew at each use: an asm statement, so that the
// compiler cannot keep it in a register (the W8A8 kernel needs every register for accumulators).
inline __m256i broadcast8(const void* p) {
  __m256i v;
  __asm__ volatile("vpbroadcastq %1, %0" : "=x"(v) : "m"(*static_cast<const int64_t*>(p)));
  return v;
}

// W8A8 micro-kernel: rows [m, m + MR) x 16-channel vectors [v0, v0 + NV) of panel p. Each
// 16-byte quarter of a 64-byte weight vector (4 channels x 4 k) is widened to int16 once and
// multiplied by the MR rows' 4 broadcast int16 activations with vpmaddwd (two partial sums
// per channel, added pairwise in the epilogue).
template <int MR, int NV>
struct W8a8S16 {
  static void run(const W8a8Args& a, int64_t m, int64_t p, int64_t width, int64_t v0) {
    const int16_t* x = static_cast<const int16_t*>(a.a) + m * a.kp;
    const int8_t* b = a.w + p * kPanel * a.kp + v0 * 64;
    __m256i acc[MR][NV * 4];
    _Pragma("GCC unroll 32")
    for (int r = 0; r < MR; ++r)
      _Pragma("GCC unroll 32")
      for (int q = 0; q < NV * 4; ++q) acc[r][q] = _mm256_setzero_si256();
    const int64_t kk_end = a.kp / 4;
    for (int64_t kk = 0; kk < kk_end; ++kk) {
      // Rows but the last keep their broadcast activations in registers; the last row's are
      // broadcast again per quarter (a load), which leaves room for all 4 * MR accumulators.
      __m256i xb[MR];
      _Pragma("GCC unroll 32")
      for (int r = 0; r < MR - 1; ++r) {
        int64_t four;
        std::memcpy(&four, x + r * a.kp + kk * 4, 8);
        xb[r] = _mm256_set1_epi64x(four);
      }
      const int8_t* bk = b + kk * width * 4;
      _Pragma("GCC unroll 32")
      for (int q = 0; q < NV * 4; ++q) {
        const __m256i w = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(bk + q * 16)));
        _Pragma("GCC unroll 32")
        for (int r = 0; r < MR - 1; ++r) acc[r][q] = _mm256_add_epi32(acc[r][q], _mm256_madd_epi16(w, xb[r]));
        acc[MR - 1][q] = _mm256_add_epi32(acc[MR - 1][q], _mm256_madd_epi16(w, broadcast8(x + (MR - 1) * a.kp + kk * 4)));
      }
    }
    _Pragma("GCC unroll 32")
    for (int r = 0; r < MR; ++r)
      _Pragma("GCC unroll 32")
      for (int v = 0; v < NV; ++v)
        _Pragma("GCC unroll 2")
        for (int h = 0; h < 2; ++h) {
          const int64_t n0 = p * kPanel + (v0 + v) * 16 + h * 8;
          if (n0 >= a.n) continue;
          const int64_t count = std::min<int64_t>(8, a.n - n0);
          const __m256i sum = _mm256_permute4x64_epi64(
              _mm256_hadd_epi32(acc[r][4 * v + 2 * h], acc[r][4 * v + 2 * h + 1]), 0xd8);
          const int64_t row = m + r;
          __m256 out = _mm256_cvtepi32_ps(sum);
          out = _mm256_mul_ps(out, _mm256_set1_ps(a.x_scale[row]));
          out = _mm256_mul_ps(out, load_f32(a.w_scale + n0, count));
          if (a.bias) out = _mm256_add_ps(out, load_f32(a.bias + n0, count));
          store8(a.out, a.out_dtype, row * a.ld_out + n0, out, count);
        }
  }
};

// W8A8 micro-kernel for few rows (memory-bound): row m x the NV8 8-channel vectors of panel p,
// reading each 32-byte weight vector (8 channels x 4 k) as it lies. vpmaddubsw multiplies
// unsigned by signed bytes: |x| times w with x's sign moved onto w (vpsignb) gives exact pair
// sums (|x| <= 128, |w| <= 127: at most 32512), widened by vpmaddwd with ones. Needs a packed
// weight without -128 (vpsignb cannot negate it).
template <int NV8>
struct W8a8Sign {
  // `fetch`: the panel comes from memory (the first row over it), not from L2.
  static void run(const W8a8Args& a, int64_t m, int64_t p, int64_t width, bool fetch) {
    const int16_t* x = static_cast<const int16_t*>(a.a) + m * a.kp;
    const int8_t* b = a.w + p * kPanel * a.kp;
    const __m256i ones = _mm256_set1_epi16(1);
    __m256i acc[NV8];
    _Pragma("GCC unroll 32")
    for (int v = 0; v < NV8; ++v) acc[v] = _mm256_setzero_si256();
    const int64_t kk_end = a.kp / 4, stride = width * 4;
    for (int64_t kk = 0; kk < kk_end; ++kk) {
      const int8_t* bk = b + kk * stride;
      // Every line of the panel row 16 steps ahead: the hardware prefetcher alone leaves the
      // DRAM stream and the multiplies unoverlapped (M = 1 at 8.6 GB/s vs 14 GB/s read).
      if (fetch) {
        _Pragma("GCC unroll 8")
        for (int64_t l = 0; l < stride; l += 64)
          _mm_prefetch(reinterpret_cast<const char*>(bk + 16 * stride + l), _MM_HINT_T0);
      }
      const __m128i x16 = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(x + kk * 4));
      const __m256i xs = _mm256_broadcastd_epi32(_mm_packs_epi16(x16, x16));
      const __m256i xa = _mm256_abs_epi8(xs);
      _Pragma("GCC unroll 32")
      for (int v = 0; v < NV8; ++v) {
        const __m256i w = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(bk + v * 32));
        const __m256i pairs = _mm256_maddubs_epi16(xa, _mm256_sign_epi8(w, xs));
        acc[v] = _mm256_add_epi32(acc[v], _mm256_madd_epi16(pairs, ones));
      }
    }
    _Pragma("GCC unroll 32")
    for (int v = 0; v < NV8; ++v) {
      const int64_t n0 = p * kPanel + v * 8;
      if (n0 >= a.n) continue;
      const int64_t count = std::min<int64_t>(8, a.n - n0);
      __m256 out = _mm256_cvtepi32_ps(acc[v]);
      out = _mm256_mul_ps(out, _mm256_set1_ps(a.x_scale[m]));
      out = _mm256_mul_ps(out, load_f32(a.w_scale + n0, count));
      if (a.bias) out = _mm256_add_ps(out, load_f32(a.bias + n0, count));
      store8(a.out, a.out_dtype, m * a.ld_out + n0, out, count);
    }
  }
};

// Weight-only epilogue: rows [m, m + MR) x the tile's channels, + bias, cast to out_dtype.
// The weight scales are already in acc.
template <int MR, int NV>
void w8_store(const W8Args& a, int64_t m, int64_t p, int64_t v0, const __m256 (&acc)[MR][2 * NV]) {
  _Pragma("GCC unroll 32")
  for (int r = 0; r < MR; ++r)
    _Pragma("GCC unroll 32")
    for (int v = 0; v < 2 * NV; ++v) {
      const int64_t n0 = p * kPanel + v0 * 16 + v * 8;
      if (n0 >= a.n) continue;
      const int64_t count = std::min<int64_t>(8, a.n - n0);
      __m256 out = acc[r][v];
      if (a.bias) out = _mm256_add_ps(out, load_f32(a.bias + n0, count));
      store8(a.out, a.out_dtype, (m + r) * a.ld_out + n0, out, count);
    }
}

// Weight-only micro-kernel: rows [m, m + MR) x 16-channel vectors [v0, v0 + NV) of panel p.
// Products are summed unscaled within a scale group and scaled once per group; with per-channel
// scales (one group) that is once, in the epilogue, so the inner loop is convert + FMA.
template <int MR, int NV, bool Grouped>
struct W8Kernel {
  static void run(const W8Args& a, int64_t m, int64_t p, int64_t width, int64_t v0) {
    const int8_t* b = a.w + p * kPanel * a.k + v0 * 16;
    const float* s = a.scales + p * kPanel * a.groups + v0 * 16;
    const float* x = a.x_row(m);
    __m256 acc[MR][2 * NV];
    zero(acc);
    for (int64_t g = 0; g < a.groups; ++g) {
      const int64_t k0 = g * a.group_size, k1 = std::min(a.k, k0 + a.group_size);
      if constexpr (Grouped) {
        __m256 part[MR][2 * NV];
        zero(part);
        dot(a, b, x, k0, k1, width, part);
        _Pragma("GCC unroll 32")
        for (int v = 0; v < 2 * NV; ++v) {
          const __m256 sv = _mm256_loadu_ps(s + g * width + v * 8);
          _Pragma("GCC unroll 32")
          for (int r = 0; r < MR; ++r) acc[r][v] = _mm256_fmadd_ps(part[r][v], sv, acc[r][v]);
        }
      } else {
        dot(a, b, x, k0, k1, width, acc);
        _Pragma("GCC unroll 32")
        for (int v = 0; v < 2 * NV; ++v) {
          const __m256 sv = _mm256_loadu_ps(s + v * 8);
          _Pragma("GCC unroll 32")
          for (int r = 0; r < MR; ++r) acc[r][v] = _mm256_mul_ps(acc[r][v], sv);
        }
      }
    }
    w8_store<MR, NV>(a, m, p, v0, acc);
  }

  static void zero(__m256 (&acc)[MR][2 * NV]) {
    _Pragma("GCC unroll 32")
    for (int r = 0; r < MR; ++r)
      _Pragma("GCC unroll 32")
      for (int v = 0; v < 2 * NV; ++v) acc[r][v] = _mm256_setzero_ps();
  }

  // acc += x[:, k0:k1] * w[k0:k1, channels] (unscaled int8 weights).
  static void dot(const W8Args& a, const int8_t* b, const float* x, int64_t k0, int64_t k1,
                  int64_t width, __m256 (&acc)[MR][2 * NV]) {
    for (int64_t k = k0; k < k1; ++k) {
      prefetch_w8_row(b, k, width);
      __m256 wv[2 * NV];
      _Pragma("GCC unroll 32")
      for (int v = 0; v < 2 * NV; ++v)
        wv[v] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(
            _mm_loadl_epi64(reinterpret_cast<const __m128i*>(b + k * width + v * 8))));
      _Pragma("GCC unroll 32")
      for (int r = 0; r < MR; ++r) {
        const __m256 xb = _mm256_set1_ps(x[k * a.x_rows + r]);
        _Pragma("GCC unroll 32")
        for (int v = 0; v < 2 * NV; ++v) acc[r][v] = _mm256_fmadd_ps(xb, wv[v], acc[r][v]);
      }
    }
  }
};
template <int MR, int NV>
using W8PerChannel = W8Kernel<MR, NV, false>;

// Weight-only with x rounded to int16 per kW8XBlock columns (W8Args::xq): per k pair, one
// vpmaddwd multiplies 8 channels' weights at k and k + 1 by x[k], x[k + 1] into int32, which a
// block holds exactly (|sum| < 2^29); each block is then scaled into float once. Rows k and
// k + 1 of a panel are interleaved by one unpack per 8 channels, so the packed layout stays the
// float kernels'. Per weight that is half the float kernel's work: its int8 -> fp32 convert has
// one port on AMD Zen 1 (5.3 -> 8-9 GB/s of weights a core from memory, measured).
template <int MR, int NV>
struct W8Int16 {
  static void run(const W8Args& a, int64_t m, int64_t p, int64_t width, int64_t v0) {
    const int8_t* b = a.w + p * kPanel * a.k + v0 * 16;
    const float* s = a.scales + p * kPanel * a.groups + v0 * 16;  // [groups][width]
    const int64_t blocks = (a.k + kW8XBlock - 1) / kW8XBlock;
    const int16_t* xq[MR];
    for (int r = 0; r < MR; ++r) xq[r] = a.xq + (m + r) * a.xq_ld;
    // Float sums live in memory, touched once a block: the int32 ones need all 16 registers.
    alignas(32) float sums[MR][2 * NV][8] = {};
    for (int64_t blk = 0; blk < blocks; ++blk) {
      const int64_t k0 = blk * kW8XBlock, k1 = std::min(a.k, k0 + kW8XBlock);
      __m256i part[MR][2 * NV];
      _Pragma("GCC unroll 32")
      for (int r = 0; r < MR; ++r)
        _Pragma("GCC unroll 32")
        for (int v = 0; v < 2 * NV; ++v) part[r][v] = _mm256_setzero_si256();
      int64_t k = k0;
      for (; k + 1 < k1; k += 2) {
        prefetch_w8_row(b, k, width);
        prefetch_w8_row(b, k + 1, width);
        pair(xq, b + k * width, b + (k + 1) * width, k, part);
      }
      if (k < k1) {  // odd K: the last column pairs with a zero weight row (x there is 0)
        alignas(16) static const int8_t zeros[64] = {};
        pair(xq, b + k * width, zeros, k, part);
      }
      // Scale groups are whole blocks (w8_int16_fits), so a block's weight scales are one
      // group's (group 0 with per-channel scales, whose group_size is K).
      const float* gs = s + k0 / a.group_size * width;
      for (int v = 0; v < 2 * NV; ++v) {
        const __m256 sv = _mm256_loadu_ps(gs + v * 8);
        for (int r = 0; r < MR; ++r) {
          const __m256 xs = _mm256_mul_ps(_mm256_set1_ps(a.xq_scale[(m + r) * blocks + blk]), sv);
          _mm256_store_ps(sums[r][v], _mm256_fmadd_ps(_mm256_cvtepi32_ps(part[r][v]), xs,
                                                       _mm256_load_ps(sums[r][v])));
        }
      }
    }
    __m256 acc[MR][2 * NV];
    _Pragma("GCC unroll 32")
    for (int r = 0; r < MR; ++r)
      _Pragma("GCC unroll 32")
      for (int v = 0; v < 2 * NV; ++v) acc[r][v] = _mm256_load_ps(sums[r][v]);
    w8_store<MR, NV>(a, m, p, v0, acc);
  }

  // part += the int16 x pair at column k times weight rows w0 (k) and w1 (k + 1).
  static void pair(const int16_t* const (&xq)[MR], const int8_t* w0, const int8_t* w1, int64_t k,
                   __m256i (&part)[MR][2 * NV]) {
    __m256i xr[MR];
    _Pragma("GCC unroll 32")
    for (int r = 0; r < MR; ++r) {
      int32_t two;
      std::memcpy(&two, xq[r] + k, 4);
      xr[r] = _mm256_set1_epi32(two);
    }
    _Pragma("GCC unroll 32")
    for (int v = 0; v < NV; ++v) {
      const __m128i r0 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(w0 + v * 16));
      const __m128i r1 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(w1 + v * 16));
      const __m256i lo = _mm256_cvtepi8_epi16(_mm_unpacklo_epi8(r0, r1));  // channels 0-7
      const __m256i hi = _mm256_cvtepi8_epi16(_mm_unpackhi_epi8(r0, r1));  // channels 8-15
      _Pragma("GCC unroll 32")
      for (int r = 0; r < MR; ++r) {
        part[r][2 * v] = _mm256_add_epi32(part[r][2 * v], _mm256_madd_epi16(lo, xr[r]));
        part[r][2 * v + 1] = _mm256_add_epi32(part[r][2 * v + 1], _mm256_madd_epi16(hi, xr[r]));
      }
    }
  }
};
template <int MR, int NV>
using W8Grouped = W8Kernel<MR, NV, true>;

template <DType D>
bool round_row_int16(const void* x, int64_t row, int64_t ld_x, int64_t k, int16_t* q, float* scale) {
  const int64_t blocks = (k + kW8XBlock - 1) / kW8XBlock;
  for (int64_t blk = 0; blk < blocks; ++blk) {
    const int64_t c0 = blk * kW8XBlock, c1 = std::min(k, c0 + kW8XBlock);
    const uint32_t bits = absmax_bits<D>(x, row * ld_x + c0, c1 - c0);
    float absmax;
    std::memcpy(&absmax, &bits, 4);
    if (bits >= 0x7f800000u || (absmax > 0.f && absmax < 0x1p-100f)) return false;
    int e = 0;
    std::frexp(absmax, &e);
    scale[blk] = std::ldexp(1.f, e - 15);
    const __m256 inv = _mm256_set1_ps(std::ldexp(1.f, 15 - e));
    const __m256 lo = _mm256_set1_ps(-32767.f), hi = _mm256_set1_ps(32767.f);
    for (int64_t c = c0; c < c1; c += 8) {
      const __m256 v = _mm256_round_ps(_mm256_mul_ps(load8<D>(x, row * ld_x + c, c1 - c), inv), kRne);
      const __m256i qi = _mm256_cvtps_epi32(_mm256_min_ps(_mm256_max_ps(v, lo), hi));
      const __m128i q16 = _mm256_castsi256_si128(_mm256_permute4x64_epi64(_mm256_packs_epi32(qi, qi), 0xd8));
      if (c1 - c >= 8) {
        _mm_storeu_si128(reinterpret_cast<__m128i*>(q + c), q16);
      } else {
        alignas(16) int16_t tmp[8];
        _mm_store_si128(reinterpret_cast<__m128i*>(tmp), q16);
        std::memcpy(q + c, tmp, (c1 - c) * 2);
      }
    }
  }
  return true;
}

}  // namespace

void quantize_rows_avx2(const QuantizeArgs& a, int64_t r0, int64_t r1) {
  for (int64_t r = r0; r < r1; ++r) {
    switch (a.x_dtype) {
      case DType::F32: quantize_row<DType::F32>(a, r); break;
      case DType::BF16: quantize_row<DType::BF16>(a, r); break;
      case DType::F16: quantize_row<DType::F16>(a, r); break;
    }
  }
}

// Row tiles of at most this many rows take the vpmaddubsw kernel, one row at a time over a
// panel that stays in L2 (with the panel prefetch, 4-15% faster than the vpmaddwd kernel at
// M = 5..8 on AMD Zen 1; both sit at its 8 multiply-adds a cycle from there on).
constexpr int64_t kSignRows = 8;

// W8a8Sign<nv8>::run for nv8 = 1..8 (whole panels of 8-channel vectors).
template <int... I>
auto sign_table(std::integer_sequence<int, I...>) {
  using Fn = void (*)(const W8a8Args&, int64_t m, int64_t p, int64_t width, bool fetch);
  return std::array<Fn, sizeof...(I)>{&W8a8Sign<I + 1>::run...};
}

void w8a8_tile_avx2(const W8a8Args& a, int64_t m0, int64_t m1, int64_t p0, int64_t p1) {
  if (m1 - m0 <= kSignRows && !a.w_has_min) {
    // One row at a time over whole panels: the panel streams from memory for the first row
    // and from L2 for the others.
    static const auto table = sign_table(std::make_integer_sequence<int, 8>{});
    const int64_t n_pad = round_up(a.n, kLane);
    for (int64_t p = p0; p < p1; ++p) {
      const int64_t nv8 = std::min(kPanel, n_pad - p * kPanel) / 8;
      for (int64_t m = m0; m < m1; ++m) table[nv8 - 1](a, m, p, nv8 * 8, m == m0);
    }
    return;
  }
  run_tiles<3, 1, W8a8S16>(a, m0, m1, p0, p1);
}

void w8_tile_avx2(const W8Args& a, int64_t m0, int64_t m1, int64_t p0, int64_t p1) {
  if (a.xq) {  // one row: whole 64-byte panel rows; more: pairs of rows over 32 channels
    if (m1 - m0 == 1)
      run_tiles<1, 4, W8Int16>(a, m0, m1, p0, p1);
    else
      run_tiles<2, 2, W8Int16>(a, m0, m1, p0, p1);
    return;
  }
  // Grouped kernels hold accumulators twice (per group and total), so their tiles are smaller.
  if (a.groups > 1 && m1 - m0 == 1)
    run_tiles<1, 2, W8Grouped>(a, m0, m1, p0, p1);
  else if (a.groups > 1)  // 4 rows x 16 channels: M = 8 6.3-6.7 -> 8.9-11.9 GMAC/s a core (Zen 1)
    run_tiles<4, 1, W8Grouped>(a, m0, m1, p0, p1);
  else if (m1 - m0 == 1)
    run_tiles<1, 4, W8PerChannel>(a, m0, m1, p0, p1);  // whole 64-byte panel rows, in order
  else if (m1 - m0 == 2)  // still half memory-bound: two passes over a panel, not four
    run_tiles<2, 2, W8PerChannel>(a, m0, m1, p0, p1);
  else  // 8 rows x 16 channels: 8 FMAs per converted weight vector (9.5 -> 13 GMAC/s a core
        // at M = 8 on AMD Zen 1, where one port converts and 2 x 32 channels waited on it)
    run_tiles<8, 1, W8PerChannel>(a, m0, m1, p0, p1);
}

bool round_x_int16_avx2(const void* x, DType dtype, int64_t ld_x, int64_t m, int64_t k, int16_t* q,
                        int64_t ld_q, float* scale) {
  const int64_t blocks = (k + kW8XBlock - 1) / kW8XBlock;
  for (int64_t r = 0; r < m; ++r) {
    int16_t* qr = q + r * ld_q;
    float* sr = scale + r * blocks;
    bool ok = false;
    switch (dtype) {
      case DType::F32: ok = round_row_int16<DType::F32>(x, r, ld_x, k, qr, sr); break;
      case DType::BF16: ok = round_row_int16<DType::BF16>(x, r, ld_x, k, qr, sr); break;
      case DType::F16: ok = round_row_int16<DType::F16>(x, r, ld_x, k, qr, sr); break;
    }
    if (!ok) return false;
    std::fill(qr + k, qr + ld_q, int16_t{0});
  }
  return true;
}

}  // namespace llmkern::int8
