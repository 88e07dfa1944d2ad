// Torch glue of the fused KD loss on CPU: per-row orchestration (labels, ignore_index, the
// divergence's closed forms, sparse top-k teacher) over the ISA row kernels of kd_kernel.h,
// rows spread over threads with at::parallel_for. Arguments were validated in Python
// (llmkern/ops/kd.py); here only internal invariants are checked.
//
// Per row: one statistics pass (online max/sum of z/tau, z and v/tau), then, when a gradient
// is wanted, one sweep that writes d(row_loss)/dz in the student's dtype. No [N, V] temporary.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <utility>
#include <vector>

#ifdef __linux__
#include <sys/mman.h>
#endif

#include "torch_ops.h"
#include "cpu/isa.h"
#include "cpu/kd_kernel.h"

namespace {

using llmkern::kd::DType;
using llmkern::kd::GradForm;
using llmkern::kd::RowArgs;
using llmkern::kd::RowKernels;
using llmkern::kd::RowStats;
using llmkern::kd::StatsFlags;

const RowKernels& row_kernels() {
  switch (llmkern::active_isa()) {
    case llmkern::Isa::Scalar: return llmkern::kd::kRowKernelsScalar;
    case llmkern::Isa::Avx2: return llmkern::kd::kRowKernelsAvx2;
    default: return llmkern::kd::kRowKernelsAvx512;
  }
}

DType storage_type(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat: return DType::F32;
    case at::kBFloat16: return DType::BF16;
    case at::kHalf: return DType::F16;
    default: TORCH_CHECK(false, "kd kernels: unsupported dtype ", t.scalar_type());
  }
}

float element(const at::Tensor& t, int64_t row, int64_t col) {
  const int64_t off = row * t.stride(0) + col;
  switch (t.scalar_type()) {
    case at::kBFloat16: return static_cast<float>(t.const_data_ptr<at::BFloat16>()[off]);
    case at::kHalf: return static_cast<float>(t.const_data_ptr<at::Half>()[off]);
    default: return t.const_data_ptr<float>()[off];
  }
}

const void* row_ptr(const at::Tensor& t, int64_t row) {
  return static_cast<const char*>(t.const_data_ptr()) + row * t.stride(0) * t.element_size();
}

// The loss weights and per-call constants shared by the dense and top-k forms.
struct Setup {
  double tau;
  float t;
  double w_kd, w_ce;
  bool has_labels;
  int64_t ignore_index;
  const int64_t* labels;
  int64_t n, v;
};

Setup make_setup(const at::Tensor& student, const c10::optional<at::Tensor>& labels, double tau,
                 double alpha, int64_t ignore_index) {
  // A [N, 1] tensor can be "contiguous" with any stride(1): torch ignores strides of size-1 dims.
  TORCH_CHECK(student.dim() == 2 && (student.stride(1) == 1 || student.size(1) == 1),
              "kd kernels: student must be [N, V] row-major");
  TORCH_CHECK(tau > 0.0, "kd kernels: tau must be > 0");
  Setup s{tau, static_cast<float>(1.0 / tau), 1.0, 0.0, labels.has_value(), ignore_index, nullptr,
          student.size(0), student.size(1)};
  if (s.has_labels) {
    const at::Tensor& y = *labels;
    TORCH_CHECK(y.scalar_type() == at::kLong && y.is_contiguous() && y.numel() == s.n,
                "kd kernels: labels must be contiguous int64 [N]");
    s.labels = y.const_data_ptr<int64_t>();
    for (int64_t r = 0; r < s.n; ++r)  // the kernels index z[label]: never out of bounds
      TORCH_CHECK(s.labels[r] == ignore_index || (s.labels[r] >= 0 && s.labels[r] < s.v),
                  "kd kernels: label out of range at row ", r);
    s.w_kd = alpha;
    s.w_ce = 1.0 - alpha;
  }
  return s;
}

