// Host-only check of the W8A8 GEMM index math (csrc/cuda/int8_layout.cuh), built and run by
// tests/cuda/test_nvcc.py: simulates ldmatrix over the swizzled shared-memory tile and compares
// what each lane's registers receive with the mma.m16n8k32 fragment layout; checks that the
// swizzle is a bijection, that the copy and ldmatrix phases are free of bank conflicts, and that the
// fragments cover their tiles exactly once. Exit status 0 = all good.
#include <cstdio>
#include <set>
#include <utility>
#include <vector>

#include "cuda/int8_layout.cuh"

using namespace llmkern::cuda::w8a8;

static int failures = 0;

#define CHECK(cond, ...)                 \
  do {                                   \
    if (!(cond)) {                       \
      if (failures < 20) {               \
        std::printf("FAIL %s: ", #cond); \
        std::printf(__VA_ARGS__);        \
        std::printf("\n");               \
      }                                  \
      ++failures;                        \
    }                                    \
  } while (0)

// Logical (row, k) stored at byte `off` of a tile (inverse of tile_offset within a chunk).
static std::pair<int, int> logical(int off) {
  const int row = off / kTileK;
  const int phys = (off % kTileK) / 16;
  const int chunk = phys ^ ((row >> 1) & 3);
  return {row, chunk * 16 + off % 16};
}

int main() {
  constexpr int kRows = 128;
  // 1. The swizzle maps the tile's (row, chunk) pairs one to one onto its 16-byte slots.
  std::vector<int> seen(kRows * kChunks, 0);
  for (int r = 0; r < kRows; ++r)
    for (int c = 0; c < kChunks; ++c) {
      const int off = tile_offset(r, c);
      CHECK(off % 16 == 0 && off >= 0 && off < kRows * kTileK, "r=%d c=%d off=%d", r, c, off);
      if (off % 16 == 0 && off >= 0 && off < kRows * kTileK) seen[off / 16]++;
      const std::pair<int, int> back = logical(off);
      CHECK(back.first == r && back.second == c * 16, "inverse of (%d, %d)", r, c);
    }
  for (int s = 0; s < kRows * kChunks; ++s)
    CHECK(seen[s] == 1, "slot %d used %d times", s, seen[s]);

  // 2. Copy: 8 consecutive chunk ids (one shared-memory store phase) hit 8 bank groups, and the
  // ids 0 .. rows*4-1 cover every (row, chunk) once.
  std::set<std::pair<int, int>> copied;
  for (int c = 0; c < kRows * kChunks; ++c) copied.insert({copy_row(c), copy_chunk(c)});
  CHECK(static_cast<int>(copied.size()) == kRows * kChunks, "copy mapping not one to one");
  for (int c0 = 0; c0 < kRows * kChunks; c0 += 8) {
    std::set<int> banks;
    for (int c = c0; c < c0 + 8; ++c)
      banks.insert((tile_offset(copy_row(c), copy_chunk(c)) / 16) % 8);
    CHECK(banks.size() == 8, "copy phase at chunk %d has bank conflicts", c0);
  }

  // 3. ldmatrix of A over the swizzled tile delivers exactly the mma A fragment.
  for (int m0 = 0; m0 < kRows; m0 += 16)
    for (int ks = 0; ks < kTileK / kMmaK; ++ks) {
      for (int j = 0; j < 4; ++j) {  // each 8x8 matrix: its 8 row addresses in 8 bank groups
        std::set<int> banks;
        for (int l = 8 * j; l < 8 * j + 8; ++l)
          banks.insert((tile_offset(m0 + ldsm_a_row(l), ldsm_a_chunk(l, ks)) / 16) % 8);
        CHECK(banks.size() == 8, "A ldmatrix m0=%d ks=%d matrix %d: bank conflicts", m0, ks, j);
      }
      std::set<std::pair<int, int>> cover;
      for (int lane = 0; lane < 32; ++lane)
        for (int reg = 0; reg < 4; ++reg)
          for (int byte = 0; byte < 4; ++byte) {
            const int src = ldsm_source_lane(lane, reg);
            const int off = tile_offset(m0 + ldsm_a_row(src), ldsm_a_chunk(src, ks)) +
                            ldsm_byte_in_row(lane, byte);
            const std::pair<int, int> rk = logical(off);
            const int want_row = m0 + mma_a_row(lane, reg);
            const int want_k = ks * kMmaK + mma_a_k(lane, reg, byte);
            CHECK(rk.first == want_row && rk.second == want_k,
                  "A m0=%d ks=%d lane=%d reg=%d byte=%d: got (%d,%d) want (%d,%d)", m0, ks, lane,
                  reg, byte, rk.first, rk.second, want_row, want_k);
            cover.insert({mma_a_row(lane, reg), mma_a_k(lane, reg, byte)});
          }
      CHECK(cover.size() == 16 * 32, "A fragment covers %zu of 512 elements", cover.size());
    }

  // 4. ldmatrix of B (two n8 tiles per x4) delivers the mma B fragments.
  for (int n0 = 0; n0 < kRows; n0 += 16)
    for (int ks = 0; ks < kTileK / kMmaK; ++ks) {
      for (int j = 0; j < 4; ++j) {
        std::set<int> banks;
        for (int l = 8 * j; l < 8 * j + 8; ++l)
          banks.insert((tile_offset(n0 + ldsm_b_row(l), ldsm_b_chunk(l, ks)) / 16) % 8);
        CHECK(banks.size() == 8, "B ldmatrix n0=%d ks=%d matrix %d: bank conflicts", n0, ks, j);
      }
      std::set<std::pair<int, int>> cover;
      for (int lane = 0; lane < 32; ++lane)
        for (int reg = 0; reg < 4; ++reg)
          for (int byte = 0; byte < 4; ++byte) {
            const int src = ldsm_source_lane(lane, reg);
            const int off = tile_offset(n0 + ldsm_b_row(src), ldsm_b_chunk(src, ks)) +
                            ldsm_byte_in_row(lane, byte);
            const std::pair<int, int> nk = logical(off);
            const int want_n = n0 + (reg >> 1) * 8 + mma_b_n(lane);  // regs 2, 3: 2nd n8 tile
            const int want_k = ks * kMmaK + mma_b_k(lane, reg & 1, byte);
            CHECK(nk.first == want_n && nk.second == want_k,
                  "B n0=%d ks=%d lane=%d reg=%d byte=%d: got (%d,%d) want (%d,%d)", n0, ks, lane,
                  reg, byte, nk.first, nk.second, want_n, want_k);
            if (reg < 2) cover.insert({mma_b_n(lane), mma_b_k(lane, reg, byte)});
          }
      CHECK(cover.size() == 8 * 32, "B fragment covers %zu of 256 elements", cover.size());
    }

  // 5. The accumulator fragment covers the 16 x 8 tile once.
  std::set<std::pair<int, int>> c_cover;
  for (int lane = 0; lane < 32; ++lane)
    for (int reg = 0; reg < 4; ++reg) {
      const int r = mma_c_row(lane, reg), c = mma_c_col(lane, reg);
      CHECK(r >= 0 && r < 16 && c >= 0 && c < 8, "C lane=%d reg=%d out of tile", lane, reg);
      c_cover.insert({r, c});
    }
  CHECK(c_cover.size() == 16 * 8, "C fragment covers %zu of 128 elements", c_cover.size());

  if (failures) {
    std::printf("%d layout check(s) failed\n", failures);
    return 1;
  }
  std::printf("layout checks passed\n");
  return 0;
}
