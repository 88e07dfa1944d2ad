// W8A8 2:4 kernel with AVX512-VNNI + VBMI: 64 kept int8 values per chunk (32 groups, 128 x
// columns). vpmultishiftqb turns 128 meta bits into 64 byte positions, vpermi2b picks the
// matching x bytes from two registers, vpdpbusd multiplies and sums four products per lane.
// vpdpbusd wants unsigned x, so x is flipped to x + 128 and 128 * sum(w) is subtracted at the end
// (sum(w) from a second vpdpbusd with ones, once per weight row and chunk).
// GCC 12 warns about the deliberately undefined upper halves inside its own intrinsics
// (_mm512_reduce_add_*); the values are never read.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx512vbmi,fma")
#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "cpu/sparse24_driver.h"

namespace llmkern::sparse24 {
namespace {

constexpr int64_t kChunkGroups = 32;

// Up to kStreamRows x rows (decode) run_rows walks the weight one row at a time, so its values
// and its meta are two plain streams, fetched this many kept values ahead into L1 and L2
// (prefetches never fault: the last ones may point past the weight). Tiles of four rows made
// eight interleaved streams that DRAM served more slowly: the w8 kernel alone at M = 1, weights
// from DRAM, went from 17.5-19.7 to 24-25 GB/s on 4096x4096, 2048x5632 and 5632x2048 (Intel Xeon
// with AMX, 2 threads; a plain read of the same bytes 23.5-29 GB/s, the dense w8 kernel
// 24-26 GB/s in the same runs), and the W8A8 kernel took 0.83-0.95x the time at M = 1-2. Both
// are ~15% slower with hot weights, as x is loaded per weight row. The float and the AVX2
// kernels, which do more work per byte, were slower that way (fp32 and bf16 0.6-0.9x at
// M = 1-4, AVX2 kernels 0.7-0.97x), so they keep tiles (kStreamRows = 0).
constexpr int64_t kStreamL1 = 1024, kStreamL2 = 8192;

struct Tables {
  alignas(64) uint8_t shift[64];  // byte (q, i): bit offset of kept value 8q+i in its meta qword
  alignas(64) uint8_t base[64];   // byte j: first x column of kept value j's group, 4 * (j >> 1)
  constexpr Tables() : shift(), base() {
    for (int j = 0; j < 64; ++j) {
      shift[j] = static_cast<uint8_t>(16 * ((j / 8) % 4) + 2 * (j % 8));
      base[j] = static_cast<uint8_t>(4 * (j >> 1));
    }
  }
};
constexpr Tables kTables;

// 16 meta bytes -> the x column (0..127) of each of the 64 kept values of the chunk.
inline __m512i chunk_index(const uint8_t* meta) {
  const __m512i m = _mm512_zextsi128_si512(_mm_loadu_si128(reinterpret_cast<const __m128i*>(meta)));
  // Result qword q holds kept values 8q..8q+7, which live in meta qword q / 4.
  const __m512i src = _mm512_permutexvar_epi64(_mm512_setr_epi64(0, 0, 0, 0, 1, 1, 1, 1), m);
  const __m512i pos = _mm512_multishift_epi64_epi8(_mm512_load_si512(kTables.shift), src);
  return _mm512_ternarylogic_epi32(pos, _mm512_set1_epi8(3), _mm512_load_si512(kTables.base), 0xEA);
}

// Calls step(c, v, mc) for every chunk c of weight rows [n0, n0 + NR): v[r] its 64 kept int8
// values, mc[r] its 16 meta bytes; K's last partial chunk comes from zero-filled copies (zero
// values, pointing at x padding). With m0 == 0 the bytes ahead are fetched: the tiles ahead
// (TilePrefetch), or for one row (kStreamRows) along the values and meta streams.
template <int NR, class Step>
inline void for_each_chunk(const Args& a, int64_t n0, int64_t m0, const Step& step) {
  const int64_t half = a.k / 2, mbytes = meta_bytes(a.k), groups = a.k / 4;
  const int64_t full = groups / kChunkGroups, rem = groups % kChunkGroups;
  const TileRows<int8_t, NR> rows(a, n0);
  const TilePrefetch ahead(a, n0, m0, NR);
  if constexpr (NR > 1) ahead.meta(rows.meta[0], NR * mbytes);
  const int8_t* v[NR];
  const uint8_t* mc[NR];
  for (int64_t c = 0; c < full; ++c) {
    for (int r = 0; r < NR; ++r) {
      v[r] = rows.values[r] + 64 * c;
      mc[r] = rows.meta[r] + 16 * c;
      if constexpr (NR > 1) ahead(v[r], NR * half);
    }
    if constexpr (NR == 1) {
      if (m0 == 0) {
        _mm_prefetch(reinterpret_cast<const char*>(v[0]) + kStreamL1, _MM_HINT_T0);
        _mm_prefetch(reinterpret_cast<const char*>(v[0]) + kStreamL2, _MM_HINT_T1);
        if (c % 4 == 0) {  // 64 meta bytes per 4 chunks
          _mm_prefetch(reinterpret_cast<const char*>(mc[0]) + kStreamL1 / 4, _MM_HINT_T0);
          _mm_prefetch(reinterpret_cast<const char*>(mc[0]) + kStreamL2 / 4, _MM_HINT_T1);
        }
      }
    }
    step(c, v, mc);
  }
  if (rem) {
    alignas(64) int8_t vbuf[NR][64] = {};
    alignas(16) uint8_t mbuf[NR][16] = {};
    for (int r = 0; r < NR; ++r) {
      std::memcpy(vbuf[r], rows.values[r] + 64 * full, 2 * rem);
      std::memcpy(mbuf[r], rows.meta[r] + 16 * full, (rem + 1) / 2);
      v[r] = vbuf[r];
      mc[r] = mbuf[r];
    }
    step(full, v, mc);
  }
}

struct VnniKernel {
  static constexpr int kMaxM = 3;  // 32 zmm: NR*MR accumulators, 2*MR x, NR weight sums
  static constexpr int kStreamRows = kMaxM;