RowArgs base_args(const Setup& s, const at::Tensor& student, int64_t r) {
  RowArgs a{};
  a.z = row_ptr(student, r);
  a.z_type = storage_type(student);
  a.v = nullptr;
  a.v_type = DType::F32;
  a.n = s.v;
  a.t = s.t;
  a.w_kd = static_cast<float>(s.w_kd * s.tau);  // tau^2 * d/dz of (z / tau)
  a.w_ce = static_cast<float>(s.w_ce);
  return a;
}

// Fills the log-sums of `a` and returns the CE term of row r (0 when it has no weight).
double finish_stats(RowArgs& a, const RowStats& st, const Setup& s, const at::Tensor& student,
                    int64_t r, int64_t y) {
  a.st = st;
  a.log_sum_q = std::log(st.sum_q);
  a.log_sum_p = std::log(st.sum_p);
  a.log_sum_1 = std::log(st.sum_1);
  if (!a.ce) return 0.0;
  return (static_cast<double>(st.mz) - element(student, r, y)) + a.log_sum_1;
}

// An [N, V] gradient of the student's shape, on transparent huge pages where the kernel offers
// them: its first touch (the one write of each element) otherwise takes a page fault per 4 KiB,
// about 30 of the 170 ms of a 512 x 32000 fp32 step on one AMD Zen 1 core. Only the 2 MiB-aligned
// interior of torch's allocation is advised; the allocation and its accounting stay torch's.
at::Tensor empty_gradient(const at::Tensor& student) {
  at::Tensor grad = at::empty_like(student);
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t{2} << 20;
  const uintptr_t p = reinterpret_cast<uintptr_t>(grad.data_ptr());
  const uintptr_t begin = (p + kHuge - 1) & ~(kHuge - 1), end = (p + grad.nbytes()) & ~(kHuge - 1);
  if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);  // a hint
#endif
  return grad;
}

// NaN gradient rows where `undefined` is set (an empty flag vector: none).
void fill_undefined_rows(at::Tensor& grad, const std::vector<uint8_t>& undefined) {
  if (grad.numel() == 0 || std::find(undefined.begin(), undefined.end(), 1) == undefined.end())
    return;
  at::Tensor mask = at::empty({static_cast<int64_t>(undefined.size())}, at::kBool);
  std::memcpy(mask.data_ptr<bool>(), undefined.data(), undefined.size());
  grad.masked_fill_(mask.unsqueeze(1), NAN);
}

