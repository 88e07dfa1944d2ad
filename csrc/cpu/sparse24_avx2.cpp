// AVX2 2:4 kernels. Finite float x: SpreadKernel spreads each row's kept values to dense lanes
// with a table-driven vpshufb and multiplies contiguous x (fp32, bf16 and int8 values). Kernel
// multiplies kept values only and serves the rest: int x, fp16 values (cvtph2ps wants packed
// halves) and x with NaN/inf (pruned weights are never multiplied by it, the ops' contract).
// Kernel picks x per kept value; AVX2 has no two-source permute, so each half chunk (4 groups:
// 16 x columns, 8 kept values) picks from two x vectors with one index vector and blends: float
// lanes with in-lane vpermilps from lane-arranged x (FloatLanes::load_x), int lanes with vpermd
// from the low and high 8 columns. Int16Planes: int8 values against x rounded to int16, the
// weight-only path at decode-sized x (w8_int16_rows_avx2).
#pragma GCC target("avx2,fma,f16c")
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "cpu/int8_kernels.h"
#include "cpu/sparse24_avx2_values.h"
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

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

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
  static Out sum(Vec v) { return hsum(v); }
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
  static constexpr int kStreamRows = 0;
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
    if (rem) {
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

// Float kernel without x permutes: each step of a weight row (2 groups: 8 columns, 4 kept
// values) is spread to its 8 dense lanes by one vpshufb whose control comes from a 256-entry
// table indexed by the step's meta byte, and multiplied with 8 contiguous x columns. That
// multiplies the pruned zeros too, but a variable vpermilps (Kernel picks x with two per 8
// kept values) takes 4 cycles on AMD Zen 1 and vpshufb 1.
// A spread class P gives S (value type), kSource (bytes of one step's kept values), kLoad (bytes
// read per `source`, which puts them in both 128-bit lanes), `lane` (the 4 control bytes that
// put the value at source byte `at` into a dense lane), kPruned (those of a pruned lane),
// `step_offset` (what moves a control to the u-th step of a source) and `widen` (lanes -> fp32).
// Float values: 16-byte sources, pruned lanes zero, lanes already fp32 bit patterns.
template <int Source>
struct FloatSource {
  static constexpr int kSource = Source, kLoad = 16;
  static constexpr uint8_t kPruned[4] = {0x80, 0x80, 0x80, 0x80};
  static __m256i step_offset(int u) { return _mm256_set1_epi8(static_cast<char>(u * kSource)); }
  static __m256i source(const uint8_t* p) {
    return _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  }
  static __m256 widen(__m256i v) { return _mm256_castsi256_ps(v); }
};
struct Bf16Spread : FloatSource<8> {
  using S = uint16_t;
  static void lane(uint8_t* d, int at) { d[0] = d[1] = 0x80, d[2] = at, d[3] = at + 1; }  // top half
};
struct F32Spread : FloatSource<16> {
  using S = float;
  static void lane(uint8_t* d, int at) { d[0] = at, d[1] = at + 1, d[2] = at + 2, d[3] = at + 3; }
};
struct I8Spread {
  using S = int8_t;
  static constexpr int kSource = 4, kLoad = 8;
  // Each lane becomes the fp32 bit pattern 2^23 + (v ^ 0x80): v's byte (xor-ed after the
  // shuffle) under the exponent byte 0x4B, which source byte 9 holds; pruned lanes take byte 8
  // (0) and come out as 2^23 + 128. Subtracting that gives v exactly, in an add pipe: the int32
  // -> fp32 conversion has one port on AMD Zen 1.
  static void lane(uint8_t* d, int at) { d[0] = at, d[1] = d[2] = 8, d[3] = 9; }
  static constexpr uint8_t kPruned[4] = {8, 8, 8, 9};
  // Step u of a source: only the data byte moves (past 8, it reads the zero bytes 10-15).
  static __m256i step_offset(int u) { return _mm256_set1_epi32(u * kSource); }
  static __m256i source(const uint8_t* p) {
    const __m128i exponent = _mm_cvtsi32_si128(0x4B00);
    return _mm256_broadcastsi128_si256(_mm_unpacklo_epi64(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)), exponent));
  }
  static __m256 widen(__m256i v) {
    const __m256 v2 = _mm256_castsi256_ps(_mm256_xor_si256(v, _mm256_set1_epi32(0x80)));
    return _mm256_sub_ps(v2, _mm256_set1_ps(8388736.f));  // 2^23 + 128
  }
};

