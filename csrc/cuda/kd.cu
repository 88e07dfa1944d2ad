// CUDA KD-loss row kernels: one block per row. A statistics sweep keeps, per thread, an online
// (running-maximum) softmax of z / tau, of z (for the CE term) and of teacher / tau, plus the
// cross sums the divergences need; the per-thread states are merged across the block, and a
// second sweep writes d(row_loss)/dz in the student's dtype. Arithmetic in float32 throughout;
// exponentials in base 2 (ex2.approx, ~2 ulp). Contract: llmkern/ops/kd.py. Launchers: kd.cuh.
#include "cuda/common.cuh"
#include "cuda/kd.cuh"

namespace llmkern {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / kWarp;
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;
constexpr int64_t kTopkCache = 2048;  // top-k entries kept in shared memory for the gradient

__device__ __forceinline__ float neg_inf() { return __int_as_float(static_cast<int>(0xff800000u)); }
__device__ __forceinline__ float ex2(float x) {
  float y;
  asm("ex2.approx.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}
__device__ __forceinline__ float lg2(float x) {
  float y;
  asm("lg2.approx.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}
// Exponent shift for a running maximum: 0 while it is -inf (nothing finite seen), so that
// exp(x - shift) is 0, not NaN, for x = -inf.
__device__ __forceinline__ float shift_of(float m) { return m == neg_inf() ? 0.0f : m; }

// Per-call constants the kernels read.
struct Consts {
  float t, t2;              // 1 / tau and log2(e) / tau
  float loss_kd, grad_kd;   // w_kd * tau^2 (loss) and w_kd * tau (gradient)
  float w_ce, beta;
  bool kd, ce;              // which terms have weight
  Divergence divergence;
};

// Online softmax statistics of one row (or part of it), relative to the shifts mz / mv:
//   sq = sum exp((z - mz) t), s1 = sum exp(z - mz), sp = sum exp((v - mv) t),
//   pd = sum exp((v - mv) t) d, qd = sum exp((z - mz) t) d, with d = ((v - mv) - (z - mz)) t.
struct Stats {
  float mz, mv, sq, s1, sp, pd, qd;
};

__device__ __forceinline__ Stats empty_stats() {
  return Stats{neg_inf(), neg_inf(), 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
}

// Moves s to the larger shifts (nz >= s.mz, nv >= s.mv).
__device__ __forceinline__ void rescale(Stats& s, float nz, float nv, const Consts& c) {
  if (!(nz > s.mz) && !(nv > s.mv)) return;
  const float cq = s.mz == neg_inf() ? 0.0f : ex2((s.mz - nz) * c.t2);
  const float c1 = s.mz == neg_inf() ? 0.0f : ex2((s.mz - nz) * kLog2e);
  const float cp = s.mv == neg_inf() ? 0.0f : ex2((s.mv - nv) * c.t2);
  // d drops by delta when the shifts move.
  const float delta = ((shift_of(nv) - shift_of(s.mv)) - (shift_of(nz) - shift_of(s.mz))) * c.t;
  s.qd = cq * (s.qd - delta * s.sq);
  s.pd = cp * (s.pd - delta * s.sp);
  s.sq *= cq;
  s.s1 *= c1;
  s.sp *= cp;
  s.mz = nz;
  s.mv = nv;
}

__device__ __forceinline__ Stats merge(Stats a, Stats b, const Consts& c) {
  const float nz = fmaxf(a.mz, b.mz), nv = fmaxf(a.mv, b.mv);
  rescale(a, nz, nv, c);
  rescale(b, nz, nv, c);
  return Stats{nz, nv, a.sq + b.sq, a.s1 + b.s1, a.sp + b.sp, a.pd + b.pd, a.qd + b.qd};
}

__device__ __forceinline__ Stats shfl_xor(const Stats& s, int o) {
  Stats r;
  r.mz = __shfl_xor_sync(0xffffffffu, s.mz, o);
  r.mv = __shfl_xor_sync(0xffffffffu, s.mv, o);
  r.sq = __shfl_xor_sync(0xffffffffu, s.sq, o);
  r.s1 = __shfl_xor_sync(0xffffffffu, s.s1, o);
  r.sp = __shfl_xor_sync(0xffffffffu, s.sp, o);
  r.pd = __shfl_xor_sync(0xffffffffu, s.pd, o);
  r.qd = __shfl_xor_sync(0xffffffffu, s.qd, o);
  return r;
}

// Merges every thread's statistics; all threads get the row's.
__device__ __forceinline__ Stats block_merge(Stats s, Stats* scratch, const Consts& c) {
#pragma unroll
  for (int o = kWarp / 2; o > 0; o >>= 1) s = merge(s, shfl_xor(s, o), c);
  if (threadIdx.x % kWarp == 0) scratch[threadIdx.x / kWarp] = s;
  __syncthreads();
  s = scratch[0];
#pragma unroll
  for (int w = 1; w < kWarps; ++w) s = merge(s, scratch[w], c);
  __syncthreads();
  return s;
}

// Adds E elements (z, and v when the teacher is read) to a thread's statistics: the shifts
// move once per group of E, then the sums are taken relative to them.
template <int E>
__device__ __forceinline__ void accumulate(Stats& s, const float (&z)[E], const float (&v)[E],
                                           bool q_sums, bool ce, bool kd, bool qd,
                                           const Consts& c) {
  float bz = z[0], bv = v[0];
#pragma unroll
  for (int e = 1; e < E; ++e) {
    bz = fmaxf(bz, z[e]);
    bv = fmaxf(bv, v[e]);
  }
  rescale(s, fmaxf(s.mz, bz), kd ? fmaxf(s.mv, bv) : s.mv, c);
  const float shz = shift_of(s.mz), shv = shift_of(s.mv);
#pragma unroll
  for (int e = 0; e < E; ++e) {
    const float a = z[e] - shz;
    float eq = 0.0f;
    if (q_sums) {
      eq = ex2(a * c.t2);
      s.sq += eq;
    }
    if (ce) s.s1 += ex2(a * kLog2e);
    if (kd) {
      const float b = v[e] - shv;
      const float ep = ex2(b * c.t2);
      s.sp += ep;
      const float d = (b - a) * c.t;
      if (ep > 0.0f) s.pd = fmaf(ep, d, s.pd);
      if (qd && eq > 0.0f) s.qd = fmaf(eq, d, s.qd);
    }
  }
}

// Row-level quantities derived from the merged statistics.
struct RowLogs {
  float shz, shv;
  float ln_sq, ln_sp, ln_s1;  // natural logs of the sums
  float l2_sq, l2_sp, l2_s1;  // base-2 logs
};

__device__ __forceinline__ RowLogs row_logs(const Stats& s) {
  RowLogs r;
  r.shz = shift_of(s.mz);
  r.shv = shift_of(s.mv);
  r.ln_sq = logf(s.sq);
  r.ln_sp = logf(s.sp);
  r.ln_s1 = logf(s.s1);
  r.l2_sq = log2f(s.sq);
  r.l2_sp = log2f(s.sp);
  r.l2_s1 = log2f(s.s1);
  return r;
}

// q, p, log q, log m of the JSD, m = beta p + (1 - beta) q, for shifted a = z - mz, b = v - mv.
struct JsdTerms {
  float q, p, log_q, log_p, log_m;
};

__device__ __forceinline__ JsdTerms jsd_terms(float a, float b, const RowLogs& L,
                                              const Consts& c) {
  JsdTerms j;
  j.q = ex2(a * c.t2 - L.l2_sq);
  j.p = ex2(b * c.t2 - L.l2_sp);
  j.log_q = a * c.t - L.ln_sq;
  j.log_p = b * c.t - L.ln_sp;
  j.log_m = lg2(fmaf(c.beta, j.p, (1.0f - c.beta) * j.q)) * kLn2;
  return j;
}

// The CE term's gradient w_ce * (softmax(z) - onehot(y)) at column col (a = z - mz).
__device__ __forceinline__ float ce_grad(float a, int64_t col, int64_t y, const RowLogs& L,
                                         const Consts& c) {
  const float g = c.w_ce * ex2(a * kLog2e - L.l2_s1);
  return col == y ? g - c.w_ce : g;
}

// Zeroes row g (ignored rows have loss 0 and gradient 0).
template <class TS, int E>
__device__ __forceinline__ void zero_row(TS* g, int64_t vocab) {
  float zeros[E];
#pragma unroll
  for (int e = 0; e < E; ++e) zeros[e] = 0.0f;
  for (int64_t i = threadIdx.x; i < vocab / E; i += kThreads) store_floats<TS, E>(g + i * E, zeros);
}

// Label of a row: -1 when there are no labels; the row is skipped when it is ignore_index.
__device__ __forceinline__ int64_t row_label(const int64_t* labels, int64_t row) {
  return labels != nullptr ? labels[row] : -1;
}

// A label outside [0, vocab) (checked by the Python layer only where that costs no host
// synchronisation) is never read: the row's loss and gradient are NaN.
__device__ __forceinline__ bool bad_label(const int64_t* labels, int64_t y, int64_t vocab) {
  return labels != nullptr && (y < 0 || y >= vocab);
}

// CE of the row, -log softmax(z)[y] (NaN for a label outside [0, vocab): never read there).
template <class TS>
__device__ __forceinline__ float ce_value(const TS* z, int64_t y, int64_t vocab,
                                          const RowLogs& L) {
  if (y < 0 || y >= vocab) return __int_as_float(0x7fc00000);
  return (L.shz - to_float(z[y])) + L.ln_s1;
}

// ---------------------------------------------------------------------------------------------
// Dense teacher
// ---------------------------------------------------------------------------------------------

struct RowsArgs {
  const void* student;
  int64_t ld_s;
  const void* teacher;
  int64_t ld_t;
  const int64_t* labels;
  int64_t ignore_index;
  int64_t vocab;
  float* loss;
  void* grad;
  int64_t ld_g;
  Consts c;
};

// E elements per access for both tensors (E = 1: rows not aligned for wider accesses).
template <class TS, class TT, int E>
__global__ void __launch_bounds__(kThreads) kd_rows_kernel(const RowsArgs p) {
  __shared__ Stats stats_scratch[kWarps];
  __shared__ float scratch[kWarps];
  const Consts& c = p.c;
  const int64_t row = blockIdx.x;
  const TS* z = static_cast<const TS*>(p.student) + row * p.ld_s;
  const TT* v = static_cast<const TT*>(p.teacher) + row * p.ld_t;
  TS* g = p.grad != nullptr ? static_cast<TS*>(p.grad) + row * p.ld_g : nullptr;
  const int64_t y = row_label(p.labels, row);
  if (p.labels != nullptr && y == p.ignore_index) {
    if (threadIdx.x == 0) p.loss[row] = 0.0f;
    if (g != nullptr) zero_row<TS, E>(g, p.vocab);
    return;
  }
  const Divergence dv = c.divergence;
  const bool qd = c.kd && dv == Divergence::ReverseKL;
  const int64_t n_vec = p.vocab / E;

  Stats s = empty_stats();
  for (int64_t i = threadIdx.x; i < n_vec; i += kThreads) {
    float zf[E], vf[E];
    load_floats<TS, E>(z + i * E, zf);
    if (c.kd) {
      load_floats<TT, E>(v + i * E, vf);
    } else {
#pragma unroll
      for (int e = 0; e < E; ++e) vf[e] = 0.0f;
    }
    accumulate<E>(s, zf, vf, c.kd, c.ce, c.kd, qd, c);
  }
  s = block_merge(s, stats_scratch, c);
  const RowLogs L = row_logs(s);

  // The divergence and the constant `k` of its gradient.
  float div = 0.0f, k = 0.0f;
  if (c.kd) {
    if (dv == Divergence::KL) {
      div = s.pd / s.sp - L.ln_sp + L.ln_sq;
    } else if (dv == Divergence::ReverseKL) {
      div = -s.qd / s.sq + L.ln_sp - L.ln_sq;
      k = L.ln_sp - L.ln_sq - div;  // grad = q (k - d)
    } else {
      float kl_pm = 0.0f, kl_qm = 0.0f;
      for (int64_t i = threadIdx.x; i < n_vec; i += kThreads) {
        float zf[E], vf[E];
        load_floats<TS, E>(z + i * E, zf);
        load_floats<TT, E>(v + i * E, vf);
#pragma unroll
        for (int e = 0; e < E; ++e) {
          const JsdTerms j = jsd_terms(zf[e] - L.shz, vf[e] - L.shv, L, c);
          if (j.p > 0.0f) kl_pm = fmaf(j.p, j.log_p - j.log_m, kl_pm);
          if (j.q > 0.0f) kl_qm = fmaf(j.q, j.log_q - j.log_m, kl_qm);
        }
      }
      kl_pm = block_reduce<kThreads>(kl_pm, scratch, SumOp{});
      kl_qm = block_reduce<kThreads>(kl_qm, scratch, SumOp{});
      div = c.beta * kl_pm + (1.0f - c.beta) * kl_qm;
      k = (1.0f - c.beta) * kl_qm;  // grad = q ((1 - beta)(log q - log m) - k)
    }
  }
  const bool no_label = bad_label(p.labels, y, p.vocab);
  if (threadIdx.x == 0) {
    float loss = c.kd ? c.loss_kd * div : 0.0f;
    if (c.ce) loss += c.w_ce * ce_value(z, y, p.vocab, L);
    p.loss[row] = no_label ? __int_as_float(0x7fc00000) : loss;
  }
  if (g == nullptr) return;

  for (int64_t i = threadIdx.x; i < n_vec; i += kThreads) {
    float zf[E], vf[E], out[E];
    load_floats<TS, E>(z + i * E, zf);
    if (c.kd) load_floats<TT, E>(v + i * E, vf);
#pragma unroll
    for (int e = 0; e < E; ++e) {
      const float a = zf[e] - L.shz;
      float o = 0.0f;
      if (c.kd) {
        const float b = vf[e] - L.shv;
        if (dv == Divergence::KL) {
          o = c.grad_kd * (ex2(a * c.t2 - L.l2_sq) - ex2(b * c.t2 - L.l2_sp));
        } else if (dv == Divergence::ReverseKL) {
          const float q = ex2(a * c.t2 - L.l2_sq);
          o = q > 0.0f ? c.grad_kd * q * (k - (b - a) * c.t) : 0.0f;
        } else {
          const JsdTerms j = jsd_terms(a, b, L, c);
          o = j.q > 0.0f ? c.grad_kd * j.q * ((1.0f - c.beta) * (j.log_q - j.log_m) - k) : 0.0f;
        }
      }
      if (c.ce) o += ce_grad(a, i * E + e, y, L, c);
      out[e] = no_label ? __int_as_float(0x7fc00000) : o;
    }
    store_floats<TS, E>(g + i * E, out);
  }
}

// ---------------------------------------------------------------------------------------------
// Sparse (top-k) teacher
// ---------------------------------------------------------------------------------------------

struct TopkArgs {
  const void* student;
  int64_t ld_s;
  const int64_t* idx;
  const float* logprobs;
  int64_t k;
  const int64_t* labels;
  int64_t ignore_index;
  int64_t vocab;
  float* loss;
  void* grad;
  int64_t ld_g;
  Consts c;
};

template <class TS, int E>
__global__ void __launch_bounds__(kThreads) kd_topk_kernel(const TopkArgs p) {
  __shared__ Stats stats_scratch[kWarps];
  __shared__ float scratch[kWarps];
  extern __shared__ __align__(16) unsigned char topk_cache[];  // k floats p_j, k ints idx_j
  const Consts& c = p.c;
  const int64_t row = blockIdx.x;
  const TS* z = static_cast<const TS*>(p.student) + row * p.ld_s;
  TS* g = p.grad != nullptr ? static_cast<TS*>(p.grad) + row * p.ld_g : nullptr;
  const int64_t* idx = p.idx + row * p.k;
  const float* lp = p.logprobs + row * p.k;
  const int64_t y = row_label(p.labels, row);
  if (p.labels != nullptr && y == p.ignore_index) {
    if (threadIdx.x == 0) p.loss[row] = 0.0f;
    if (g != nullptr) zero_row<TS, E>(g, p.vocab);
    return;
  }
  const int64_t n_vec = p.vocab / E;

  Stats s = empty_stats();
  for (int64_t i = threadIdx.x; i < n_vec; i += kThreads) {
    float zf[E], vf[E];
    load_floats<TS, E>(z + i * E, zf);
#pragma unroll
    for (int e = 0; e < E; ++e) vf[e] = 0.0f;
    accumulate<E>(s, zf, vf, c.kd, c.ce, false, false, c);
  }
  s = block_merge(s, stats_scratch, c);
  const RowLogs L = row_logs(s);

  // Teacher renormalised over its k entries: log p_j = lp_j / tau - lse.
  const bool cached = p.k <= kTopkCache;
  float* cache_p = reinterpret_cast<float*>(topk_cache);
  int* cache_i = reinterpret_cast<int*>(topk_cache + kTopkCache * sizeof(float));
  float lse = 0.0f, div = 0.0f;
  if (c.kd) {
    float mx = neg_inf();
    for (int64_t j = threadIdx.x; j < p.k; j += kThreads) mx = fmaxf(mx, lp[j] * c.t);
    mx = block_reduce<kThreads>(mx, scratch, MaxOp{});
    float sum = 0.0f;
    for (int64_t j = threadIdx.x; j < p.k; j += kThreads) sum += expf(lp[j] * c.t - mx);
    lse = mx + logf(block_reduce<kThreads>(sum, scratch, SumOp{}));
    for (int64_t j = threadIdx.x; j < p.k; j += kThreads) {
      const float log_p = lp[j] * c.t - lse;
      const float pj = expf(log_p);
      const int64_t col = idx[j];
      if (col < 0 || col >= p.vocab) {
        div = __int_as_float(0x7fc00000);  // unchecked bad index: never read, the loss is NaN
      } else if (pj > 0.0f) {
        const float log_q = (to_float(z[col]) - L.shz) * c.t - L.ln_sq;
        div = fmaf(pj, log_p - log_q, div);
      }
      if (cached) {
        cache_p[j] = pj;
        cache_i[j] = static_cast<int>(col);
      }
    }
    div = block_reduce<kThreads>(div, scratch, SumOp{});  // also publishes the cache
  }
  const bool no_label = bad_label(p.labels, y, p.vocab);
  if (threadIdx.x == 0) {
    float loss = c.kd ? c.loss_kd * div : 0.0f;
    if (c.ce) loss += c.w_ce * ce_value(z, y, p.vocab, L);
    p.loss[row] = no_label ? __int_as_float(0x7fc00000) : loss;
  }
  if (g == nullptr) return;

  // Dense part: w_kd tau q + CE; then the entries named by the teacher are rewritten whole.
  auto dense = [&](float zv, int64_t col) {
    const float a = zv - L.shz;
    float o = c.kd ? c.grad_kd * ex2(a * c.t2 - L.l2_sq) : 0.0f;
    if (c.ce) o += ce_grad(a, col, y, L, c);
    return no_label ? __int_as_float(0x7fc00000) : o;
  };
  for (int64_t i = threadIdx.x; i < n_vec; i += kThreads) {
    float zf[E], out[E];
    load_floats<TS, E>(z + i * E, zf);
#pragma unroll
    for (int e = 0; e < E; ++e) out[e] = dense(zf[e], i * E + e);
    store_floats<TS, E>(g + i * E, out);
  }
  if (!c.kd) return;
  __syncthreads();  // the dense writes of the row happen before the rewrites below
  auto p_of = [&](int64_t j) { return cached ? cache_p[j] : expf(lp[j] * c.t - lse); };
  auto idx_of = [&](int64_t j) { return cached ? static_cast<int64_t>(cache_i[j]) : idx[j]; };
  // The first occurrence of each index owns it and sums p over its duplicates (scatter_add).
  for (int64_t j = threadIdx.x; j < p.k; j += kThreads) {
    const int64_t col = idx_of(j);
    if (col < 0 || col >= p.vocab) continue;
    bool first = true;
    for (int64_t jj = 0; jj < j && first; ++jj) first = idx_of(jj) != col;
    if (!first) continue;
    float psum = p_of(j);
    for (int64_t jj = j + 1; jj < p.k; ++jj)
      if (idx_of(jj) == col) psum += p_of(jj);
    const float a = to_float(z[col]) - L.shz;
    float o = c.grad_kd * (ex2(a * c.t2 - L.l2_sq) - psum);
    if (c.ce) o += ce_grad(a, col, y, L, c);
    g[col] = from_float<TS>(no_label ? __int_as_float(0x7fc00000) : o);
  }
}

// ---------------------------------------------------------------------------------------------
// Launch
// ---------------------------------------------------------------------------------------------

Consts make_consts(float tau, float w_kd, float w_ce, float beta, Divergence d, bool has_labels) {
  Consts c;
  c.t = 1.0f / tau;
  c.t2 = kLog2e / tau;
  c.loss_kd = w_kd * tau * tau;
  c.grad_kd = w_kd * tau;
  c.w_ce = w_ce;
  c.beta = beta;
  c.kd = w_kd > 0.0f;
  c.ce = has_labels && w_ce > 0.0f;
  c.divergence = d;
  return c;
}

template <int E>
bool rows_aligned(const void* base, int64_t ld, int elem_size) {
  const int bytes = E * elem_size;
  return (reinterpret_cast<uintptr_t>(base) % bytes) == 0 && (ld * elem_size) % bytes == 0;
}

// E = 16 bytes of the wider of the two types when every row of both (and of grad) is aligned.
template <class TS, class TT>
cudaError_t launch_rows(const RowsArgs& a, int64_t n_rows, cudaStream_t stream) {
  constexpr int E = 16 / (sizeof(TS) > sizeof(TT) ? sizeof(TS) : sizeof(TT));
  const bool vec = a.vocab % E == 0 && rows_aligned<E>(a.student, a.ld_s, sizeof(TS)) &&
                   (!a.c.kd || rows_aligned<E>(a.teacher, a.ld_t, sizeof(TT))) &&
                   (a.grad == nullptr || rows_aligned<E>(a.grad, a.ld_g, sizeof(TS)));
  const unsigned grid = static_cast<unsigned>(n_rows);
  if (vec)
    kd_rows_kernel<TS, TT, E><<<grid, kThreads, 0, stream>>>(a);
  else
    kd_rows_kernel<TS, TT, 1><<<grid, kThreads, 0, stream>>>(a);
  return cudaGetLastError();
}

template <class TS>
cudaError_t launch_rows_for(const RowsArgs& a, FloatType teacher, int64_t n_rows,
                            cudaStream_t stream) {
  switch (teacher) {
    case FloatType::F32: return launch_rows<TS, float>(a, n_rows, stream);
    case FloatType::F16: return launch_rows<TS, __half>(a, n_rows, stream);
    case FloatType::BF16: return launch_rows<TS, __nv_bfloat16>(a, n_rows, stream);
  }
  return cudaErrorInvalidValue;
}

template <class TS>
cudaError_t launch_topk(const TopkArgs& a, int64_t n_rows, cudaStream_t stream) {
  constexpr int E = 16 / sizeof(TS);
  const bool vec = a.vocab % E == 0 && rows_aligned<E>(a.student, a.ld_s, sizeof(TS)) &&
                   (a.grad == nullptr || rows_aligned<E>(a.grad, a.ld_g, sizeof(TS)));
  const size_t cache = a.k <= kTopkCache ? kTopkCache * (sizeof(float) + sizeof(int)) : 0;
  const unsigned grid = static_cast<unsigned>(n_rows);
  if (vec)
    kd_topk_kernel<TS, E><<<grid, kThreads, cache, stream>>>(a);
  else
    kd_topk_kernel<TS, 1><<<grid, kThreads, cache, stream>>>(a);
  return cudaGetLastError();
}

bool valid_sizes(int64_t n_rows, int64_t vocab, float tau) {
  return n_rows > 0 && n_rows <= INT32_MAX && vocab > 0 && vocab <= INT32_MAX && tau > 0.0f;
}

}  // namespace

cudaError_t kd_loss_rows(const KdRowsParams& p, cudaStream_t stream) {
  if (!valid_sizes(p.n_rows, p.vocab, p.tau)) return cudaErrorInvalidValue;
  const RowsArgs a{p.student, p.ld_student, p.teacher,  p.ld_teacher, p.labels, p.ignore_index,
                   p.vocab,   p.row_loss,   p.grad,     p.ld_grad,
                   make_consts(p.tau, p.w_kd, p.w_ce, p.beta, p.divergence, p.labels != nullptr)};
  switch (p.student_type) {
    case FloatType::F32: return launch_rows_for<float>(a, p.teacher_type, p.n_rows, stream);
    case FloatType::F16: return launch_rows_for<__half>(a, p.teacher_type, p.n_rows, stream);
    case FloatType::BF16:
      return launch_rows_for<__nv_bfloat16>(a, p.teacher_type, p.n_rows, stream);
  }
  return cudaErrorInvalidValue;
}

cudaError_t kd_loss_topk_rows(const KdTopkParams& p, cudaStream_t stream) {
  if (!valid_sizes(p.n_rows, p.vocab, p.tau) || p.k <= 0) return cudaErrorInvalidValue;
  const TopkArgs a{p.student, p.ld_student, p.topk_idx, p.topk_logprobs, p.k,
                   p.labels,  p.ignore_index, p.vocab, p.row_loss, p.grad, p.ld_grad,
                   make_consts(p.tau, p.w_kd, p.w_ce, 0.5f, Divergence::KL, p.labels != nullptr)};
  switch (p.student_type) {
    case FloatType::F32: return launch_topk<float>(a, p.n_rows, stream);
    case FloatType::F16: return launch_topk<__half>(a, p.n_rows, stream);
    case FloatType::BF16: return launch_topk<__nv_bfloat16>(a, p.n_rows, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace cuda
}  // namespace llmkern