std::tuple<at::Tensor, at::Tensor> kd_loss_rows(const at::Tensor& student_in,
                                                const at::Tensor& teacher_in,
                                                const c10::optional<at::Tensor>& labels, double tau,
                                                double alpha, int64_t ignore_index,
                                                c10::string_view divergence, double beta,
                                                bool compute_grad) {
  const at::Tensor student = student_in.contiguous();
  const at::Tensor teacher = teacher_in.contiguous();
  const Setup s = make_setup(student, labels, tau, alpha, ignore_index);
  TORCH_CHECK(teacher.dim() == 2 && teacher.size(0) == s.n && teacher.size(1) >= s.v,
              "kd kernels: teacher must be [N, V_t >= V]");
  GradForm form;
  if (divergence == "kl") form = GradForm::Kl;
  else if (divergence == "reverse_kl") form = GradForm::Reverse;
  else if (divergence == "jsd") form = GradForm::Jsd;
  else TORCH_CHECK(false, "kd kernels: unknown divergence");
  const bool kd = s.w_kd > 0.0, ce = s.w_ce > 0.0;
  const StatsFlags flags{kd, ce, kd, kd && form == GradForm::Reverse};
  const RowKernels& K = row_kernels();

  at::Tensor rows = at::empty({s.n}, student.options().dtype(at::kFloat));
  at::Tensor grad = compute_grad ? empty_gradient(student) : at::empty({0}, student.options());
  float* loss = rows.data_ptr<float>();
  const DType v_type = storage_type(teacher);
  const int64_t row_bytes = s.v * student.element_size();
  // Rows whose teacher defines no distribution (NaN / +inf entry, or all -inf): NaN loss and
  // gradient, as the reference (llmkern/ops/kd.py). A defined row has sum_p >= 1 (its maximum
  // contributes exp(0) = 1); such a teacher gives NaN (exp propagates it) or 0.
  std::vector<uint8_t> undefined(kd ? s.n : 0, 0);

  at::parallel_for(0, s.n, 1, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t y = s.has_labels ? s.labels[r] : -1;
      void* g = compute_grad ? static_cast<char*>(grad.data_ptr()) + r * row_bytes : nullptr;
      if (s.has_labels && y == s.ignore_index) {
        loss[r] = 0.0f;
        if (g) std::memset(g, 0, row_bytes);
        continue;
      }
      RowArgs a = base_args(s, student, r);
      a.v = row_ptr(teacher, r);
      a.v_type = v_type;
      a.ce = ce;
      a.beta = static_cast<float>(beta);
      const RowStats st = K.stats(a.z, a.z_type, a.v, a.v_type, s.v, s.t, flags);
      if (kd && !(st.sum_p >= 1.0f)) {
        loss[r] = NAN;
        undefined[r] = 1;
        continue;
      }
      const double ce_term = finish_stats(a, st, s, student, r, y);
      double div = 0.0;
      if (kd) {
        if (form == GradForm::Kl) {
          div = static_cast<double>(st.p_d) / st.sum_p - a.log_sum_p + a.log_sum_q;
        } else if (form == GradForm::Reverse) {
          div = -static_cast<double>(st.q_d) / st.sum_q + a.log_sum_p - a.log_sum_q;
          a.c = static_cast<float>(a.log_sum_p - a.log_sum_q - div);
        } else {
          const llmkern::kd::JsdSums js = K.jsd_sums(a);
          div = js.div;
          a.c = js.q_g;
        }
      }
      loss[r] = static_cast<float>((kd ? s.w_kd * s.tau * s.tau * div : 0.0) +
                                   (ce ? s.w_ce * ce_term : 0.0));
      if (!g) continue;
      const int64_t adj_idx = y;
      const float adj_val = -a.w_ce;
      a.form = kd ? form : GradForm::None;
      a.adj_idx = &adj_idx;
      a.adj_val = &adj_val;
      a.n_adj = ce ? 1 : 0;
      a.g = g;
      K.grad(a);
    }
  });
  fill_undefined_rows(grad, undefined);
  return {rows, grad};
}

