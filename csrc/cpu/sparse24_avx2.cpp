// AVX2 2:4 kernels. AVX2 has no two-source permute, so each half chunk (4 groups: 16 x columns,
// 8 kept values) picks from two x vectors with one index vector and blends: float lanes with
// in-lane vpermilps from lane-arranged x (FloatLanes::load_x), int lanes with vpermd from the
// low and high 8 columns.
#pragma GCC target("avx2,fma,f16c")
#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "cpu/sparse24_driver.h"

namespace llmkern::sparse24 {
namespace {

constexpr int64_t kChunkGroups = 8;  // as in the AVX-512 variant: 32 columns, 32 meta bits

// Lane j of half chunk h: x column (within its 8-column half) 4 * ((j >> 1) & 1) + position.
inline __m256i half_index(uint32_t meta16) {
  const __m256i shifts = _mm256_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14);
  const __m256i base = _mm256_setr_epi32(0, 0, 4, 4, 0, 0, 4, 4);
  const __m256i v = _mm256_srlv_epi32(_mm256_set1_epi32(static_cast<int>(meta16)), shifts);
  return _mm256_or_si256(_mm256_and_si256(v, _mm256_set1_epi32(3)), base);
}

struct F32Values {
  using S = float;
  static __m256 load(const float* p) { return _mm256_loadu_ps(p); }
};
struct Bf16Values {
  using S = uint16_t;
  static __m256 load(const uint16_t* p) {
    const __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
  }
};
struct F16Values {
  using S = uint16_t;
  static __m256 load(const uint16_t* p) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  }
};
struct I8Values {
  using S = int8_t;
  static __m256 load(const int8_t* p) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
  }
};

template <class V>
struct FloatLanes {
  using S = typename V::S;
  using X = float;
  using Vec = __m256;
  using Out = float;
  static Vec zero() { return _mm256_setzero_ps(); }
  // The 16 x columns of a half chunk as two sources that in-lane vpermilps can pick from
  // (cross-lane permutes are slow on AMD): kept values 0-1 and 4-5 come from xa, whose 128-bit
  // halves hold columns 0-3 and 8-11, kept values 2-3 and 6-7 from xb (columns 4-7 and 12-15).
  static void load_x(const float* p, Vec& xa, Vec& xb) {
    xa = _mm256_loadu2_m128(p + 8, p);
    xb = _mm256_loadu2_m128(p + 12, p + 4);
  }
  // Lane j selects position (meta16 >> 2j) & 3 of its group (vpermilps reads the low 2 bits).
  static __m256i index(uint32_t meta16) {
    const __m256i shifts = _mm256_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14);
    return _mm256_srlv_epi32(_mm256_set1_epi32(static_cast<int>(meta16)), shifts);
  }
  static Vec load_w(const S* p) { return V::load(p); }
  static Vec madd(Vec acc, Vec xa, __m256i idx, Vec xb, Vec w) {
    const Vec g = _mm256_blend_ps(_mm256_permutevar_ps(xa, idx), _mm256_permutevar_ps(xb, idx), 0xCC);
    return _mm256_fmadd_ps(g, w, acc);
  }
  static Out sum(Vec v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
};

struct IntLanes {
  using S = int8_t;
  using X = int8_t;
  using Vec = __m256i;
  using Out = int32_t;
  static Vec zero() { return _mm256_setzero_si256(); }
  static Vec load_x(const int8_t* p) {
    return _mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
  }
  static void load_x(const int8_t* p, Vec& xl, Vec& xh) {
    xl = load_x(p);
    xh = load_x(p + 8);
  }
  static __m256i index(uint32_t meta16) { return half_index(meta16); }
  static Vec load_w(const int8_t* p) { return load_x(p); }
  static Vec madd(Vec acc, Vec xl, __m256i idx, Vec xh, Vec w) {
    const Vec g = _mm256_blend_epi32(_mm256_permutevar8x32_epi32(xl, idx), _mm256_permutevar8x32_epi32(xh, idx), 0xF0);
    return _mm256_add_epi32(acc, _mm256_mullo_epi32(g, w));
  }
  static Out sum(Vec v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
    return _mm_cvtsi128_si32(s);
  }
};