template <class P>
struct SpreadKernel {
  static constexpr int kMaxM = 2;
  static constexpr int kStreamRows = 0;
  static constexpr int kSteps = P::kLoad / P::kSource;  // steps per source load
  using S = typename P::S;
  struct Table {
    alignas(32) uint8_t ctl[256][32];
  };

  // ctl[m]: low 128-bit lane = group 2t (positions in bits 0-3 of meta byte m, its kept values
  // at source bytes 0 and kSource / 4), high lane = group 2t + 1 (bits 4-7). A position named
  // twice (invalid meta, or the zero padding) takes the second kept value, as decompress_24.
  static const Table& table() {
    static const Table t = [] {
      Table out;
      for (auto& row : out.ctl)
        for (int q = 0; q < 8; ++q) std::memcpy(row + 4 * q, P::kPruned, 4);
      const int value = P::kSource / 4;
      for (int m = 0; m < 256; ++m)
        for (int g = 0; g < 2; ++g)
          for (int slot = 0; slot < 2; ++slot) {
            const int pos = (m >> (4 * g + 2 * slot)) & 3;
            P::lane(out.ctl[m] + 16 * g + 4 * pos, (2 * g + slot) * value);
          }
      return out;
    }();
    return t;
  }

  template <int NR, int MR>
  static void tile(const Args& a, int64_t n0, int64_t m0) {
    constexpr int kAcc = MR == 1 ? 2 : 1;  // one x row: alternate two sums (FMA latency)
    const Table& tab = table();
    const int64_t row_bytes = a.k / 2 * int64_t{sizeof(S)}, mbytes = meta_bytes(a.k);
    const int64_t steps = mbytes, loads = row_bytes / P::kLoad;
    const uint8_t* v[NR];
    const uint8_t* mrow[NR];
    for (int r = 0; r < NR; ++r) {
      v[r] = static_cast<const uint8_t*>(a.values) + (n0 + r) * row_bytes;
      mrow[r] = a.meta + (n0 + r) * mbytes;
    }
    const float* x[MR];
    for (int i = 0; i < MR; ++i) x[i] = static_cast<const float*>(a.x) + (m0 + i) * a.ldx;
    __m256 acc[NR][MR][kAcc];
    for (auto& per_row : acc)
      for (auto& per_x : per_row)
        for (auto& s : per_x) s = _mm256_setzero_ps();

    // One step: source (both lanes) spread by the control of meta byte t, shifted to the
    // step's place u within the source.
    auto step = [&](const __m256i (&src)[NR], int64_t t, int u) {
      __m256 xs[MR];
      for (int i = 0; i < MR; ++i) xs[i] = _mm256_loadu_ps(x[i] + 8 * t);
      for (int r = 0; r < NR; ++r) {
        __m256i c = _mm256_load_si256(reinterpret_cast<const __m256i*>(tab.ctl[mrow[r][t]]));
        if (u) c = _mm256_add_epi8(c, P::step_offset(u));
        const __m256 w = P::widen(_mm256_shuffle_epi8(src[r], c));
        for (int i = 0; i < MR; ++i) acc[r][i][u % kAcc] = _mm256_fmadd_ps(w, xs[i], acc[r][i][u % kAcc]);
      }
    };
    const TilePrefetch ahead(a, n0, m0, NR);  // the tiles ahead
    for (int64_t l = 0; l < loads; ++l) {
      __m256i src[NR];
      for (int r = 0; r < NR; ++r) {
        if ((P::kLoad * l) % 64 == 0) ahead(v[r] + P::kLoad * l, NR * row_bytes);
        src[r] = P::source(v[r] + P::kLoad * l);
      }
      for (int u = 0; u < kSteps; ++u) step(src, l * kSteps + u, u);
    }
    if (loads * kSteps < steps) {  // the row's last bytes (< kLoad), zero-padded
      __m256i src[NR];
      for (int r = 0; r < NR; ++r) {
        alignas(16) uint8_t buf[16] = {};
        std::memcpy(buf, v[r] + P::kLoad * loads, row_bytes - P::kLoad * loads);
        src[r] = P::source(buf);
      }
      for (int u = 0; loads * kSteps + u < steps; ++u) step(src, loads * kSteps + u, u);
    }
    float* raw = static_cast<float*>(a.raw);
    for (int r = 0; r < NR; ++r)
      for (int i = 0; i < MR; ++i) {
        const __m256 s = kAcc == 2 ? _mm256_add_ps(acc[r][i][0], acc[r][i][kAcc - 1]) : acc[r][i][0];
        raw[(m0 + i) * a.ldr + n0 + r] = hsum(s);
      }
  }
};