std::tuple<at::Tensor, at::Tensor> kd_loss_topk_rows(const at::Tensor& student_in,
                                                     const at::Tensor& topk_idx_in,
                                                     const at::Tensor& topk_logprobs_in,
                                                     const c10::optional<at::Tensor>& labels,
                                                     double tau, double alpha, int64_t ignore_index,
                                                     bool compute_grad) {
  const at::Tensor student = student_in.contiguous();
  const at::Tensor idx = topk_idx_in.contiguous();
  const at::Tensor lp = topk_logprobs_in.to(at::kFloat).contiguous();
  const Setup s = make_setup(student, labels, tau, alpha, ignore_index);
  TORCH_CHECK(idx.scalar_type() == at::kLong && idx.dim() == 2 && idx.size(0) == s.n &&
                  lp.sizes() == idx.sizes(),
              "kd kernels: top-k indices int64 [N, k] and log-probs [N, k] expected");
  const int64_t k = idx.size(1);
  const int64_t* ip = idx.const_data_ptr<int64_t>();
  const float* lpp = lp.const_data_ptr<float>();
  for (int64_t i = 0; i < s.n * k; ++i)
    TORCH_CHECK(ip[i] >= 0 && ip[i] < s.v, "kd kernels: top-k index out of range");
  const bool kd = s.w_kd > 0.0, ce = s.w_ce > 0.0;
  const StatsFlags flags{kd, ce, false, false};
  const RowKernels& K = row_kernels();

  at::Tensor rows = at::empty({s.n}, student.options().dtype(at::kFloat));
  at::Tensor grad = compute_grad ? empty_gradient(student) : at::empty({0}, student.options());
  float* loss = rows.data_ptr<float>();
  const int64_t row_bytes = s.v * student.element_size();

  at::parallel_for(0, s.n, 1, [&](int64_t begin, int64_t end) {
    std::vector<std::pair<int64_t, float>> adj;  // sparse gradient corrections of one row
    std::vector<int64_t> adj_idx;
    std::vector<float> adj_val, logp(k);
    for (int64_t r = begin; r < end; ++r) {
      const int64_t y = s.has_labels ? s.labels[r] : -1;
      void* g = compute_grad ? static_cast<char*>(grad.data_ptr()) + r * row_bytes : nullptr;
      if (s.has_labels && y == s.ignore_index) {
        loss[r] = 0.0f;
        if (g) std::memset(g, 0, row_bytes);
        continue;
      }
      RowArgs a = base_args(s, student, r);
      a.ce = ce;
      const RowStats st = K.stats(a.z, a.z_type, nullptr, DType::F32, s.v, s.t, flags);
      const double ce_term = finish_stats(a, st, s, student, r, y);
      adj.clear();
      double div = 0.0;
      if (kd) {
        // Teacher distribution renormalised over its k entries: log p_j = lp_j / tau - lse.
        const int64_t* ir = ip + r * k;
        const float* lr = lpp + r * k;
        double mx = -INFINITY, sum = 0.0;
        for (int64_t j = 0; j < k; ++j) mx = std::max(mx, static_cast<double>(lr[j]) * s.t);
        for (int64_t j = 0; j < k; ++j) sum += std::exp(static_cast<double>(lr[j]) * s.t - mx);
        const double lse = mx + std::log(sum);
        for (int64_t j = 0; j < k; ++j) {
          const double log_p = static_cast<double>(lr[j]) * s.t - lse;
          const float p = static_cast<float>(std::exp(log_p));
          if (!(p > 0.0f)) continue;
          const double log_q = (static_cast<double>(element(student, r, ir[j])) - st.mz) * s.t -
                               a.log_sum_q;
          div += p * (log_p - log_q);
          adj.emplace_back(ir[j], -a.w_kd * p);
        }
      }
      loss[r] = static_cast<float>((kd ? s.w_kd * s.tau * s.tau * div : 0.0) +
                                   (ce ? s.w_ce * ce_term : 0.0));
      if (!g) continue;
      if (ce) adj.emplace_back(y, -a.w_ce);
      std::sort(adj.begin(), adj.end(),
                [](const auto& l, const auto& rr) { return l.first < rr.first; });
      adj_idx.clear();
      adj_val.clear();
      for (const auto& e : adj) {  // merge duplicate indices (summed, as scatter_add would)
        if (!adj_idx.empty() && adj_idx.back() == e.first) {
          adj_val.back() += e.second;
        } else {
          adj_idx.push_back(e.first);
          adj_val.push_back(e.second);
        }
      }
      a.form = kd ? GradForm::QOnly : GradForm::None;
      a.adj_idx = adj_idx.data();
      a.adj_val = adj_val.data();
      a.n_adj = static_cast<int64_t>(adj_idx.size());
      a.g = g;
      K.grad(a);
    }
  });
  return {rows, grad};
}

// The active ISA's vectorised exp / log, for their accuracy tests.
at::Tensor kd_vector_math(const at::Tensor& x_in, c10::string_view fn) {
  const at::Tensor x = x_in.to(at::kFloat).contiguous();
  at::Tensor y = at::empty_like(x);
  const RowKernels& K = row_kernels();
  (fn == "exp" ? K.exp_n : K.log_n)(x.const_data_ptr<float>(), y.data_ptr<float>(), x.numel());
  return y;
}

}  // namespace

// Schemas: csrc/schemas.cpp.
TORCH_LIBRARY_IMPL(llmkern_C, CPU, m) {
  m.impl("kd_loss_rows", &kd_loss_rows);
  m.impl("kd_loss_topk_rows", &kd_loss_topk_rows);
  m.impl("kd_vector_math", &kd_vector_math);
}
