// AMX kernels (Intel Xeon from Sapphire Rapids): the W8A8 GEMM, and weight-only on int16 x
// (further down). W8A8: tdpbusd multiplies a tile of 16 rows x 64 unsigned activation bytes
// (q + 128, the VNNI format) by a tile of 16 rows x 16 channels x 4 k of signed weights into
// 16 x 16 int32, 16 x 16 x 64 multiply-adds per instruction. A 16-channel slice of a packed W8A8
// panel is already a weight tile (rows of 4 k per channel, width * 4 bytes apart), so this
// kernel reads the VNNI layout unchanged and subtracts the same compensation.
//
// Tiles: C[r][c] = tmm(2 r + c) for two 16-row blocks x two 16-channel vectors, A = tmm4/5,
// B = tmm6/7. K runs in 64-byte steps; the last kp % 64 bytes (fewer than 16 groups of 4) are
// added with vpdpbusd to the stored int32 sums, so every tile keeps one shape per row count.
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,fma,amx-tile,amx-int8")
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"  // GCC bug 105593, as in int8_avx512.cpp

#include <cstring>

#include "cpu/int8_avx512_common.h"

namespace llmkern::int8 {
namespace {

constexpr int kTileRows = 16;
constexpr int kTileBytes = 64;  // bytes per tile row: 64 activation k, or 16 channels x 4 k

// The 64-byte operand of ldtilecfg (palette 1).
struct alignas(64) TileConfig {
  uint8_t palette = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};
static_assert(sizeof(TileConfig) == 64, "ldtilecfg reads 64 bytes");

// Shapes for row blocks of rows0 and rows1 (0: unused) rows.
void configure(int rows0, int rows1) {
  TileConfig c;
  const int rows[2] = {rows0, rows1 > 0 ? rows1 : rows0};
  for (int r = 0; r < 2; ++r) {
    for (int v = 0; v < 2; ++v) {
      c.rows[2 * r + v] = rows[r];
      c.colsb[2 * r + v] = kTileBytes;  // 16 int32
    }
    c.rows[4 + r] = rows[r];
    c.colsb[4 + r] = kTileBytes;
    c.rows[6 + r] = kTileRows;
    c.colsb[6 + r] = kTileBytes;
  }
  _tile_loadconfig(&c);
}

// int32 sums of up to 32 rows x 32 channels, row stride 32.
struct Sums {
  alignas(64) int32_t v[2 * kTileRows][32];
};

// Sums over k in [0, kfull) of rows [m, m + 16 * (1 + TwoRows)) x vectors [v0, v0 + 1 + TwoCols)
// of a panel `width` channels wide, by tiles.
template <bool TwoRows, bool TwoCols>
void tile_sums(const W8a8Args& a, const uint8_t* x, const int8_t* panel, int64_t width, int64_t v0,
               int64_t kfull, Sums& s) {
  _tile_zero(0);
  if (TwoCols) _tile_zero(1);
  if (TwoRows) _tile_zero(2);
  if (TwoRows && TwoCols) _tile_zero(3);
  const int64_t b_stride = width * 4;
  for (int64_t kc = 0; kc < kfull; kc += kTileBytes) {
    const int8_t* b = panel + (kc / 4 * width + v0 * 16) * 4;
    _tile_loadd(4, x + kc, a.kp);
    _tile_loadd(6, b, b_stride);
    _tile_dpbusd(0, 4, 6);
    if (TwoCols) {
      _tile_loadd(7, b + 64, b_stride);
      _tile_dpbusd(1, 4, 7);
    }
    if (TwoRows) {
      _tile_loadd(5, x + kTileRows * a.kp + kc, a.kp);
      _tile_dpbusd(2, 5, 6);
      if (TwoCols) _tile_dpbusd(3, 5, 7);
    }
  }
  constexpr int64_t ld = sizeof(s.v[0]);
  _tile_stored(0, &s.v[0][0], ld);
  if (TwoCols) _tile_stored(1, &s.v[0][16], ld);
  if (TwoRows) _tile_stored(2, &s.v[kTileRows][0], ld);
  if (TwoRows && TwoCols) _tile_stored(3, &s.v[kTileRows][16], ld);
}

// Rows [m, m + rows) x vectors [v0, v0 + nv) of panel p: tiles over the first kfull bytes of k,
// vpdpbusd over the rest, then the epilogue.
void block(const W8a8Args& a, int64_t m, int rows, int64_t p, int64_t width, int64_t v0, int nv) {
  const uint8_t* x = static_cast<const uint8_t*>(a.a) + m * a.kp;
  const int8_t* panel = a.w + p * kPanel * a.kp;
  const int64_t kfull = a.kp / kTileBytes * kTileBytes;
  Sums s;
  const bool two_rows = rows > kTileRows, two_cols = nv > 1;
  if (two_rows && two_cols) tile_sums<true, true>(a, x, panel, width, v0, kfull, s);
  else if (two_rows) tile_sums<true, false>(a, x, panel, width, v0, kfull, s);
  else if (two_cols) tile_sums<false, true>(a, x, panel, width, v0, kfull, s);
  else tile_sums<false, false>(a, x, panel, width, v0, kfull, s);
  for (int v = 0; v < nv; ++v) {
    const int64_t n0 = p * kPanel + (v0 + v) * 16;
    const __m512i comp = _mm512_loadu_si512(a.comp + n0);
    const int8_t* b = panel + (v0 + v) * 64;
    for (int r = 0; r < rows; ++r) {
      __m512i acc = _mm512_load_si512(&s.v[r][v * 16]);
      for (int64_t kk = kfull / 4; kk < a.kp / 4; ++kk) {
        int32_t four;
        std::memcpy(&four, x + r * a.kp + kk * 4, 4);
        dpbusd(acc, _mm512_set1_epi32(four), _mm512_loadu_si512(b + kk * width * 4));
      }
      w8a8_epilogue16(a, m + r, n0, _mm512_sub_epi32(acc, comp));
    }
  }
}

// Weight-only: x rounded to int16 (W8Args::xq) is split into two signed bytes, xq = 256 hi +
// lo + 128, held as rows 2r and 2r + 1 of one x tile, so one tdpbssd per weight tile gives
// both byte sums of up to 8 rows of x; 128 * sum_k w (vpdpbusd on the interleaved weights)
// completes them, exactly in int32 (|256 * hi sum| <= 2^29 over a kW8XBlock block). The weight
// panel (one k per row) is interleaved on the fly into k quads, four 16 x 16 weight tiles per
// 64 k. On 4096x256 with hot weights (Intel Xeon with AMX) this costs about 1000 cycles per
// 8 KB of weights at M = 8 against 2000 for the vpdpwssd kernel, which is faster at M = 1-2.
constexpr int64_t kBlockSteps = kW8XBlock / kTileBytes;  // tile k steps per x block
constexpr int64_t kW8ChunkRows = 192;                     // rows whose float sums stay on the stack
constexpr int kQuarterQuads = kTileRows / 2;             // k quads interleaved in one go
static_assert(kW8XBlock % kTileBytes == 0, "x blocks are whole tile k steps");
static_assert(2 * kAmxW8XRows == kTileRows, "two byte rows per x row fill a tile");

using WeightTile = int8_t[kTileRows][kTileBytes];

// A block's weight tiles ([k step][tile]) and, per tile column, the sum of its weights.
struct BlockTiles {
  WeightTile w[kBlockSteps][4];
  int32_t wsum[4][16];
};

// kQuarterQuads k quads from `row` (rows `width` apart; with Partial, rows from `valid` on are
// zero) into consecutive rows of four weight tiles, adding each tile column's weights into s.
template <bool Partial>
void interleave_quads(const int8_t* row, int64_t width, __mmask64 wmask, int64_t valid, int8_t* t0,
                      __m512i s[4]) {
  const __m512i ones = _mm512_set1_epi8(1);
  __m512i s0 = s[0], s1 = s[1], s2 = s[2], s3 = s[3];
  constexpr int64_t kTile = kTileRows * kTileBytes;
  for (int q = 0; q < kQuarterQuads; ++q, row += 4 * width, t0 += kTileBytes) {
    __m512i r[4];
    _Pragma("GCC unroll 4")
    for (int i = 0; i < 4; ++i) {
      prefetch_w8_row(row, i, width);
      r[i] = !Partial || 4 * q + i < valid ? _mm512_maskz_loadu_epi8(wmask, row + i * width)
                                           : _mm512_setzero_si512();
    }
    const __m512i a = _mm512_unpacklo_epi8(r[0], r[1]), b = _mm512_unpackhi_epi8(r[0], r[1]);
    const __m512i c = _mm512_unpacklo_epi8(r[2], r[3]), d = _mm512_unpackhi_epi8(r[2], r[3]);
    const __m512i q0 = _mm512_unpacklo_epi16(a, c), q1 = _mm512_unpackhi_epi16(a, c);
    const __m512i q2 = _mm512_unpacklo_epi16(b, d), q3 = _mm512_unpackhi_epi16(b, d);
    _mm512_store_si512(t0, q0);
    _mm512_store_si512(t0 + kTile, q1);
    _mm512_store_si512(t0 + 2 * kTile, q2);
    _mm512_store_si512(t0 + 3 * kTile, q3);
    dpbusd(s0, ones, q0);
    dpbusd(s1, ones, q1);
    dpbusd(s2, ones, q2);
    dpbusd(s3, ones, q3);
  }
  s[0] = s0;
  s[1] = s1;
  s[2] = s2;
  s[3] = s3;
}

// Quarter g of block blk of a panel (`width` channels, one k per row, zero from k), k quads
// [8 (g % 2), 8 (g % 2) + 8) of k step g / 2, into weight tiles and their sums: unpacking keeps
// 128-bit lanes, so column j of tile t is channel 16 (j / 4) + 4 t + j % 4 (to_tile_order maps
// channel vectors to that order and back).
void interleave_quarter(const int8_t* panel, int64_t width, __mmask64 wmask, int64_t k, int64_t blk,
                        int g, BlockTiles& bt) {
  const int st = g / 2, q0 = g % 2 * kQuarterQuads;
  const int64_t k0 = blk * kW8XBlock + st * kTileBytes + 4 * q0;
  const int64_t valid = std::min(k, (blk + 1) * kW8XBlock) - k0;
  static_assert(sizeof(bt.w[0]) == 4 * kTileRows * kTileBytes, "a step's tiles are contiguous");
  __m512i s[4];
  for (int t = 0; t < 4; ++t) s[t] = g == 0 ? _mm512_setzero_si512() : _mm512_load_si512(bt.wsum[t]);
  if (valid >= 4 * kQuarterQuads)
    interleave_quads<false>(panel + k0 * width, width, wmask, valid, bt.w[st][0][q0], s);
  else
    interleave_quads<true>(panel + k0 * width, width, wmask, valid, bt.w[st][0][q0], s);
  for (int t = 0; t < 4; ++t) _mm512_store_si512(bt.wsum[t], s[t]);
}

// out[i] 128-bit block j = in[j] block i: four channel vectors <-> four tile-order vectors (the
// map is its own inverse).
void to_tile_order(const __m512 in[4], __m512 out[4]) {
  const __m512 lo01 = _mm512_shuffle_f32x4(in[0], in[1], 0x44);
  const __m512 lo23 = _mm512_shuffle_f32x4(in[2], in[3], 0x44);
  const __m512 hi01 = _mm512_shuffle_f32x4(in[0], in[1], 0xee);
  const __m512 hi23 = _mm512_shuffle_f32x4(in[2], in[3], 0xee);
  out[0] = _mm512_shuffle_f32x4(lo01, lo23, 0x88);
  out[1] = _mm512_shuffle_f32x4(lo01, lo23, 0xdd);
  out[2] = _mm512_shuffle_f32x4(hi01, hi23, 0x88);
  out[3] = _mm512_shuffle_f32x4(hi01, hi23, 0xdd);
}

// Tiles of the weight-only kernel: C = tmm0-3 (one per weight tile), 2 * x_rows byte rows of x
// = tmm4, weights = tmm5-7.
void configure_w8(int x_rows) {
  TileConfig c;
  for (int t = 0; t < 8; ++t) {
    c.rows[t] = t < 5 ? 2 * x_rows : kTileRows;
    c.colsb[t] = kTileBytes;
  }
  _tile_loadconfig(&c);
}

// Rows [m0, m1) (at most kW8ChunkRows) of panel p, tiles of x_rows rows of x (x is padded).
void w8_panel_rows(const W8Args& a, int64_t m0, int64_t m1, int64_t p, int x_rows) {
  const int64_t width = std::min(kPanel, round_up(a.n, kLane) - p * kPanel), nvec = width / 16;
  const int8_t* panel = a.w + p * kPanel * a.k;
  const float* s = a.scales + p * kPanel * a.groups;  // [groups][width]
  const int64_t blocks = (a.k + kW8XBlock - 1) / kW8XBlock;
  const __mmask64 wmask = width >= 64 ? ~0ull : (1ull << width) - 1;
  alignas(64) BlockTiles tiles[2];  // this block's and the next one's
  alignas(64) int32_t c[4][kTileRows][16];
  alignas(64) float sums[kW8ChunkRows][4][16];  // tile order
  std::memset(sums, 0, (m1 - m0) * sizeof(sums[0]));
  for (int g = 0; g < 2 * kBlockSteps; ++g) interleave_quarter(panel, width, wmask, a.k, 0, g, tiles[0]);
  __m512 ws_tile[4];  // the block's weight scales in tile order, re-read when the group changes
  int64_t group = -1;
  for (int64_t blk = 0; blk < blocks; ++blk) {
    const int64_t k0 = blk * kW8XBlock, k1 = std::min(a.k, k0 + kW8XBlock);
    const int steps = static_cast<int>((k1 - k0 + kTileBytes - 1) / kTileBytes);
    const BlockTiles& now = tiles[blk % 2];
    __m512i comp[4];  // 128 * sum_k w per tile column
    for (int t = 0; t < 4; ++t) comp[t] = _mm512_slli_epi32(_mm512_load_si512(now.wsum[t]), 7);
    // Scale groups are whole blocks (w8_int16_fits).
    if (k0 / a.group_size != group) {
      group = k0 / a.group_size;
      __m512 ws[4];
      for (int v = 0; v < 4; ++v)
        ws[v] = _mm512_maskz_loadu_ps(tail_mask(width - 16 * v), s + group * width + 16 * v);
      to_tile_order(ws, ws_tile);
    }
    for (int64_t m = m0; m < m1; m += x_rows) {
      const int8_t* xb = a.x_bytes + ((m / x_rows) * a.x_bytes_steps + k0 / kTileBytes) * 2 * x_rows * kTileBytes;
      // The next block's weights are interleaved in quarters between this block's multiplies
      // (with the first row tile), so the shuffles run while the tile unit works. Only the
      // last block can have fewer than kBlockSteps steps.
      const bool next = m == m0 && blk + 1 < blocks;
      BlockTiles& later = tiles[(blk + 1) % 2];
      _tile_zero(0);
      _tile_zero(1);
      _tile_zero(2);
      _tile_zero(3);
      for (int st = 0; st < steps; ++st) {
        _tile_loadd(4, xb + st * 2 * x_rows * kTileBytes, kTileBytes);
        _tile_loadd(5, now.w[st][0], kTileBytes);
        _tile_loadd(6, now.w[st][1], kTileBytes);
        _tile_dpbssd(0, 4, 5);
        _tile_dpbssd(1, 4, 6);
        if (next) interleave_quarter(panel, width, wmask, a.k, blk + 1, 2 * st, later);
        _tile_loadd(7, now.w[st][2], kTileBytes);
        _tile_loadd(5, now.w[st][3], kTileBytes);
        _tile_dpbssd(2, 4, 7);
        _tile_dpbssd(3, 4, 5);
        if (next) interleave_quarter(panel, width, wmask, a.k, blk + 1, 2 * st + 1, later);
      }
      constexpr int64_t ld = sizeof(c[0][0]);
      _tile_stored(0, c[0], ld);
      _tile_stored(1, c[1], ld);
      _tile_stored(2, c[2], ld);
      _tile_stored(3, c[3], ld);
      const int real = static_cast<int>(std::min<int64_t>(x_rows, m1 - m));
      for (int r = 0; r < real; ++r) {
        const __m512 x_scale = _mm512_set1_ps(a.xq_scale[(m + r) * blocks + blk]);
        for (int t = 0; t < 4; ++t) {
          const __m512i hi = _mm512_slli_epi32(_mm512_load_si512(c[t][2 * r]), 8);
          const __m512i sum = _mm512_add_epi32(_mm512_add_epi32(hi, _mm512_load_si512(c[t][2 * r + 1])), comp[t]);
          float* acc = sums[m - m0 + r][t];
          _mm512_store_ps(acc, _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum), _mm512_mul_ps(x_scale, ws_tile[t]),
                                               _mm512_load_ps(acc)));
        }
      }
    }
  }
  for (int64_t m = m0; m < m1; ++m) {
    __m512 tile_order[4], out[4];
    for (int t = 0; t < 4; ++t) tile_order[t] = _mm512_load_ps(sums[m - m0][t]);
    to_tile_order(tile_order, out);
    for (int v = 0; v < nvec; ++v) w8_epilogue16(a, m, p * kPanel + v * 16, out[v]);
  }
}

}  // namespace