  template <int NR, int MR>
  static inline void step(__m512i (&acc)[NR][MR], __m512i (&wsum)[NR], const int8_t* const (&x)[MR],
                          int64_t c, const int8_t* const (&v)[NR], const uint8_t* const (&mc)[NR]) {
    const __m512i flip = _mm512_set1_epi8(static_cast<char>(0x80));
    const __m512i ones = _mm512_set1_epi8(1);
    __m512i xl[MR], xh[MR];
    for (int i = 0; i < MR; ++i) {
      xl[i] = _mm512_xor_si512(_mm512_loadu_si512(x[i] + 128 * c), flip);
      xh[i] = _mm512_xor_si512(_mm512_loadu_si512(x[i] + 128 * c + 64), flip);
    }
    for (int r = 0; r < NR; ++r) {
      const __m512i idx = chunk_index(mc[r]);
      const __m512i w = _mm512_loadu_si512(v[r]);
      wsum[r] = _mm512_dpbusd_epi32(wsum[r], ones, w);
      for (int i = 0; i < MR; ++i)
        acc[r][i] = _mm512_dpbusd_epi32(acc[r][i], _mm512_permutex2var_epi8(xl[i], idx, xh[i]), w);
    }
  }

  template <int NR, int MR>
  static void tile(const Args& a, int64_t n0, int64_t m0) {
    const int8_t* x[MR];
    for (int i = 0; i < MR; ++i) x[i] = static_cast<const int8_t*>(a.x) + (m0 + i) * a.ldx;
    __m512i acc[NR][MR], wsum[NR];
    for (int r = 0; r < NR; ++r) {
      wsum[r] = _mm512_setzero_si512();
      for (int i = 0; i < MR; ++i) acc[r][i] = _mm512_setzero_si512();
    }
    for_each_chunk<NR>(a, n0, m0, [&](int64_t c, const auto& v, const auto& mc) {
      step<NR, MR>(acc, wsum, x, c, v, mc);
    });
    int32_t* raw = static_cast<int32_t*>(a.raw);
    for (int r = 0; r < NR; ++r) {
      // Wrapping int32 arithmetic, as in the accumulators: exact whenever the true sum fits.
      const uint32_t corr = 128u * static_cast<uint32_t>(_mm512_reduce_add_epi32(wsum[r]));
      for (int i = 0; i < MR; ++i)
        raw[(m0 + i) * a.ldr + n0 + r] =
            static_cast<int32_t>(static_cast<uint32_t>(_mm512_reduce_add_epi32(acc[r][i])) - corr);
    }
  }
};

// Weight-only 2:4 on x rounded to int16 (Args::x_scale, int8::round_x_int16_avx2), as the
// dense weight-only kernel does at few rows: a chunk of 128 x columns is one kW8XBlock block.
// x comes as its two byte planes, so the chunk's byte indices (chunk_index) pick each kept
// value's low and high byte with one vpermi2b each, and vpdpbusd multiplies them by the values:
// the low byte is unsigned already, the high byte comes flipped to unsigned (+128, by the glue:
// two xors fewer per chunk and x row; on the Intel Xeon, hot weights, M = 1: 14-16 -> 13-15
// cycles a chunk in a C++ loop, 2048x5632 op 0.289-0.306 -> 0.279-0.296 ms) and 128 *
// sum(values) is removed, per 4-value lane. lo + 256 * hi is exact in int32 per lane and
// chunk; it is scaled into float once a chunk.
struct Int16Vnni {
  static constexpr int kMaxM = 2;  // 32 zmm: NR*MR float sums, 4*MR x planes, temporaries
  static constexpr int kStreamRows = kMaxM;