// Int8 values against x rounded to int16 per kW8XBlock columns (the rounding of
// int8::round_x_int16_avx2, as the dense weight-only kernel at few rows), for decode-sized x:
// the float kernels convert every weight to fp32, which costs more than reading it. x comes as
// two byte planes (low and high bytes of the int16 values), so that one 16-byte source spans
// the 16 columns of two steps. Per 4 steps of a row (16 values, one 32-bit meta load):
//  - the meta bytes become a vpshufb control of 2 steps per 128-bit lane (the column of each
//    kept value within its 16: the meta dword shifted by 0, 2, 4 and 6 bits per dword, its
//    2-bit field picked per byte by a fixed shuffle and masked, plus the group's offset);
//  - that control picks the low and the high bytes of x, interleaved into int16;
//  - vpmaddwd multiplies them by the sign-extended values into int32 lanes, exact over a block
//    (8 products of |x| <= 32767, |v| <= 128 a lane), scaled into fp32 once a block.
struct Int16Planes {
  static constexpr int kMaxM = 2;
  static constexpr int kStreamRows = 0;
  static constexpr int64_t kBlockGroups = int8::kW8XBlock / 32;  // 4-step groups per x block

  struct Consts {
    __m256i shifts, pick, offset;
  };
  static Consts consts() {
    alignas(32) int8_t pick[32], offset[32];
    for (int lane = 0; lane < 2; ++lane)
      for (int b = 0; b < 16; ++b) {
        const int s = b >> 2 & 1, j = b & 3, q = 2 * lane + s;  // step q of the 4, kept value j
        // Bytes 0-7 of a lane: steps 2 lane and 2 lane + 1, from dword j of the source (the 4
        // meta bytes shifted right by 2 j: kept value j's field in bits 0-1).
        pick[16 * lane + b] = b < 8 ? static_cast<int8_t>(4 * j + q) : int8_t{-128};
        offset[16 * lane + b] = static_cast<int8_t>(8 * s + 4 * (j >> 1));
      }
    return {_mm256_setr_epi32(0, 2, 4, 6, 0, 2, 4, 6),
            _mm256_load_si256(reinterpret_cast<const __m256i*>(pick)),
            _mm256_load_si256(reinterpret_cast<const __m256i*>(offset))};
  }

