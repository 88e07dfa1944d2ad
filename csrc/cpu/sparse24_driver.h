// Loop nest shared by the SIMD variants; included by each ISA translation unit after its
// `#pragma GCC target`, so it is compiled for that ISA. A kernel class K provides
//   static constexpr int kMaxM;               // rows of x per register tile
//   template <int NR, int MR> static void tile(const Args&, int64_t n0, int64_t m0);
// computing rows n0..n0+NR-1 of W against rows m0..m0+MR-1 of x.
#pragma once

#include "cpu/sparse24_kernels.h"

namespace llmkern::sparse24 {

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
    for (; n + 4 <= n1; n += 4)
      for (int64_t m = mb; m < me; m += K::kMaxM)
        tile_m<K, 4>(a, n, m, static_cast<int>(me - m < K::kMaxM ? me - m : K::kMaxM));
    for (; n < n1; ++n)
      for (int64_t m = mb; m < me; m += K::kMaxM)
        tile_m<K, 1>(a, n, m, static_cast<int>(me - m < K::kMaxM ? me - m : K::kMaxM));
  }
}

}  // namespace llmkern::sparse24
