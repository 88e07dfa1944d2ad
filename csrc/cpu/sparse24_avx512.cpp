// AVX-512 2:4 kernels: the kept values of a chunk are multiplied with x columns picked inside
// registers by one two-source permute (vpermi2ps / vpermi2d) whose indices come straight from
// the meta bits; no dense weight is ever formed.
// GCC 12 warns about the deliberately undefined upper halves inside its own intrinsics
// (_mm512_reduce_add_*); the values are never read.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,fma")
#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "cpu/sparse24_driver.h"

namespace llmkern::sparse24 {
namespace {

// One chunk = 8 groups of 4 along K: 32 columns of x, 16 kept values, 32 meta bits.
constexpr int64_t kChunkGroups = 8;

// Lane j's x column within the chunk: 4 * (j >> 1) + ((meta >> 2j) & 3).
inline __m512i chunk_index(uint32_t meta) {
  const __m512i shifts =
      _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i base = _mm512_setr_epi32(0, 0, 4, 4, 8, 8, 12, 12, 16, 16, 20, 20, 24, 24, 28, 28);
  const __m512i v = _mm512_srlv_epi32(_mm512_set1_epi32(static_cast<int>(meta)), shifts);
  return _mm512_ternarylogic_epi32(v, _mm512_set1_epi32(3), base, 0xEA);  // (v & 3) | base
}

struct F32Values {
  using S = float;
  static __m512 load(const float* p) { return _mm512_loadu_ps(p); }
};
struct Bf16Values {
  using S = uint16_t;
  static __m512 load(const uint16_t* p) {
    const __m512i w = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
    return _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
  }
};
struct F16Values {
  using S = uint16_t;
  static __m512 load(const uint16_t* p) {
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  }
};
struct I8Values {
  using S = int8_t;
  static __m512 load(const int8_t* p) {
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
  }
};

// fp32 lanes: x fp32, any value type converted to fp32 in registers.
template <class V>
struct FloatLanes {
  using S = typename V::S;
  using X = float;
  using Vec = __m512;
  using Out = float;
  static Vec zero() { return _mm512_setzero_ps(); }
  static Vec load_x(const float* p) { return _mm512_loadu_ps(p); }
  static Vec load_w(const S* p) { return V::load(p); }
  static Vec madd(Vec acc, Vec xl, __m512i idx, Vec xh, Vec w) {
    return _mm512_fmadd_ps(_mm512_permutex2var_ps(xl, idx, xh), w, acc);
  }
  static Out sum(Vec v) { return _mm512_reduce_add_ps(v); }
};

// int32 lanes (AVX-512 without VNNI/VBMI): exact int8 x int8 products.
struct IntLanes {
  using S = int8_t;
  using X = int8_t;
  using Vec = __m512i;
  using Out = int32_t;
  static Vec zero() { return _mm512_setzero_si512(); }
  static Vec load_x(const int8_t* p) {
    return _mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  }
  static Vec load_w(const int8_t* p) { return load_x(p); }
  static Vec madd(Vec acc, Vec xl, __m512i idx, Vec xh, Vec w) {
    return _mm512_add_epi32(acc, _mm512_mullo_epi32(_mm512_permutex2var_epi32(xl, idx, xh), w));
  }
  static Out sum(Vec v) { return _mm512_reduce_add_epi32(v); }
};

template <class L>
struct Kernel {
  static constexpr int kMaxM = 4;
  static constexpr int kStreamRows = 0;
  using S = typename L::S;
  using X = typename L::X;
  using Vec = typename L::Vec;

  template <int NR, int MR>
  static inline void step(Vec (&acc)[NR][MR], const X* const (&x)[MR], int64_t c,
                          const S* const (&v)[NR], const uint32_t (&mw)[NR]) {
    Vec xl[MR], xh[MR];
    for (int i = 0; i < MR; ++i) {
      xl[i] = L::load_x(x[i] + 32 * c);
      xh[i] = L::load_x(x[i] + 32 * c + 16);
    }
    for (int r = 0; r < NR; ++r) {
      const __m512i idx = chunk_index(mw[r]);
      const Vec w = L::load_w(v[r]);
      for (int i = 0; i < MR; ++i) acc[r][i] = L::madd(acc[r][i], xl[i], idx, xh[i], w);
    }
  }

  template <int NR, int MR>
  static void tile(const Args& a, int64_t n0, int64_t m0) {
    const int64_t half = a.k / 2, mbytes = meta_bytes(a.k), groups = a.k / 4;
    const int64_t full = groups / kChunkGroups, rem = groups % kChunkGroups;
    const TileRows<S, NR> rows(a, n0);
    const X* x[MR];
    for (int i = 0; i < MR; ++i) x[i] = static_cast<const X*>(a.x) + (m0 + i) * a.ldx;
    Vec acc[NR][MR];
    for (int r = 0; r < NR; ++r)
      for (int i = 0; i < MR; ++i) acc[r][i] = L::zero();

    // The tiles ahead, their meta blocks at the start (TilePrefetch).
    const TilePrefetch ahead(a, n0, m0, NR);
    ahead.meta(rows.meta[0], NR * mbytes);
    for (int64_t c = 0; c < full; ++c) {
      const S* v[NR];
      uint32_t mw[NR];
      for (int r = 0; r < NR; ++r) {
        v[r] = rows.values[r] + 16 * c;
        std::memcpy(&mw[r], rows.meta[r] + 4 * c, 4);
        if ((16 * c * sizeof(S)) % 64 == 0) ahead(v[r], NR * half * int64_t{sizeof(S)});
      }
      step<NR, MR>(acc, x, c, v, mw);
    }
    if (rem) {  // last partial chunk from zero-filled copies (zero values, x padding)
      S buf[NR][16] = {};
      const S* v[NR];
      uint32_t mw[NR] = {};
      for (int r = 0; r < NR; ++r) {
        std::memcpy(buf[r], rows.values[r] + 16 * full, 2 * rem * sizeof(S));
        std::memcpy(&mw[r], rows.meta[r] + 4 * full, (rem + 1) / 2);
        v[r] = buf[r];
      }
      step<NR, MR>(acc, x, full, v, mw);
    }
    typename L::Out* raw = static_cast<typename L::Out*>(a.raw);
    for (int r = 0; r < NR; ++r)
      for (int i = 0; i < MR; ++i) raw[(m0 + i) * a.ldr + n0 + r] = L::sum(acc[r][i]);
  }
};

}  // namespace

void float_rows_avx512(ValueType vt, const Args& a, int64_t n0, int64_t n1) {
  switch (vt) {
    case ValueType::F32: run_rows<Kernel<FloatLanes<F32Values>>>(a, n0, n1); break;
    case ValueType::BF16: run_rows<Kernel<FloatLanes<Bf16Values>>>(a, n0, n1); break;
    case ValueType::F16: run_rows<Kernel<FloatLanes<F16Values>>>(a, n0, n1); break;
    case ValueType::I8: run_rows<Kernel<FloatLanes<I8Values>>>(a, n0, n1); break;
  }
}

void int_rows_avx512(const Args& a, int64_t n0, int64_t n1) { run_rows<Kernel<IntLanes>>(a, n0, n1); }

}  // namespace llmkern::sparse24
