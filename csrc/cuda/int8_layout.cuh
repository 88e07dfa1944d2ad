// Index math of the W8A8 tensor-core GEMM (int8.cu), kept free of device code so that a host
// program (tests/cuda/int8_layout_check.cpp, built by tests/cuda/test_nvcc.py) checks it without
// a GPU: the shared-memory swizzle, which thread copies which 16-byte chunk, which address each
// lane hands to ldmatrix, and the register fragments mma.sync.m16n8k32 (s8) expects.
//
// A shared-memory tile holds `rows` rows of kTileK = 64 int8 (k) values: 4 chunks of 16 bytes
// per row. Chunk c of row r is stored at chunk position c ^ ((r >> 1) & 3), so the 8 rows one
// ldmatrix 8x8 matrix reads (and the 8 chunks 8 consecutive threads store) fall in 8 different
// 16-byte bank groups.
#pragma once

#ifdef __CUDACC__
#define LLMKERN_HD __host__ __device__ __forceinline__
#else
#define LLMKERN_HD inline
#endif

namespace llmkern {
namespace cuda {
namespace w8a8 {

constexpr int kTileK = 64;                  // int8 values of k per pipeline stage
constexpr int kChunks = kTileK / 16;        // 16-byte chunks per tile row
constexpr int kMmaK = 32;                   // k of one mma.sync.m16n8k32

// Byte offset of (row, chunk) inside a tile.
LLMKERN_HD int tile_offset(int row, int chunk) {
  return row * kTileK + ((chunk ^ ((row >> 1) & 3)) << 4);
}

// The global -> shared copy: linear chunk id c (thread t copies c = t, t + threads, ...).
LLMKERN_HD int copy_row(int c) { return c / kChunks; }
LLMKERN_HD int copy_chunk(int c) { return c % kChunks; }

// ldmatrix.x4 for the A operand (16 rows x 32 k of one m16 tile at k step `ks`): lanes 8j..8j+7
// give the rows of matrix j; matrices are (rows 0-7, k 0-15), (rows 8-15, k 0-15),
// (rows 0-7, k 16-31), (rows 8-15, k 16-31), i.e. the registers a0..a3 of the mma.
LLMKERN_HD int ldsm_a_row(int lane) { return (lane & 7) + ((lane >> 3) & 1) * 8; }
LLMKERN_HD int ldsm_a_chunk(int lane, int ks) { return ks * 2 + (lane >> 4); }

// ldmatrix.x4 for the B operand of two n8 tiles (16 n x 32 k, stored n-major like w_q [N, K]):
// matrices are (n 0-7, k 0-15), (n 0-7, k 16-31), (n 8-15, k 0-15), (n 8-15, k 16-31), i.e.
// b0, b1 of the first n8 tile then b0, b1 of the second.
LLMKERN_HD int ldsm_b_row(int lane) { return (lane & 7) + (lane >> 4) * 8; }
LLMKERN_HD int ldsm_b_chunk(int lane, int ks) { return ks * 2 + ((lane >> 3) & 1); }

// PTX ISA fragment layouts of mma.m16n8k32 with .s8 operands (groupID = lane / 4,
// threadID_in_group = lane % 4); `byte` is the int8 inside the 32-bit register.
LLMKERN_HD int mma_a_row(int lane, int reg) { return (lane >> 2) + (reg & 1) * 8; }
LLMKERN_HD int mma_a_k(int lane, int reg, int byte) {
  return (lane & 3) * 4 + byte + (reg >> 1) * 16;
}
LLMKERN_HD int mma_b_n(int lane) { return lane >> 2; }
LLMKERN_HD int mma_b_k(int lane, int reg, int byte) { return (lane & 3) * 4 + byte + reg * 16; }
LLMKERN_HD int mma_c_row(int lane, int reg) { return (lane >> 2) + (reg >> 1) * 8; }
LLMKERN_HD int mma_c_col(int lane, int reg) { return (lane & 3) * 2 + (reg & 1); }

// ldmatrix semantics (b16 8x8 matrices): register j of lane l holds bytes 4 * (l % 4) .. +3
// of the row whose address lane 8 * j + l / 4 supplied.
LLMKERN_HD int ldsm_source_lane(int lane, int reg) { return reg * 8 + lane / 4; }
LLMKERN_HD int ldsm_byte_in_row(int lane, int byte) { return (lane % 4) * 4 + byte; }

}  // namespace w8a8
}  // namespace cuda
}  // namespace llmkern
