// AVX-512 VNNI W8A8 GEMM: vpdpbusd multiplies unsigned activation bytes (q + 128) by signed
// weight bytes, 4 k per int32 lane; the packed weight's comp[n] = 128 * sum_k w[n, k] removes
// the +128 shift. Accumulators wrap modulo 2^32, so the result is exact whenever the true sum
// fits int32 (guaranteed by the K limit checked in Python).
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,fma")
// GCC 12 warns falsely about the undefined register inside its own AVX-512 intrinsics
// (GCC bug 105593, fixed in 13).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#include <cstring>

#include "cpu/int8_avx512_common.h"

namespace llmkern::int8 {
namespace {

// Rows [m, m + MR) x vectors [v0, v0 + NV) of panel p, over the whole K.
template <int MR, int NV>
struct W8a8Vnni {
  static void run(const W8a8Args& a, int64_t m, int64_t p, int64_t width, int64_t v0) {
    const uint8_t* x = static_cast<const uint8_t*>(a.a) + m * a.kp;
    const int8_t* b = a.w + p * kPanel * a.kp + v0 * 64;
    __m512i acc[MR][NV];
    _Pragma("GCC unroll 32")
    for (int r = 0; r < MR; ++r)
      _Pragma("GCC unroll 32")
      for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_setzero_si512();
    for (int64_t kk = 0; kk < a.kp / 4; ++kk) {
      __m512i w[NV];
      _Pragma("GCC unroll 32")
      for (int v = 0; v < NV; ++v) w[v] = _mm512_loadu_si512(b + (kk * width + v * 16) * 4);
      _Pragma("GCC unroll 32")
      for (int r = 0; r < MR; ++r) {
        int32_t four;
        std::memcpy(&four, x + r * a.kp + kk * 4, 4);
        const __m512i xb = _mm512_set1_epi32(four);
        _Pragma("GCC unroll 32")
        for (int v = 0; v < NV; ++v) dpbusd(acc[r][v], xb, w[v]);
      }
    }
    _Pragma("GCC unroll 32")
    for (int v = 0; v < NV; ++v) {
      const int64_t n0 = p * kPanel + (v0 + v) * 16;
      const __m512i comp = _mm512_loadu_si512(a.comp + n0);
      _Pragma("GCC unroll 32")
      for (int r = 0; r < MR; ++r) w8a8_epilogue16(a, m + r, n0, _mm512_sub_epi32(acc[r][v], comp));
    }
  }
};

// Weight-only with x rounded to int16 per kW8XBlock columns (W8Args::xq, as on AVX2): per k pair,
// one vpdpwssd multiplies 16 channels' weights at k and k + 1 by x[k], x[k + 1] into int32 (a
// block holds |sum| < 2^29 exactly), scaled into float once a block. One unpack pair interleaves
// rows k and k + 1 of a whole 64-channel panel row; widened, vectors 0-3 then hold channels
// {0-7, 16-23}, {32-39, 48-55}, {8-15, 24-31}, {40-47, 56-63}, put back in order once a block.
// Against the fp32 kernel (W8Kernel, int8 -> fp32 convert, scale, FMA per weight) on 4096x4096,
// Intel Xeon with AMX, 2 threads: 1.2x at M = 1, 1.4-1.9x at M = 2-4, 1.5-1.8x at M = 8-256.
template <int MR, int NV>
struct W8Int16Vnni {
  static void run(const W8Args& a, int64_t m, int64_t p, int64_t width, int64_t /*v0: 0*/) {
    const int8_t* b = a.w + p * kPanel * a.k;
    const float* s = a.scales + p * kPanel * a.groups;  // [groups][width]
    const int64_t blocks = (a.k + kW8XBlock - 1) / kW8XBlock;
    const __mmask64 wmask = width >= 64 ? ~0ull : (1ull << width) - 1;
    const int16_t* xq[MR];
    for (int r = 0; r < MR; ++r) xq[r] = a.xq + (m + r) * a.xq_ld;
    // Float sums live in memory, touched once a block: the int32 ones take most registers.
    alignas(64) float sums[MR][4][16] = {};
    for (int64_t blk = 0; blk < blocks; ++blk) {
      const int64_t k0 = blk * kW8XBlock, k1 = std::min(a.k, k0 + kW8XBlock);
      __m512i part[MR][4];
      _Pragma("GCC unroll 32")
      for (int r = 0; r < MR; ++r)
        _Pragma("GCC unroll 4")
        for (int v = 0; v < 4; ++v) part[r][v] = _mm512_setzero_si512();
      for (int64_t k = k0; k < k1; k += 2) {
        prefetch_w8_row(b, k, width);
        prefetch_w8_row(b, k + 1, width);
        const __m512i r0 = _mm512_maskz_loadu_epi8(wmask, b + k * width);
        // Odd K: the last column pairs with a zero weight row (x there is 0).
        const __m512i r1 = k + 1 < k1 ? _mm512_maskz_loadu_epi8(wmask, b + (k + 1) * width)
                                      : _mm512_setzero_si512();
        const __m512i lo = _mm512_unpacklo_epi8(r0, r1), hi = _mm512_unpackhi_epi8(r0, r1);
        const __m512i w[4] = {_mm512_cvtepi8_epi16(_mm512_castsi512_si256(lo)),
                              _mm512_cvtepi8_epi16(_mm512_extracti64x4_epi64(lo, 1)),
                              _mm512_cvtepi8_epi16(_mm512_castsi512_si256(hi)),
                              _mm512_cvtepi8_epi16(_mm512_extracti64x4_epi64(hi, 1))};
        _Pragma("GCC unroll 32")
        for (int r = 0; r < MR; ++r) {
          int32_t two;
          std::memcpy(&two, xq[r] + k, 4);
          const __m512i xb = _mm512_set1_epi32(two);
          _Pragma("GCC unroll 4")
          for (int v = 0; v < 4; ++v) dpwssd(part[r][v], w[v], xb);
        }
      }
      // Scale groups are whole blocks (w8_int16_fits), so a block's weight scales are one
      // group's (group 0 with per-channel scales, whose group_size is K).
      const float* gs = s + k0 / a.group_size * width;
      _Pragma("GCC unroll 32")
      for (int r = 0; r < MR; ++r) {
        const __m512i ordered[4] = {_mm512_shuffle_i64x2(part[r][0], part[r][2], 0x44),
                                    _mm512_shuffle_i64x2(part[r][0], part[r][2], 0xee),
                                    _mm512_shuffle_i64x2(part[r][1], part[r][3], 0x44),
                                    _mm512_shuffle_i64x2(part[r][1], part[r][3], 0xee)};
        const __m512 x_scale = _mm512_set1_ps(a.xq_scale[(m + r) * blocks + blk]);
        _Pragma("GCC unroll 4")
        for (int v = 0; v < NV; ++v) {
          const __m512 xs = _mm512_mul_ps(x_scale, _mm512_loadu_ps(gs + v * 16));
          _mm512_store_ps(sums[r][v], _mm512_fmadd_ps(_mm512_cvtepi32_ps(ordered[v]), xs,
                                                      _mm512_load_ps(sums[r][v])));
        }
      }
    }
    for (int r = 0; r < MR; ++r)
      for (int v = 0; v < NV; ++v) w8_epilogue16(a, m + r, p * kPanel + v * 16, _mm512_load_ps(sums[r][v]));
  }
};

}  // namespace

void w8_int16_tile_avx512_vnni(const W8Args& a, int64_t m0, int64_t m1, int64_t p0, int64_t p1) {
  run_tiles<4, 4, W8Int16Vnni>(a, m0, m1, p0, p1);
}

void w8a8_tile_avx512_vnni(const W8a8Args& a, int64_t m0, int64_t m1, int64_t p0, int64_t p1) {
  run_tiles<6, 4, W8a8Vnni>(a, m0, m1, p0, p1);
}

}  // namespace llmkern::int8
