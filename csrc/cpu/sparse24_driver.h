// Loop nest shared by the SIMD variants; included by each ISA translation unit after its
// `#pragma GCC target`, so it is compiled for that ISA. A kernel class K provides
//   static constexpr int kMaxM;               // rows of x per register tile
//   static constexpr int kStreamRows;         // up to this many x rows, weight rows one at a time
//                                             // (each row's values and meta then stream)
//   template <int NR, int MR> static void tile(const Args&, int64_t n0, int64_t m0);
// computing rows n0..n0+NR-1 of W against rows m0..m0+MR-1 of x.
#pragma once

#include <xmmintrin.h>

#include "cpu/sparse24_kernels.h"

namespace llmkern::sparse24 {

// Rows [n0, n0 + NR) of the weight as the row kernels walk them: their values (type S) and meta.
template <class S, int NR>
struct TileRows {
  const S* values[NR];
  const uint8_t* meta[NR];
  TileRows(const Args& a, int64_t n0) {
    for (int r = 0; r < NR; ++r) {
      values[r] = static_cast<const S*>(a.values) + (n0 + r) * (a.k / 2);
      meta[r] = a.meta + (n0 + r) * meta_bytes(a.k);
    }
  }
};

// Rows are short streams (K/2 values and K/8 meta bytes each), too short for the hardware
// prefetchers to ramp up at M = 1. The first x rows of a tile fetch the bytes at the same offset
// of the next tile's rows into L1 (rows are consecutive, so that is one tile's bytes further on)
// and of the tile kL2TilesAhead on into L2. The L2 part: the VNNI 2:4 w8 kernel alone at M = 1,
// weights from DRAM, 17.5-20 -> 19.5-22 GB/s; through the module (AVX2 and AMX paths) gains
// within the +-10% run-to-run noise (Intel Xeon with AMX, 2 threads).
constexpr int64_t kL2TilesAhead = 4;
struct TilePrefetch {
  bool near, far;
  TilePrefetch(const Args& a, int64_t n0, int64_t m0, int64_t nr)
      : near(m0 == 0 && n0 + 2 * nr <= a.n), far(m0 == 0 && n0 + (kL2TilesAhead + 1) * nr <= a.n) {}
  // p: a byte of this tile's rows; tile_bytes: the tile's rows of that array.
  void operator()(const void* p, int64_t tile_bytes) const {
    const char* c = static_cast<const char*>(p);
    if (near) _mm_prefetch(c + tile_bytes, _MM_HINT_T0);
    if (far) _mm_prefetch(c + kL2TilesAhead * tile_bytes, _MM_HINT_T1);
  }
  // The whole meta block of the tiles ahead, at the start of a tile.
  void meta(const uint8_t* tile_meta, int64_t tile_bytes) const {
    for (int64_t b = 0; b < tile_bytes; b += 64) (*this)(tile_meta + b, tile_bytes);
  }
};

// x rows handled while one block of weight rows stays in L1/L2.
constexpr int64_t kMBlock = 64;

template <class K, int NR>
inline void tile_m(const Args& a, int64_t n, int64_t m0, int mr) {
  static_assert(K::kMaxM >= 1 && K::kMaxM <= 4, "tile dispatch covers 1..4 rows of x");
  switch (mr) {
    case 1: K::template tile<NR, 1>(a, n, m0); break;
    case 2: if constexpr (K::kMaxM >= 2) K::template tile<NR, 2>(a, n, m0); break;
    case 3: if constexpr (K::kMaxM >= 3) K::template tile<NR, 3>(a, n, m0); break;
    case 4: if constexpr (K::kMaxM >= 4) K::template tile<NR, 4>(a, n, m0); break;
  }
}

template <class K>
void run_rows(const Args& a, int64_t n0, int64_t n1) {
  for (int64_t mb = 0; mb < a.m; mb += kMBlock) {
    const int64_t me = mb + kMBlock < a.m ? mb + kMBlock : a.m;
    int64_t n = n0;
    if (a.m > K::kStreamRows)  // else one row at a time
      for (; n + 4 <= n1; n += 4)
        for (int64_t m = mb; m < me; m += K::kMaxM)
          tile_m<K, 4>(a, n, m, static_cast<int>(me - m < K::kMaxM ? me - m : K::kMaxM));
    for (; n < n1; ++n)
      for (int64_t m = mb; m < me; m += K::kMaxM)
        tile_m<K, 1>(a, n, m, static_cast<int>(me - m < K::kMaxM ? me - m : K::kMaxM));
  }
}

}  // namespace llmkern::sparse24
