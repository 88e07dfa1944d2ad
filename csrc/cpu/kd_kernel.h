// Row primitives of the fused KD loss (CPU). One implementation per ISA (kd_scalar.cpp,
// kd_avx2.cpp, kd_avx512.cpp, all instantiating kd_row_impl.h); the per-row orchestration
// (labels, divergences, top-k, threads) is in kd_ops.cpp. Plain declarations only: no inline
// code, so nothing here can be compiled for one ISA and linked into another.
//
// All arithmetic is float32 whatever the storage type. Notation for one row: z = student
// logits, v = teacher logits (first n entries), t = 1/tau, mz = max z, mv = max v (or 0 when
// the row is all -inf), a_i = z_i - mz, b_i = v_i - mv, d_i = (b_i - a_i) t.
#pragma once

#include <cstdint>

namespace llmkern {
namespace kd {

enum class DType : int { F32 = 0, BF16 = 1, F16 = 2 };

// 16-bit storage types (the kernels convert them to float32 in registers).
struct Bf16 {
  uint16_t bits;
};
struct Half {
  uint16_t bits;
};

// Which online sums the statistics pass accumulates.
struct StatsFlags {
  bool q;   // sum_q = sum exp(a t)                      (any KD term)
  bool ce;  // sum_1 = sum exp(a)                        (hard-label CE)
  bool kd;  // the teacher streams sum_p, p_d            (dense teacher)
  bool qd;  // q_d                                       (reverse KL)
};

// Online statistics of one row, relative to the final maxima (mz, mv).
struct RowStats {
  float mz, mv;
  float sum_q;  // sum_i exp(a_i t)
  float sum_1;  // sum_i exp(a_i)
  float sum_p;  // sum_i exp(b_i t)
  float p_d;    // sum over exp(b_i t) > 0 of exp(b_i t) d_i
  float q_d;    // sum over exp(a_i t) > 0 of exp(a_i t) d_i
};

// Form of the dense part of the gradient d(row_loss)/dz_i written by the gradient sweep
// (q_i = exp(a_i t - log sum_q), p_i = exp(b_i t - log sum_p), s_i = exp(a_i - log sum_1)):
//   Kl:       w_kd (q_i - p_i)
//   QOnly:    w_kd q_i                      (sparse teacher: the -p part comes as `adj`)
//   Reverse:  w_kd q_i (c - d_i), 0 where q_i = 0
//   Jsd:      w_kd q_i ((1 - beta)(log q_i - log m_i) - c), m_i = beta p_i + (1 - beta) q_i
//   None:     0                             (CE only)
// plus w_ce s_i when `ce`, plus the sparse, sorted, duplicate-free corrections adj.
enum class GradForm : int { Kl = 0, QOnly = 1, Reverse = 2, Jsd = 3, None = 4 };

struct RowArgs {
  const void* z;
  DType z_type;
  const void* v;  // may be null when no dense teacher term is needed
  DType v_type;
  int64_t n;      // vocabulary size V (entries of z and of v read)
  float t;        // 1 / tau
  RowStats st;
  float log_sum_q, log_sum_p, log_sum_1;
  GradForm form;
  bool ce;
  float w_kd, w_ce, c, beta;
  const int64_t* adj_idx;  // strictly increasing, in [0, n)
  const float* adj_val;
  int64_t n_adj;
  void* g;  // gradient row, same storage type as z
};

struct JsdSums {
  float div;    // beta KL(p || m) + (1 - beta) KL(q || m)
  float q_g;    // sum_i q_i (1 - beta)(log q_i - log m_i)
};

struct RowKernels {
  RowStats (*stats)(const void* z, DType z_type, const void* v, DType v_type, int64_t n, float t,
                    StatsFlags flags);
  JsdSums (*jsd_sums)(const RowArgs& args);
  void (*grad)(const RowArgs& args);
  // The vectorised exp and log of this ISA over an array (for their accuracy tests).
  void (*exp_n)(const float* x, float* y, int64_t n);
  void (*log_n)(const float* x, float* y, int64_t n);
};

extern const RowKernels kRowKernelsScalar;
extern const RowKernels kRowKernelsAvx2;
extern const RowKernels kRowKernelsAvx512;

}  // namespace kd
}  // namespace llmkern
