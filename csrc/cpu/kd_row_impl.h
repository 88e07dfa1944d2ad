// The row kernels of the fused KD loss, written once over a vector type `Vec` that the including
// file defines (kd_scalar.cpp, kd_avx2.cpp, kd_avx512.cpp) together with its ISA pragma.
// Everything here has internal linkage, so each ISA gets its own copy; no standard-library
// templates are used, so none can be instantiated for one ISA and linked into another.
//
// Vec provides: W (lanes), T (float vector), M (mask), set1, gt(a, b) (a > b, false on NaN),
// select(m, a, b), vmax, fma(a, b, c) = a * b + c, reduce_add, reduce_max, exp, log,
// load/load_n/store/store_n for float, Bf16 and Half storage (load_n fills lanes >= n with
// `fill`; store_n writes only the first n lanes). T supports + - * (GNU vector extensions).
#pragma once

namespace {

using llmkern::kd::Bf16;
using llmkern::kd::DType;
using llmkern::kd::GradForm;
using llmkern::kd::Half;
using llmkern::kd::JsdSums;
using llmkern::kd::RowArgs;
using llmkern::kd::RowKernels;
using llmkern::kd::RowStats;
using llmkern::kd::StatsFlags;

constexpr int64_t kBlock = 512;  // online-softmax block: re-read from L1 after its max is known
constexpr float kInf = __builtin_inff();

inline int64_t min_i64(int64_t a, int64_t b) { return a < b ? a : b; }
inline float max_f(float a, float b) { return a > b ? a : b; }
// Exponent shift for a row maximum: 0 when the row (so far) is all -inf, so that
// exp(x - shift) is 0 rather than NaN for x = -inf.
inline float shift_of(float m) { return m == -kInf ? 0.0f : m; }

// tau when it is 1, 2 or 4 (t = 1 / tau exactly), else 0. The cross-entropy softmax at
// temperature 1 then comes from the tempered one, exp(a) = exp(a t)^tau: one or two products
// instead of a third exp per element in each pass (about a third of the row's work).
inline int integer_tau(float t) { return t == 1.0f ? 1 : t == 0.5f ? 2 : t == 0.25f ? 4 : 0; }

template <class T>
inline T pow_tau(T x, int tau) {  // tau in {1, 2, 4}
  if (tau == 1) return x;
  x = x * x;
  return tau == 4 ? x * x : x;
}

// Calls fn with a value of the storage type named by d (float, Bf16 or Half).
template <class Fn>
inline auto visit_type(DType d, Fn&& fn) {
  switch (d) {
    case DType::BF16: return fn(Bf16{});
    case DType::F16: return fn(Half{});
    default: return fn(0.0f);
  }
}

// One pass over the row: block maxima first (no exp), then the block's sums relative to the
// running maxima; when a maximum grows, the sums are rescaled once per block (a scalar exp).
template <class SZ, class SV, bool Q, bool CE, bool KD, bool QD>
RowStats stats_row(const SZ* z, const SV* v, int64_t n, float t) {
  using T = typename Vec::T;
  constexpr int W = Vec::W;
  const T zero = Vec::set1(0.0f), tv = Vec::set1(t), neg_inf = Vec::set1(-kInf);
  const int tau = Q ? integer_tau(t) : 0;
  float mz = -kInf, mv = -kInf;
  T sq = zero, s1 = zero, sp = zero, pd = zero, qd = zero;
  for (int64_t b0 = 0; b0 < n; b0 += kBlock) {
    const int64_t len = min_i64(kBlock, n - b0);
    const SZ* zb = z + b0;
    const SV* vb = KD ? v + b0 : nullptr;
    T bz = neg_inf, bv = neg_inf;
    int64_t i = 0;
    for (; i + W <= len; i += W) {
      bz = Vec::vmax(bz, Vec::load(zb + i));
      if (KD) bv = Vec::vmax(bv, Vec::load(vb + i));
    }
    if (i < len) {
      bz = Vec::vmax(bz, Vec::load_n(zb + i, len - i, -kInf));
      if (KD) bv = Vec::vmax(bv, Vec::load_n(vb + i, len - i, -kInf));
    }
    const float nz = max_f(mz, Vec::reduce_max(bz));
    const float nv = KD ? max_f(mv, Vec::reduce_max(bv)) : 0.0f;
    if (nz > mz || (KD && nv > mv)) {
      // Sums so far were taken relative to the old shifts; move them to the new ones.
      const float cq = mz == -kInf ? 0.0f : __builtin_expf((mz - nz) * t);
      const float c1 = mz == -kInf ? 0.0f : __builtin_expf(mz - nz);
      const float cp = mv == -kInf ? 0.0f : __builtin_expf((mv - nv) * t);
      // d_i = ((v_i - mv) - (z_i - mz)) t drops by delta when the shifts move.
      const float delta = ((shift_of(nv) - shift_of(mv)) - (shift_of(nz) - shift_of(mz))) * t;
      if (QD) qd = Vec::set1(cq) * (qd - Vec::set1(delta) * sq);
      if (KD) {
        pd = Vec::set1(cp) * (pd - Vec::set1(delta) * sp);
        sp = sp * Vec::set1(cp);
      }
      sq = sq * Vec::set1(cq);
      s1 = s1 * Vec::set1(c1);
      mz = nz;
      if (KD) mv = nv;
    }
    // Block-local sums, added to the running ones afterwards: each float32 accumulator then
    // adds at most kBlock / W + n / kBlock terms (accuracy on 150k-entry rows, also for W = 1).
    const T shz = Vec::set1(shift_of(mz)), shv = Vec::set1(shift_of(mv));
    T bsq = zero, bs1 = zero, bsp = zero, bpd = zero, bqd = zero;
    auto accumulate = [&](T zf, T vf) {
      const T a = zf - shz;
      T eq = zero;
      if (Q) {
        eq = Vec::exp(a * tv);
        bsq = bsq + eq;
      }
      if (CE) bs1 = bs1 + (tau ? pow_tau(eq, tau) : Vec::exp(a));
      if (KD) {
        const T b = vf - shv;
        const T ep = Vec::exp(b * tv);
        bsp = bsp + ep;
        const T d = (b - a) * tv;
        bpd = bpd + Vec::select(Vec::gt(ep, zero), ep * d, zero);
        if (QD) bqd = bqd + Vec::select(Vec::gt(eq, zero), eq * d, zero);
      }
    };
    for (i = 0; i + W <= len; i += W)
      accumulate(Vec::load(zb + i), KD ? Vec::load(vb + i) : zero);
    if (i < len)
      accumulate(Vec::load_n(zb + i, len - i, -kInf),
                 KD ? Vec::load_n(vb + i, len - i, -kInf) : zero);
    sq = sq + bsq;
    s1 = s1 + bs1;
    sp = sp + bsp;
    pd = pd + bpd;
    qd = qd + bqd;
  }
  RowStats st;
  st.mz = shift_of(mz);
  st.mv = shift_of(mv);
  st.sum_q = Vec::reduce_add(sq);
  st.sum_1 = Vec::reduce_add(s1);
  st.sum_p = Vec::reduce_add(sp);
  st.p_d = Vec::reduce_add(pd);
  st.q_d = Vec::reduce_add(qd);
  return st;
}

RowStats stats_entry(const void* z, DType zt, const void* v, DType vt, int64_t n, float t,
                     StatsFlags f) {
  return visit_type(zt, [&](auto zs) {
    using SZ = decltype(zs);
    const SZ* zp = static_cast<const SZ*>(z);
    if (f.kd) {
      return visit_type(vt, [&](auto vs) {
        using SV = decltype(vs);
        const SV* vp = static_cast<const SV*>(v);
        if (f.qd)
          return f.ce ? stats_row<SZ, SV, true, true, true, true>(zp, vp, n, t)
                      : stats_row<SZ, SV, true, false, true, true>(zp, vp, n, t);
        return f.ce ? stats_row<SZ, SV, true, true, true, false>(zp, vp, n, t)
                    : stats_row<SZ, SV, true, false, true, false>(zp, vp, n, t);
      });
    }
    if (f.q)
      return f.ce ? stats_row<SZ, float, true, true, false, false>(zp, nullptr, n, t)
                  : stats_row<SZ, float, true, false, false, false>(zp, nullptr, n, t);
    return stats_row<SZ, float, false, true, false, false>(zp, nullptr, n, t);
  });
}

// Per-element values shared by the JSD sums and gradient: q, p, log q, log m.
struct JsdTerms {
  typename Vec::T q, p, log_q, log_m;
};

inline JsdTerms jsd_terms(typename Vec::T a, typename Vec::T b, const RowArgs& A) {
  using T = typename Vec::T;
  const T tv = Vec::set1(A.t);
  JsdTerms j;
  j.log_q = a * tv - Vec::set1(A.log_sum_q);
  j.q = Vec::exp(j.log_q);
  const T log_p = b * tv - Vec::set1(A.log_sum_p);
  j.p = Vec::exp(log_p);
  // As the reference: with one side weightless M is the other side exactly; otherwise M is
  // floored at FLT_MIN so an underflowed mixture of a kept p or q stays finite.
  if (A.beta == 0.0f) {
    j.log_m = j.log_q;
  } else if (A.beta == 1.0f) {
    j.log_m = log_p;
  } else {
    const T m = Vec::fma(Vec::set1(A.beta), j.p, Vec::set1(1.0f - A.beta) * j.q);
    j.log_m = Vec::log(Vec::vmax(m, Vec::set1(1.17549435e-38f)));
  }
  return j;
}

template <class SZ, class SV>
JsdSums jsd_sums_row(const RowArgs& A) {
  using T = typename Vec::T;
  constexpr int W = Vec::W;
  const SZ* z = static_cast<const SZ*>(A.z);
  const SV* v = static_cast<const SV*>(A.v);
  const T zero = Vec::set1(0.0f), shz = Vec::set1(A.st.mz), shv = Vec::set1(A.st.mv);
  const T tv = Vec::set1(A.t), lp = Vec::set1(A.log_sum_p);
  T kl_pm = zero, kl_qm = zero;
  for (int64_t b0 = 0; b0 < A.n; b0 += kBlock) {  // block-local sums, as in stats_row
    const int64_t len = min_i64(kBlock, A.n - b0);
    T bpm = zero, bqm = zero;
    auto accumulate = [&](T zf, T vf) {
      const T a = zf - shz, b = vf - shv;
      const JsdTerms j = jsd_terms(a, b, A);
      const T log_p = b * tv - lp;
      bpm = bpm + Vec::select(Vec::gt(j.p, zero), j.p * (log_p - j.log_m), zero);
      bqm = bqm + Vec::select(Vec::gt(j.q, zero), j.q * (j.log_q - j.log_m), zero);
    };
    int64_t i = 0;
    for (; i + W <= len; i += W) accumulate(Vec::load(z + b0 + i), Vec::load(v + b0 + i));
    if (i < len)
      accumulate(Vec::load_n(z + b0 + i, len - i, -kInf), Vec::load_n(v + b0 + i, len - i, -kInf));
    kl_pm = kl_pm + bpm;
    kl_qm = kl_qm + bqm;
  }
  const float pm = Vec::reduce_add(kl_pm), qm = Vec::reduce_add(kl_qm);
  // A weightless side is left out, not multiplied by 0 (its sum may be inf).
  const float wpm = A.beta > 0.0f ? A.beta * pm : 0.0f;
  const float wqm = A.beta < 1.0f ? (1.0f - A.beta) * qm : 0.0f;
  return JsdSums{wpm + wqm, wqm};
}

JsdSums jsd_sums_entry(const RowArgs& A) {
  return visit_type(A.z_type, [&](auto zs) {
    return visit_type(A.v_type, [&](auto vs) {
      return jsd_sums_row<decltype(zs), decltype(vs)>(A);
    });
  });
}

// The gradient sweep: recomputes each element from the row statistics and writes it once.
template <class SZ, class SV, GradForm F, bool CE>
void grad_row(const RowArgs& A) {
  using T = typename Vec::T;
  constexpr int W = Vec::W;
  constexpr bool kTeacher = F == GradForm::Kl || F == GradForm::Reverse || F == GradForm::Jsd;
  const SZ* z = static_cast<const SZ*>(A.z);
  const SV* v = static_cast<const SV*>(A.v);
  SZ* g = static_cast<SZ*>(A.g);
  const T zero = Vec::set1(0.0f), shz = Vec::set1(A.st.mz), shv = Vec::set1(A.st.mv);
  const T tv = Vec::set1(A.t), lq = Vec::set1(A.log_sum_q), lp = Vec::set1(A.log_sum_p);
  const T l1 = Vec::set1(A.log_sum_1), wkd = Vec::set1(A.w_kd), wce = Vec::set1(A.w_ce);
  const T c = Vec::set1(A.c), one_minus_beta = Vec::set1(1.0f - A.beta);
  // Every form but None has q = exp((a - log_sum_q / t) t); the CE softmax exp(a - l1) is then
  // (q exp(log_sum_q - l1 t))^tau for an integer tau (see integer_tau).
  const int tau = F == GradForm::None ? 0 : integer_tau(A.t);
  const T q_to_1 = Vec::set1(tau ? __builtin_expf(A.log_sum_q - A.log_sum_1 * A.t) : 0.0f);
  auto value = [&](T zf, T vf) {
    const T a = zf - shz;
    T out = zero, q = zero;
    if (F == GradForm::Kl) {
      const T b = vf - shv;
      q = Vec::exp(a * tv - lq);
      out = wkd * (q - Vec::exp(b * tv - lp));
    } else if (F == GradForm::QOnly) {
      q = Vec::exp(a * tv - lq);
      out = wkd * q;
    } else if (F == GradForm::Reverse) {
      q = Vec::exp(a * tv - lq);
      const T d = ((vf - shv) - a) * tv;
      out = Vec::select(Vec::gt(q, zero), wkd * q * (c - d), zero);
    } else if (F == GradForm::Jsd) {
      const JsdTerms j = jsd_terms(a, vf - shv, A);
      q = j.q;
      out = Vec::select(Vec::gt(j.q, zero),
                        wkd * j.q * (one_minus_beta * (j.log_q - j.log_m) - c), zero);
    }
    if (CE) out = Vec::fma(wce, tau ? pow_tau(q * q_to_1, tau) : Vec::exp(a - l1), out);
    return out;
  };
  int64_t k = 0;  // next sparse correction
  auto add_corrections = [&](T val, int64_t i0) {
    if (k < A.n_adj && A.adj_idx[k] < i0 + W) {
      float buf[W];
      for (int l = 0; l < W; ++l) buf[l] = 0.0f;
      for (; k < A.n_adj && A.adj_idx[k] < i0 + W; ++k) buf[A.adj_idx[k] - i0] += A.adj_val[k];
      val = val + Vec::load(static_cast<const float*>(buf));
    }
    return val;
  };
  int64_t i = 0;
  for (; i + W <= A.n; i += W) {
    const T val = value(Vec::load(z + i), kTeacher ? Vec::load(v + i) : zero);
    Vec::store(g + i, add_corrections(val, i));
  }
  if (i < A.n) {
    const int64_t r = A.n - i;
    const T val = value(Vec::load_n(z + i, r, -kInf), kTeacher ? Vec::load_n(v + i, r, -kInf) : zero);
    Vec::store_n(g + i, add_corrections(val, i), r);
  }
}

template <GradForm F, class SZ, class SV>
void grad_ce(const RowArgs& A) {
  if (A.ce)
    grad_row<SZ, SV, F, true>(A);
  else
    grad_row<SZ, SV, F, false>(A);
}

void grad_entry(const RowArgs& A) {
  visit_type(A.z_type, [&](auto zs) {
    using SZ = decltype(zs);
    switch (A.form) {
      case GradForm::QOnly: return grad_ce<GradForm::QOnly, SZ, float>(A);
      case GradForm::None: return grad_row<SZ, float, GradForm::None, true>(A);
      default: break;
    }
    visit_type(A.v_type, [&](auto vs) {
      using SV = decltype(vs);
      switch (A.form) {
        case GradForm::Kl: return grad_ce<GradForm::Kl, SZ, SV>(A);
        case GradForm::Reverse: return grad_ce<GradForm::Reverse, SZ, SV>(A);
        default: return grad_ce<GradForm::Jsd, SZ, SV>(A);
      }
    });
  });
}

// Vectorised exp and log over an array (exposed for the accuracy tests of each ISA).
void exp_entry(const float* x, float* y, int64_t n) {
  constexpr int W = Vec::W;
  int64_t i = 0;
  for (; i + W <= n; i += W) Vec::store(y + i, Vec::exp(Vec::load(x + i)));
  if (i < n) Vec::store_n(y + i, Vec::exp(Vec::load_n(x + i, n - i, 0.0f)), n - i);
}

void log_entry(const float* x, float* y, int64_t n) {
  constexpr int W = Vec::W;
  int64_t i = 0;
  for (; i + W <= n; i += W) Vec::store(y + i, Vec::log(Vec::load(x + i)));
  if (i < n) Vec::store_n(y + i, Vec::log(Vec::load_n(x + i, n - i, 1.0f)), n - i);
}

constexpr RowKernels kKernels{&stats_entry, &jsd_sums_entry, &grad_entry, &exp_entry, &log_entry};

}  // namespace
