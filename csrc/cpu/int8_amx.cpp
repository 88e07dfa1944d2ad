// AMX W8A8 GEMM (Intel Xeon from Sapphire Rapids): tdpbusd multiplies a tile of 16 rows x 64
// unsigned activation bytes (q + 128, the VNNI format) by a tile of 16 rows x 16 channels x 4 k of
// signed weights into 16 x 16 int32, 16 x 16 x 64 multiply-adds per instruction. A 16-channel
// slice of a packed W8A8 panel is already a weight tile (rows of 4 k per channel, width * 4 bytes
// apart), so this kernel reads the VNNI layout unchanged and subtracts the same compensation.
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

}  // namespace

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