void split_x_bytes_amx(const int16_t* xq, int64_t ld_q, int64_t m, int64_t k, int64_t t0, int64_t t1,
                       int8_t* dst) {
  static_assert(kAmxW8Step == kTileBytes, "a k step is one tile row");
  const int64_t rows = amx_w8_x_rows(m), steps = (k + kTileBytes - 1) / kTileBytes;
  const __m512i bias = _mm512_set1_epi16(128);
  for (int64_t t = t0; t < t1; ++t)
    for (int64_t s = 0; s < steps; ++s) {
      int8_t* tile = dst + (t * steps + s) * 2 * rows * kTileBytes;
      for (int64_t r = 0; r < rows; ++r) {
        int8_t* hi = tile + 2 * r * kTileBytes;
        int8_t* lo = hi + kTileBytes;
        const int64_t row = t * rows + r;
        if (row >= m) {
          std::memset(hi, 0, 2 * kTileBytes);
          continue;
        }
        for (int64_t half = 0; half < 2; ++half) {
          const int64_t c = s * kTileBytes + 32 * half, left = std::max<int64_t>(0, k - c);
          const __mmask32 mask = left >= 32 ? ~0u : (1u << left) - 1;
          const __m512i q = _mm512_maskz_loadu_epi16(mask, xq + row * ld_q + c);
          // The low byte of q - 128 is lo = (q & 255) - 128, as q = 256 (q >> 8) + lo + 128.
          _mm256_storeu_si256(reinterpret_cast<__m256i*>(hi + 32 * half),
                              _mm512_cvtepi16_epi8(_mm512_srai_epi16(q, 8)));
          _mm256_storeu_si256(reinterpret_cast<__m256i*>(lo + 32 * half),
                              _mm512_cvtepi16_epi8(_mm512_sub_epi16(q, bias)));
        }
      }
    }
}