template <class L>
struct Kernel {
  static constexpr int kMaxM = 2;  // 16 ymm registers
  using S = typename L::S;
  using X = typename L::X;
  using Vec = typename L::Vec;

  template <int NR, int MR>
  static inline void step(Vec (&acc)[NR][MR], const X* const (&x)[MR], int64_t c,
                          const S* const (&v)[NR], const uint32_t (&mw)[NR]) {
    for (int h = 0; h < 2; ++h) {
      Vec xl[MR], xh[MR];
      for (int i = 0; i < MR; ++i) L::load_x(x[i] + 32 * c + 16 * h, xl[i], xh[i]);
      for (int r = 0; r < NR; ++r) {
        const __m256i idx = L::index(mw[r] >> (16 * h));
        const Vec w = L::load_w(v[r] + 8 * h);
        for (int i = 0; i < MR; ++i) acc[r][i] = L::madd(acc[r][i], xl[i], idx, xh[i], w);
      }
    }
  }

  template <int NR, int MR>
  static void tile(const Args& a, int64_t n0, int64_t m0) {
    const int64_t half = a.k / 2, mbytes = meta_bytes(a.k), groups = a.k / 4;
    const int64_t full = groups / kChunkGroups, rem = groups % kChunkGroups;
    const S* vrow[NR];
    const uint8_t* mrow[NR];
    for (int r = 0; r < NR; ++r) {
      vrow[r] = static_cast<const S*>(a.values) + (n0 + r) * half;
      mrow[r] = a.meta + (n0 + r) * mbytes;
    }
    const X* x[MR];
    for (int i = 0; i < MR; ++i) x[i] = static_cast<const X*>(a.x) + (m0 + i) * a.ldx;
    Vec acc[NR][MR];
    for (int r = 0; r < NR; ++r)
      for (int i = 0; i < MR; ++i) acc[r][i] = L::zero();

    // Fetch the next tile's rows one tile ahead (see the AVX-512 variant).
    const bool ahead = m0 == 0 && n0 + 2 * NR <= a.n;
    if (ahead)
      for (int64_t b = 0; b < NR * mbytes; b += 64)
        _mm_prefetch(reinterpret_cast<const char*>(mrow[0] + NR * mbytes + b), _MM_HINT_T0);
    for (int64_t c = 0; c < full; ++c) {
      const S* v[NR];
      uint32_t mw[NR];
      for (int r = 0; r < NR; ++r) {
        v[r] = vrow[r] + 16 * c;
        std::memcpy(&mw[r], mrow[r] + 4 * c, 4);
        if (ahead && (16 * c * sizeof(S)) % 64 == 0)
          _mm_prefetch(reinterpret_cast<const char*>(v[r] + NR * half), _MM_HINT_T0);
      }
      step<NR, MR>(acc, x, c, v, mw);
    }
    if (rem) {
      S buf[NR][16] = {};
      const S* v[NR];
      uint32_t mw[NR] = {};
      for (int r = 0; r < NR; ++r) {
        std::memcpy(buf[r], vrow[r] + 16 * full, 2 * rem * sizeof(S));
        std::memcpy(&mw[r], mrow[r] + 4 * full, (rem + 1) / 2);
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

void float_rows_avx2(ValueType vt, const Args& a, int64_t n0, int64_t n1) {
  switch (vt) {
    case ValueType::F32: run_rows<Kernel<FloatLanes<F32Values>>>(a, n0, n1); break;
    case ValueType::BF16: run_rows<Kernel<FloatLanes<Bf16Values>>>(a, n0, n1); break;
    case ValueType::F16: run_rows<Kernel<FloatLanes<F16Values>>>(a, n0, n1); break;
    case ValueType::I8: run_rows<Kernel<FloatLanes<I8Values>>>(a, n0, n1); break;
  }
}

void int_rows_avx2(const Args& a, int64_t n0, int64_t n1) { run_rows<Kernel<IntLanes>>(a, n0, n1); }

}  // namespace llmkern::sparse24