  // acc[i] += 4 steps of one weight row (16 values at v, 4 meta bytes at m) times x row i's
  // planes xl[i], xh[i]; the control and the widened values serve every x row.
  template <int MR>
  static inline void group(const Consts& c, __m256i (&acc)[MR], const int8_t* v, const uint8_t* m,
                           const __m256i (&xl)[MR], const __m256i (&xh)[MR]) {
    int32_t mw;
    std::memcpy(&mw, m, 4);
    const __m256i src = _mm256_srlv_epi32(_mm256_set1_epi32(mw), c.shifts);
    const __m256i pos = _mm256_and_si256(_mm256_shuffle_epi8(src, c.pick), _mm256_set1_epi8(3));
    const __m256i ctl = _mm256_add_epi8(pos, c.offset);
    const __m256i w = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(v)));
    for (int i = 0; i < MR; ++i) {
      const __m256i xv = _mm256_unpacklo_epi8(_mm256_shuffle_epi8(xl[i], ctl), _mm256_shuffle_epi8(xh[i], ctl));
      acc[i] = _mm256_add_epi32(acc[i], _mm256_madd_epi16(xv, w));
    }
  }

  template <int NR, int MR>
  static void tile(const Args& a, int64_t n0, int64_t m0) {
    const Consts c = consts();
    const int64_t half = a.k / 2, mbytes = meta_bytes(a.k);
    const int64_t groups = (mbytes + 3) / 4, blocks = (groups + kBlockGroups - 1) / kBlockGroups;
    // Groups whose 16 values and 4 meta bytes lie inside every row; the rest read zero-padded
    // copies (past K, x is zero).
    const int64_t inside = std::min(half / 16, mbytes / 4);
    const int8_t* v = static_cast<const int8_t*>(a.values) + n0 * half;
    const uint8_t* mt = a.meta + n0 * mbytes;
    const uint8_t* xlo[MR];
    for (int i = 0; i < MR; ++i) xlo[i] = static_cast<const uint8_t*>(a.x) + (m0 + i) * 2 * a.ldx;
    __m256 sum[NR][MR];
    for (auto& per_row : sum)
      for (auto& s : per_row) s = _mm256_setzero_ps();
    const TilePrefetch ahead(a, n0, m0, NR);
    for (int64_t blk = 0; blk < blocks; ++blk) {
      const int64_t g0 = blk * kBlockGroups, g1 = std::min(groups, g0 + kBlockGroups);
      for (int r = 0; r < NR; ++r) {  // the tiles ahead
        ahead(v + r * half + 16 * g0, NR * half);
        ahead(mt + r * mbytes + 4 * g0, NR * mbytes);
      }
      __m256i acc[NR][MR];
      for (auto& per_row : acc)
        for (auto& s : per_row) s = _mm256_setzero_si256();
      for (int64_t g = g0; g < g1; ++g) {
        __m256i xl[MR], xh[MR];
        for (int i = 0; i < MR; ++i) {
          xl[i] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xlo[i] + 32 * g));
          xh[i] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xlo[i] + a.ldx + 32 * g));
        }
        if (g < inside) {
          for (int r = 0; r < NR; ++r)
            group<MR>(c, acc[r], v + r * half + 16 * g, mt + r * mbytes + 4 * g, xl, xh);
        } else {
          for (int r = 0; r < NR; ++r) {
            int8_t vb[16] = {};
            uint8_t mb[4] = {};
            std::memcpy(vb, v + r * half + 16 * g, std::min<int64_t>(16, half - 16 * g));
            std::memcpy(mb, mt + r * mbytes + 4 * g, std::min<int64_t>(4, mbytes - 4 * g));
            group<MR>(c, acc[r], vb, mb, xl, xh);
          }
        }
      }
      for (int i = 0; i < MR; ++i) {
        const __m256 s = _mm256_set1_ps(a.x_scale[(m0 + i) * blocks + blk]);
        for (int r = 0; r < NR; ++r) sum[r][i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc[r][i]), s, sum[r][i]);
      }
    }
    float* raw = static_cast<float*>(a.raw);
    for (int r = 0; r < NR; ++r)
      for (int i = 0; i < MR; ++i) raw[(m0 + i) * a.ldr + n0 + r] = hsum(sum[r][i]);
  }
};

}  // namespace

namespace {
// The spread kernel for finite x, Kernel (kept values only) otherwise.
template <class Spread, class Values>
void spread_or_kept(const Args& a, int64_t n0, int64_t n1) {
  if (a.x_finite)
    run_rows<SpreadKernel<Spread>>(a, n0, n1);
  else
    run_rows<Kernel<FloatLanes<Values>>>(a, n0, n1);
}
}  // namespace

void float_rows_avx2(ValueType vt, const Args& a, int64_t n0, int64_t n1) {
  switch (vt) {
    case ValueType::F32: spread_or_kept<F32Spread, F32Values>(a, n0, n1); break;
    case ValueType::BF16: spread_or_kept<Bf16Spread, Bf16Values>(a, n0, n1); break;
    case ValueType::F16: run_rows<Kernel<FloatLanes<F16Values>>>(a, n0, n1); break;
    case ValueType::I8: spread_or_kept<I8Spread, I8Values>(a, n0, n1); break;
  }
}

void int_rows_avx2(const Args& a, int64_t n0, int64_t n1) { run_rows<Kernel<IntLanes>>(a, n0, n1); }

void w8_int16_rows_avx2(const Args& a, int64_t n0, int64_t n1) { run_rows<Int16Planes>(a, n0, n1); }

}  // namespace llmkern::sparse24