void w8_int16_tile_amx(const W8Args& a, int64_t m0, int64_t m1, int64_t p0, int64_t p1) {
  const int x_rows = static_cast<int>(amx_w8_x_rows(a.m));
  configure_w8(x_rows);
  for (int64_t p = p0; p < p1; ++p)
    for (int64_t m = m0; m < m1; m += kW8ChunkRows)
      w8_panel_rows(a, m, std::min(m1, m + kW8ChunkRows), p, x_rows);
  _tile_release();
}

void w8a8_tile_amx(const W8a8Args& a, int64_t m0, int64_t m1, int64_t p0, int64_t p1) {
  // Another library may have loaded its own tile shapes on this thread since the last call.
  int shape0 = -1, shape1 = -1;
  const int64_t n_pad = round_up(a.n, kLane);
  for (int64_t p = p0; p < p1; ++p) {
    const int64_t width = std::min(kPanel, n_pad - p * kPanel), nvec = width / 16;
    for (int64_t m = m0; m < m1; m += 2 * kTileRows) {
      const int rows = static_cast<int>(std::min<int64_t>(2 * kTileRows, m1 - m));
      const int rows0 = std::min(rows, kTileRows), rows1 = rows - rows0;
      if (rows0 != shape0 || rows1 != shape1) {
        configure(rows0, rows1);
        shape0 = rows0;
        shape1 = rows1;
      }
      for (int64_t v0 = 0; v0 < nvec; v0 += 2)
        block(a, m, rows, p, width, v0, static_cast<int>(std::min<int64_t>(2, nvec - v0)));
    }
  }
  _tile_release();
}

}  // namespace llmkern::int8
