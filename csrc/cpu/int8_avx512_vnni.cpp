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

}  // namespace

void w8a8_tile_avx512_vnni(const W8a8Args& a, int64_t m0, int64_t m1, int64_t p0, int64_t p1) {
  run_tiles<6, 4, W8a8Vnni>(a, m0, m1, p0, p1);
}

}  // namespace llmkern::int8