  template <int NR, int MR>
  static inline void step(__m512 (&sum)[NR][MR], const uint8_t* const (&x)[MR], int64_t ldx,
                          const float (&scale)[MR], int64_t c, const int8_t* const (&v)[NR],
                          const uint8_t* const (&mc)[NR]) {
    const __m512i ones = _mm512_set1_epi8(1);
    __m512i lo_a[MR], lo_b[MR], hi_a[MR], hi_b[MR];
    for (int i = 0; i < MR; ++i) {
      lo_a[i] = _mm512_loadu_si512(x[i] + 128 * c);
      lo_b[i] = _mm512_loadu_si512(x[i] + 128 * c + 64);
      hi_a[i] = _mm512_loadu_si512(x[i] + ldx + 128 * c);
      hi_b[i] = _mm512_loadu_si512(x[i] + ldx + 128 * c + 64);
    }
    for (int r = 0; r < NR; ++r) {
      const __m512i idx = chunk_index(mc[r]);
      const __m512i w = _mm512_loadu_si512(v[r]);
      const __m512i corr = _mm512_slli_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), ones, w), 7);
      for (int i = 0; i < MR; ++i) {
        const __m512i lo = _mm512_dpbusd_epi32(_mm512_setzero_si512(),
                                               _mm512_permutex2var_epi8(lo_a[i], idx, lo_b[i]), w);
        const __m512i hi = _mm512_dpbusd_epi32(_mm512_setzero_si512(),
                                               _mm512_permutex2var_epi8(hi_a[i], idx, hi_b[i]), w);
        const __m512i total = _mm512_add_epi32(lo, _mm512_slli_epi32(_mm512_sub_epi32(hi, corr), 8));
        sum[r][i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(total), _mm512_set1_ps(scale[i]), sum[r][i]);
      }
    }
  }

  template <int NR, int MR>
  static void tile(const Args& a, int64_t n0, int64_t m0) {
    const int64_t blocks = (a.k + 4 * kChunkGroups - 1) / (4 * kChunkGroups);  // = chunks
    const uint8_t* x[MR];  // low-byte plane; the high bytes follow ldx on
    for (int i = 0; i < MR; ++i) x[i] = static_cast<const uint8_t*>(a.x) + (m0 + i) * 2 * a.ldx;
    __m512 sum[NR][MR];
    for (int r = 0; r < NR; ++r)
      for (int i = 0; i < MR; ++i) sum[r][i] = _mm512_setzero_ps();
    for_each_chunk<NR>(a, n0, m0, [&](int64_t c, const auto& v, const auto& mc) {
      float scale[MR];
      for (int i = 0; i < MR; ++i) scale[i] = a.x_scale[(m0 + i) * blocks + c];
      step<NR, MR>(sum, x, a.ldx, scale, c, v, mc);
    });
    float* raw = static_cast<float*>(a.raw);
    for (int r = 0; r < NR; ++r)
      for (int i = 0; i < MR; ++i) raw[(m0 + i) * a.ldr + n0 + r] = _mm512_reduce_add_ps(sum[r][i]);
  }
};

}  // namespace

void w8_int16_rows_avx512_vnni(const Args& a, int64_t n0, int64_t n1) {
  run_rows<Int16Vnni>(a, n0, n1);
}

void int_rows_avx512_vnni(const Args& a, int64_t n0, int64_t n1) { run_rows<VnniKernel>(a, n0, n1); }

}  // namespace llmkern::sparse24
