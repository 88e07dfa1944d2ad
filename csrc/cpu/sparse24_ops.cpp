// Torch glue of the 2:4 CPU kernels: prepares a zero-padded x, picks the ISA variant, splits
// weight rows over threads and applies the epilogue (scales, bias, output dtype). Arguments were
// validated in Python (llmkern/ops/sparse24.py); the checks here guard internal invariants only.
#include <ATen/Parallel.h>
#include <torch/extension.h>

#include "cpu/isa.h"
#include "cpu/sparse24_kernels.h"

namespace llmkern::sparse24 {
namespace {

constexpr int64_t kRowTile = 4;  // weight rows per register tile in the SIMD kernels

int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

// x [M, K] -> contiguous [M, round_up(K, kKPad)] of `dtype`, padding columns zero.
at::Tensor padded_x(const at::Tensor& x, at::ScalarType dtype) {
  const int64_t m = x.size(0), k = x.size(1), kp = round_up(k, kKPad);
  at::Tensor out = at::empty({m, kp}, x.options().dtype(dtype));
  if (kp > k) out.narrow(1, k, kp - k).zero_();
  out.narrow(1, 0, k).copy_(x);
  return out;
}

void check_compressed(const at::Tensor& x, const at::Tensor& values, const at::Tensor& meta) {
  TORCH_CHECK(x.dim() == 2 && values.dim() == 2 && meta.dim() == 2, "2-D operands expected");
  const int64_t k = x.size(1);
  TORCH_CHECK(k % 4 == 0 && values.size(1) * 2 == k, "values must be [N, K/2] with K % 4 == 0");
  TORCH_CHECK(meta.scalar_type() == at::kByte && meta.size(0) == values.size(0) &&
                  meta.size(1) == meta_bytes(k),
              "meta must be uint8 [N, ceil(K/8)]");
  TORCH_CHECK(values.is_contiguous() && meta.is_contiguous(), "values and meta must be contiguous");
  TORCH_CHECK(x.device().is_cpu() && values.device().is_cpu() && meta.device().is_cpu(),
              "CPU tensors expected");
}

at::Tensor optional_f32(const c10::optional<at::Tensor>& t, int64_t n) {
  if (!t.has_value()) return at::Tensor();
  TORCH_CHECK(t->dim() == 1 && t->size(0) == n, "per-output-channel vector of length N expected");
  return t->to(at::kFloat).contiguous();
}

ValueType value_type(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return ValueType::F32;
    case at::kBFloat16: return ValueType::BF16;
    case at::kHalf: return ValueType::F16;
    case at::kChar: return ValueType::I8;
    default: TORCH_CHECK(false, "unsupported 2:4 value dtype ", t);
  }
}

bool has_vbmi() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512vbmi");
}

// Enough weight rows per task that threading pays (about 64K multiply-adds).
int64_t grain_tiles(int64_t m, int64_t k) {
  const int64_t per_tile = kRowTile * std::max<int64_t>(1, m) * (k / 2);
  return std::max<int64_t>(1, (int64_t{1} << 16) / std::max<int64_t>(1, per_tile));
}

template <class Fn>
void parallel_rows(int64_t n, int64_t m, int64_t k, const Fn& fn) {
  const int64_t tiles = (n + kRowTile - 1) / kRowTile;
  at::parallel_for(0, tiles, grain_tiles(m, k), [&](int64_t t0, int64_t t1) {
    fn(t0 * kRowTile, std::min(n, t1 * kRowTile));
  });
}

