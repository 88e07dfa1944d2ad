// AVX-512 INT8 kernels: activation quantisation, weight-only GEMM and the W8A8 GEMM for CPUs
// without VNNI (int16 vpmaddwd, exact where the byte form vpmaddubsw would saturate).
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,fma")
// GCC 12 warns falsely about the undefined register inside its own AVX-512 intrinsics
// (GCC bug 105593, fixed in 13).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#include <cmath>
#include <cstring>

#include "cpu/int8_avx512_common.h"

namespace llmkern::int8 {
namespace {

template <DType D>
void quantize_row(const QuantizeArgs& a, int64_t r) {
  const int64_t base = r * a.ld_x;
  // max |x| as bits: integer order is float order for non-negative floats; inf/NaN are above.
  __m512i mx = _mm512_setzero_si512();
  for (int64_t c = 0; c < a.k; c += 16) {
    const __m512 v = load16<D>(a.x, base + c, tail_mask(a.k - c));
    mx = _mm512_max_epu32(mx, _mm512_and_si512(_mm512_castps_si512(v), _mm512_set1_epi32(0x7fffffff)));
  }
  const uint32_t maxbits = _mm512_reduce_max_epu32(mx);
  const bool finite = maxbits < 0x7f800000u;
  float absmax;
  std::memcpy(&absmax, &maxbits, 4);
  float inv, scale;
  row_scale(a, finite, absmax, &inv, &scale);
  a.scale[r] = scale;
  const __m512 vinv = _mm512_set1_ps(inv);
  const __m512 lo = _mm512_set1_ps(-127.f), hi = _mm512_set1_ps(127.f);
  // Columns past k load as 0 and so store the zero point; a non-finite row stores it everywhere.
  const int64_t k = finite ? a.k : 0;
  for (int64_t c = 0; c < a.ld_q; c += 16) {
    const __m512 v = load16<D>(a.x, base + c, tail_mask(k - c));
    // Clamp before converting: a static scale can map values beyond the int32 range.
    const __m512 clamped = _mm512_min_ps(_mm512_max_ps(_mm512_mul_ps(v, vinv), lo), hi);
    __m512i q = _mm512_cvt_roundps_epi32(clamped, kRne);
    const __mmask16 store = tail_mask(a.ld_q - c);
    switch (a.q_format) {
      case ActFormat::S8:
        _mm_mask_storeu_epi8(static_cast<int8_t*>(a.q) + r * a.ld_q + c, store, _mm512_cvtepi32_epi8(q));
        break;
      case ActFormat::U8:
        q = _mm512_add_epi32(q, _mm512_set1_epi32(128));
        _mm_mask_storeu_epi8(static_cast<uint8_t*>(a.q) + r * a.ld_q + c, store, _mm512_cvtepi32_epi8(q));
        break;
      case ActFormat::S16:
        _mm256_mask_storeu_epi16(static_cast<int16_t*>(a.q) + r * a.ld_q + c, store,
                                 _mm512_cvtepi32_epi16(q));
        break;
    }
  }
}

// W8A8 micro-kernel, int16 activations: rows [m, m + MR) x vectors [v0, v0 + NV) of panel p.
// vpmaddwd of a widened weight vector (8 channels x 4 k) with 4 broadcast activations gives
// two partial sums per channel, added pairwise at the end.
template <int MR, int NV>
struct W8a8S16 {
  static void run(const W8a8Args& a, int64_t m, int64_t p, int64_t width, int64_t v0) {
    const int16_t* x = static_cast<const int16_t*>(a.a) + m * a.kp;
    const int8_t* b = a.w + p * kPanel * a.kp + v0 * 64;
    __m512i acc[MR][NV][2];
    _Pragma("GCC unroll 32")
    for (int r = 0; r < MR; ++r)
      _Pragma("GCC unroll 32")
      for (int v = 0; v < NV; ++v) acc[r][v][0] = acc[r][v][1] = _mm512_setzero_si512();
    for (int64_t kk = 0; kk < a.kp / 4; ++kk) {
      __m512i lo[NV], hi[NV];
      _Pragma("GCC unroll 32")
      for (int v = 0; v < NV; ++v) {
        const int8_t* src = b + (kk * width + v * 16) * 4;
        lo[v] = _mm512_cvtepi8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(src)));
        hi[v] = _mm512_cvtepi8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + 32)));
      }
      _Pragma("GCC unroll 32")
      for (int r = 0; r < MR; ++r) {
        int64_t four;
        std::memcpy(&four, x + r * a.kp + kk * 4, 8);
        const __m512i xb = _mm512_set1_epi64(four);
        _Pragma("GCC unroll 32")
        for (int v = 0; v < NV; ++v) {
          acc[r][v][0] = _mm512_add_epi32(acc[r][v][0], _mm512_madd_epi16(lo[v], xb));
          acc[r][v][1] = _mm512_add_epi32(acc[r][v][1], _mm512_madd_epi16(hi[v], xb));
        }
      }
    }
    const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const __m512i odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
    _Pragma("GCC unroll 32")
    for (int r = 0; r < MR; ++r)
      _Pragma("GCC unroll 32")
      for (int v = 0; v < NV; ++v) {
        const __m512i sum =
            _mm512_add_epi32(_mm512_permutex2var_epi32(acc[r][v][0], even, acc[r][v][1]),
                             _mm512_permutex2var_epi32(acc[r][v][0], odd, acc[r][v][1]));
        w8a8_epilogue16(a, m + r, p * kPanel + (v0 + v) * 16, sum);
      }
  }
};

// Weight-only micro-kernel: int8 weights -> float, times the group's scales, FMA with each
// broadcast activation; rows [m, m + MR) x vectors [v0, v0 + NV) of panel p.
template <int MR, int NV>
struct W8Kernel {
  static void run(const W8Args& a, int64_t m, int64_t p, int64_t width, int64_t v0) {
    const int8_t* b = a.w + p * kPanel * a.k + v0 * 16;
    const float* s = a.scales + p * kPanel * a.groups + v0 * 16;
    const float* x = a.x_row(m);
    __m512 acc[MR][NV];
    _Pragma("GCC unroll 32")
    for (int r = 0; r < MR; ++r)
      _Pragma("GCC unroll 32")
      for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_setzero_ps();
    for (int64_t g = 0; g < a.groups; ++g) {
      __m512 sv[NV];
      _Pragma("GCC unroll 32")
      for (int v = 0; v < NV; ++v) sv[v] = _mm512_loadu_ps(s + g * width + v * 16);
      const int64_t k_end = std::min(a.k, (g + 1) * a.group_size);
      for (int64_t k = g * a.group_size; k < k_end; ++k) {
        prefetch_w8_row(b, k, width);
        __m512 wv[NV];
        _Pragma("GCC unroll 32")
        for (int v = 0; v < NV; ++v) {
          const __m128i w8 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(b + k * width + v * 16));
          wv[v] = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(w8)), sv[v]);
        }
        _Pragma("GCC unroll 32")
        for (int r = 0; r < MR; ++r) {
          const __m512 xb = _mm512_set1_ps(x[k * a.x_rows + r]);
          _Pragma("GCC unroll 32")
          for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_fmadd_ps(xb, wv[v], acc[r][v]);
        }
      }
    }
    _Pragma("GCC unroll 32")
    for (int r = 0; r < MR; ++r)
      _Pragma("GCC unroll 32")
      for (int v = 0; v < NV; ++v) w8_epilogue16(a, m + r, p * kPanel + (v0 + v) * 16, acc[r][v]);
  }
};

}  // namespace

void quantize_rows_avx512(const QuantizeArgs& a, int64_t r0, int64_t r1) {
  for (int64_t r = r0; r < r1; ++r) {
    switch (a.x_dtype) {
      case DType::F32: quantize_row<DType::F32>(a, r); break;
      case DType::BF16: quantize_row<DType::BF16>(a, r); break;
      case DType::F16: quantize_row<DType::F16>(a, r); break;
    }
  }
}

void w8a8_tile_avx512(const W8a8Args& a, int64_t m0, int64_t m1, int64_t p0, int64_t p1) {
  run_tiles<4, 2, W8a8S16>(a, m0, m1, p0, p1);
}

void w8_tile_avx512(const W8Args& a, int64_t m0, int64_t m1, int64_t p0, int64_t p1) {
  // Each pass over a panel converts its weights to float once: tall row blocks (8 x 32
  // channels) convert least often; 1-2 rows take 64 channels for enough independent FMA chains.
  if (m1 - m0 <= 2)
    run_tiles<2, 4, W8Kernel>(a, m0, m1, p0, p1);
  else
    run_tiles<8, 2, W8Kernel>(a, m0, m1, p0, p1);
}

}  // namespace llmkern::int8