// out = x @ W.T (* w_scale[n]) (+ bias[n]) in x's dtype, fp32 accumulation. Float values of x's
// dtype, or int8 values with w_scale (weight-only int8).
at::Tensor sparse24_matmul(const at::Tensor& x, const at::Tensor& values, const at::Tensor& meta,
                           const c10::optional<at::Tensor>& bias,
                           const c10::optional<at::Tensor>& w_scale) {
  check_compressed(x, values, meta);
  const ValueType vt = value_type(values.scalar_type());
  TORCH_CHECK((vt == ValueType::I8) == w_scale.has_value(), "w_scale goes with int8 values only");
  const int64_t m = x.size(0), k = x.size(1), n = values.size(0);
  const at::Tensor xs = padded_x(x, at::kFloat);
  at::Tensor out = at::empty({m, n}, x.options().dtype(at::kFloat));
  const at::Tensor b = optional_f32(bias, n), s = optional_f32(w_scale, n);
  const float* bp = b.defined() ? b.data_ptr<float>() : nullptr;
  const float* sp = s.defined() ? s.data_ptr<float>() : nullptr;
  const Args a{xs.data_ptr(), m, xs.size(1), values.data_ptr(), meta.data_ptr<uint8_t>(), k,
               out.data_ptr(), n};
  const Isa isa = active_isa();
  auto kernel = isa >= Isa::Avx512 ? float_rows_avx512
                : isa == Isa::Avx2 ? float_rows_avx2
                                   : float_rows_scalar;
  float* o = out.data_ptr<float>();
  parallel_rows(n, m, k, [&](int64_t n0, int64_t n1) {
    kernel(vt, a, n0, n1);
    if (sp == nullptr && bp == nullptr) return;
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = n0; j < n1; ++j) {
        float v = o[i * n + j];
        if (sp) v *= sp[j];
        if (bp) v += bp[j];
        o[i * n + j] = v;
      }
  });
  return x.scalar_type() == at::kFloat ? out : out.to(x.scalar_type());
}

// W8A8: out = float(sum x_q * w_q) * x_scale[m] * w_scale[n] (+ bias[n]), cast to out_dtype;
// exact int32 sums, the epilogue in this order in fp32 (bit-identical to the reference).
at::Tensor sparse24_w8a8_matmul(const at::Tensor& x_q, const at::Tensor& values,
                                const at::Tensor& meta, const at::Tensor& x_scale,
                                const at::Tensor& w_scale, const c10::optional<at::Tensor>& bias,
                                at::ScalarType out_dtype) {
  check_compressed(x_q, values, meta);
  TORCH_CHECK(x_q.scalar_type() == at::kChar && values.scalar_type() == at::kChar, "int8 operands");
  const int64_t m = x_q.size(0), k = x_q.size(1), n = values.size(0);
  TORCH_CHECK(x_scale.dim() == 1 && x_scale.size(0) == m, "x_scale must be [M]");
  const at::Tensor xs = padded_x(x_q, at::kChar);
  at::Tensor acc = at::empty({m, n}, x_q.options().dtype(at::kInt));
  at::Tensor out = at::empty({m, n}, x_q.options().dtype(at::kFloat));
  const at::Tensor xsc = x_scale.to(at::kFloat).contiguous();
  const at::Tensor wsc = optional_f32(w_scale, n), b = optional_f32(bias, n);
  const float* xsp = xsc.data_ptr<float>();
  const float* wsp = wsc.data_ptr<float>();
  const float* bp = b.defined() ? b.data_ptr<float>() : nullptr;
  const Args a{xs.data_ptr(), m, xs.size(1), values.data_ptr(), meta.data_ptr<uint8_t>(), k,
               acc.data_ptr(), n};
  const Isa isa = active_isa();
  auto kernel = isa >= Isa::Avx512Vnni && has_vbmi() ? int_rows_avx512_vnni
                : isa >= Isa::Avx512                 ? int_rows_avx512
                : isa == Isa::Avx2                   ? int_rows_avx2
                                                     : int_rows_scalar;
  const int32_t* ap = acc.data_ptr<int32_t>();
  float* o = out.data_ptr<float>();
  parallel_rows(n, m, k, [&](int64_t n0, int64_t n1) {
    kernel(a, n0, n1);
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = n0; j < n1; ++j) {
        float v = static_cast<float>(ap[i * n + j]) * xsp[i] * wsp[j];
        if (bp) v += bp[j];
        o[i * n + j] = v;
      }
  });
  return out_dtype == at::kFloat ? out : out.to(out_dtype);
}

}  // namespace
}  // namespace llmkern::sparse24

TORCH_LIBRARY_FRAGMENT(llmkern_C, m) {
  m.def("sparse24_matmul(Tensor x, Tensor values, Tensor meta, Tensor? bias, Tensor? w_scale) -> Tensor",
        &llmkern::sparse24::sparse24_matmul);
  m.def("sparse24_w8a8_matmul(Tensor x_q, Tensor values, Tensor meta, Tensor x_scale, "
        "Tensor w_scale, Tensor? bias, ScalarType out_dtype) -> Tensor",
        &llmkern::sparse24::sparse24_w8a8_matmul);
}
