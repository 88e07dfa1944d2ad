// Torch glue of the 2:4 CPU kernels: prepares a zero-padded x, picks the ISA variant, splits
// weight rows over threads and applies the epilogue (scales, bias, output dtype) per thread. Arguments were
// validated in Python (llmkern/ops/sparse24.py); the checks here guard internal invariants only.
#include <cstring>
#include <optional>
#include <vector>

#include "torch_ops.h"
#include "cpu/int8_kernels.h"
#include "cpu/isa.h"
#include "cpu/sparse24_kernels.h"

namespace llmkern::sparse24 {
namespace {

constexpr int64_t kRowTile = 4;  // weight rows per register tile in the SIMD kernels

int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

// The glue does its own small copies and conversions, serially: torch's copy_ / .to() go
// parallel above 32K elements, and on a busy machine waking the second thread for a copy of a
// few tens of KB was measured to cost ~16 ms, more than the whole matmul.

template <typename T>
float to_float(T v) {
  return static_cast<float>(v);
}

// Copies x into fp32 rows of ld floats, zero-padded; returns whether every value is finite.
template <typename Src>
bool copy_rows(const at::Tensor& x, float* out, int64_t ld) {
  const Src* p = x.data_ptr<Src>();
  const int64_t m = x.size(0), k = x.size(1), s0 = x.stride(0), s1 = x.stride(1);
  uint32_t bad = 0;  // an all-ones exponent: NaN or inf
  for (int64_t i = 0; i < m; ++i) {
    float* o = out + i * ld;
    for (int64_t j = 0; j < k; ++j) {
      o[j] = to_float(p[i * s0 + j * s1]);
      uint32_t bits;
      std::memcpy(&bits, o + j, 4);
      bad |= (bits & 0x7f800000u) == 0x7f800000u;
    }
    for (int64_t j = k; j < ld; ++j) o[j] = 0.f;
  }
  return bad == 0;
}

// x [M, K] (any strides) -> contiguous fp32 [M, round_up(K, kKPad)], padding columns zero, and
// whether all of x is finite.
std::pair<at::Tensor, bool> padded_x_f32(const at::Tensor& x) {
  const int64_t kp = round_up(x.size(1), kKPad);
  at::Tensor out = at::empty({x.size(0), kp}, x.options().dtype(at::kFloat));
  float* o = out.data_ptr<float>();
  bool finite = false;
  switch (x.scalar_type()) {
    case at::kFloat: finite = copy_rows<float>(x, o, kp); break;
    case at::kBFloat16: finite = copy_rows<at::BFloat16>(x, o, kp); break;
    case at::kHalf: finite = copy_rows<at::Half>(x, o, kp); break;
    default: TORCH_CHECK(false, "float x expected, got ", x.scalar_type());
  }
  return {out, finite};
}

// x [M, K] (float or int8, any strides) -> the column kernels' transposed tiles
// (sparse24_kernels.h), fp32.
template <typename Src>
void copy_tile_columns(const at::Tensor& x, int64_t t, int64_t lanes, float* d) {
  const Src* p = x.data_ptr<Src>();
  const int64_t m = x.size(0), k = x.size(1), s0 = x.stride(0), s1 = x.stride(1);
  const int64_t m0 = t * column_tile_rows(lanes), w = column_tile_width(m, t, lanes);
  const int64_t rows = std::min(w, m - m0);
  constexpr int64_t kBlock = 64;  // columns per pass: the written lines stay in L1
  for (int64_t c0 = 0; c0 < k; c0 += kBlock) {
    const int64_t c1 = std::min(k, c0 + kBlock);
    for (int64_t i = 0; i < rows; ++i)
      for (int64_t c = c0; c < c1; ++c) d[c * w + i] = to_float(p[(m0 + i) * s0 + c * s1]);
    for (int64_t i = rows; i < w; ++i)
      for (int64_t c = c0; c < c1; ++c) d[c * w + i] = 0.f;
  }
}

at::Tensor column_tiles_x(const at::Tensor& x, int64_t lanes) {
  const int64_t m = x.size(0), k = x.size(1), rows = column_tile_rows(lanes);
  const int64_t tiles = (m + rows - 1) / rows;
  at::Tensor out = at::empty({tiles * rows * k}, x.options().dtype(at::kFloat));
  float* o = out.data_ptr<float>();
  at::parallel_for(0, tiles, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      float* d = o + t * rows * k;
      if (x.scalar_type() == at::kFloat && x.stride(1) == 1) {
        column_tile_f32_avx2(x.data_ptr<float>(), x.stride(0), m, k, t, lanes, d);
        continue;
      }
      switch (x.scalar_type()) {
        case at::kFloat: copy_tile_columns<float>(x, t, lanes, d); break;
        case at::kBFloat16: copy_tile_columns<at::BFloat16>(x, t, lanes, d); break;
        case at::kHalf: copy_tile_columns<at::Half>(x, t, lanes, d); break;
        case at::kChar: copy_tile_columns<int8_t>(x, t, lanes, d); break;
        default: TORCH_CHECK(false, "float or int8 x expected, got ", x.scalar_type());
      }
    }
  });
  return out;
}

// int8 x_q [M, K] (any strides) -> contiguous int8 [M, round_up(K, kKPad)], padding zero.
at::Tensor padded_x_i8(const at::Tensor& x) {
  TORCH_CHECK(x.scalar_type() == at::kChar, "int8 x_q expected");
  const int64_t kp = round_up(x.size(1), kKPad);
  at::Tensor out = at::empty({x.size(0), kp}, x.options());
  int8_t* o = out.data_ptr<int8_t>();
  const int8_t* p = x.data_ptr<int8_t>();
  const int64_t m = x.size(0), k = x.size(1), s0 = x.stride(0), s1 = x.stride(1);
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t j = 0; j < k; ++j) o[i * kp + j] = p[i * s0 + j * s1];
    std::memset(o + i * kp + k, 0, kp - k);
  }
  return out;
}

// Float x [M, K] rounded to int16 as the dense weight-only kernel does at few rows
// (int8::round_x_int16_avx2), as the byte planes of the w8_int16_rows_* kernels: row i's low
// bytes in row 2 i of a uint8 [2 M, round_up(K, kKPad)], its high bytes in row 2 i + 1 (xor 0x80
// with flip_high), zero past K; and the block scales [M, ceil(K / kW8XBlock)]. Nothing when a
// block is not finite or too small to scale (the float kernels take the call then).
std::optional<std::pair<at::Tensor, at::Tensor>> x_int16_planes(const at::Tensor& x,
                                                                  bool flip_high) {
  using int8::DType;
  const DType dt = x.scalar_type() == at::kFloat      ? DType::F32
                   : x.scalar_type() == at::kBFloat16 ? DType::BF16
                                                      : DType::F16;
  const int64_t m = x.size(0), k = x.size(1), kp = round_up(k, kKPad);
  const at::Tensor xc = x.contiguous();
  std::vector<int16_t> q(m * kp);
  at::Tensor scale = at::empty({m, (k + int8::kW8XBlock - 1) / int8::kW8XBlock},
                               x.options().dtype(at::kFloat));
  if (!int8::round_x_int16_avx2(xc.data_ptr(), dt, k, m, k, q.data(), kp, scale.data_ptr<float>()))
    return std::nullopt;
  at::Tensor planes = at::empty({2 * m, kp}, x.options().dtype(at::kByte));
  uint8_t* p = planes.data_ptr<uint8_t>();
  const uint8_t high_xor = flip_high ? 0x80 : 0;
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < kp; ++j) {
      const auto u = static_cast<uint16_t>(q[i * kp + j]);
      p[2 * i * kp + j] = static_cast<uint8_t>(u);
      p[(2 * i + 1) * kp + j] = static_cast<uint8_t>(u >> 8) ^ high_xor;
    }
  return std::make_pair(planes, scale);
}

// Optional 1-D float vector of length n (any float dtype and stride) as fp32 values.
std::vector<float> vector_f32(const c10::optional<at::Tensor>& t, int64_t n) {
  if (!t.has_value()) return {};
  TORCH_CHECK(t->dim() == 1 && t->size(0) == n, "vector of length ", n, " expected");
  std::vector<float> out(n);
  const int64_t st = t->stride(0);
  switch (t->scalar_type()) {
    case at::kFloat: for (int64_t i = 0; i < n; ++i) out[i] = t->data_ptr<float>()[i * st]; break;
    case at::kBFloat16:
      for (int64_t i = 0; i < n; ++i) out[i] = to_float(t->data_ptr<at::BFloat16>()[i * st]);
      break;
    case at::kHalf:
      for (int64_t i = 0; i < n; ++i) out[i] = to_float(t->data_ptr<at::Half>()[i * st]);
      break;
    default: TORCH_CHECK(false, "float vector expected, got ", t->scalar_type());
  }
  return out;
}

// An output tensor written element by element in its dtype (fp32 results rounded to nearest
// even, as torch's .to()).
struct Output {
  void* p;
  at::ScalarType t;
  explicit Output(const at::Tensor& out) : p(out.data_ptr()), t(out.scalar_type()) {
    TORCH_CHECK(t == at::kFloat || t == at::kBFloat16 || t == at::kHalf, "float output expected");
  }
  void store(int64_t idx, float v) const {
    if (t == at::kFloat)
      static_cast<float*>(p)[idx] = v;
    else if (t == at::kBFloat16)
      static_cast<at::BFloat16*>(p)[idx] = at::BFloat16(v);
    else
      static_cast<at::Half*>(p)[idx] = at::Half(v);
  }
};

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

ValueType value_type(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return ValueType::F32;
    case at::kBFloat16: return ValueType::BF16;
    case at::kHalf: return ValueType::F16;
    case at::kChar: return ValueType::I8;
    default: TORCH_CHECK(false, "unsupported 2:4 value dtype ", t);
  }
}

// Enough weight rows per task that threading pays (about 64K multiply-adds).
int64_t grain_tiles(int64_t m, int64_t k) {
  const int64_t per_tile = kRowTile * std::max<int64_t>(1, m) * (k / 2);
  return std::max<int64_t>(1, (int64_t{1} << 16) / std::max<int64_t>(1, per_tile));
}

// The column kernels' tasks (sparse24_kernels.h), x tile groups outer: fn(n0, n1, t0, t1).
template <class Fn>
void parallel_column_tasks(int64_t m, int64_t n, int64_t lanes, const Fn& fn) {
  const int64_t rows = column_tile_rows(lanes), tiles = (m + rows - 1) / rows;
  const int64_t per_group = std::max<int64_t>(1, kColumnGroupRows / rows);
  const int64_t blocks = (n + kColumnRowBlock - 1) / kColumnRowBlock;
  const int64_t groups = (tiles + per_group - 1) / per_group;
  at::parallel_for(0, groups * blocks, 1, [&](int64_t q0, int64_t q1) {
    for (int64_t q = q0; q < q1; ++q) {
      const int64_t n0 = q % blocks * kColumnRowBlock, t0 = q / blocks * per_group;
      fn(n0, std::min(n, n0 + kColumnRowBlock), t0, std::min(tiles, t0 + per_group));
    }
  });
}

// Many rows of x: kernel(args, n0, n1, t0, t1) (a column kernel of `lanes` rows per vector,
// into raw) and epilogue(n0, n1, first x row, end) per task, when m >= min_rows; false (nothing
// run) otherwise.
template <class Kernel, class Epilogue>
bool ran_columns(int64_t lanes, int64_t min_rows, const at::Tensor& x, const at::Tensor& values,
                 const at::Tensor& meta, void* raw, const Kernel& kernel,
                 const Epilogue& epilogue) {
  const int64_t m = x.size(0), n = values.size(0);
  if (m < min_rows) return false;
  const at::Tensor xt = column_tiles_x(x, lanes);
  const ColumnArgs a{xt.data_ptr<float>(), m, x.size(1), values.data_ptr(),
                     meta.data_ptr<uint8_t>(), raw, n};
  const int64_t rows = column_tile_rows(lanes);
  parallel_column_tasks(m, n, lanes, [&](int64_t n0, int64_t n1, int64_t t0, int64_t t1) {
    kernel(a, n0, n1, t0, t1);
    epilogue(n0, n1, t0 * rows, std::min(m, t1 * rows));
  });
  return true;
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
                           const c10::optional<at::Tensor>& w_scale,
                           const c10::optional<at::Tensor>& bias) {
  check_compressed(x, values, meta);
  const ValueType vt = value_type(values.scalar_type());
  TORCH_CHECK((vt == ValueType::I8) == w_scale.has_value(), "w_scale goes with int8 values only");
  const int64_t m = x.size(0), k = x.size(1), n = values.size(0);
  at::Tensor out = at::empty({m, n}, x.options());
  const bool f32_out = x.scalar_type() == at::kFloat;
  at::Tensor raw = f32_out ? out : at::empty({m, n}, x.options().dtype(at::kFloat));
  const std::vector<float> b = vector_f32(bias, n), s = vector_f32(w_scale, n);
  float* r = raw.data_ptr<float>();
  const Output o(out);
  auto epilogue = [&](int64_t n0, int64_t n1, int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      float* row = r + i * n;
      // In place, one plain loop per case, so that they vectorise (a per-element loop took a
      // third of a MiniLM-sized fp32 call with bias at M = 256).
      if (!s.empty() && !b.empty()) {
        for (int64_t j = n0; j < n1; ++j) row[j] = row[j] * s[j] + b[j];
      } else if (!s.empty()) {
        for (int64_t j = n0; j < n1; ++j) row[j] *= s[j];
      } else if (!b.empty()) {
        for (int64_t j = n0; j < n1; ++j) row[j] += b[j];
      }
      if (!f32_out)
        for (int64_t j = n0; j < n1; ++j) o.store(i * n + j, row[j]);
    }
  };
  const Isa isa = active_isa();
  // int8 values at few rows: x rounded to int16, as the dense weight-only kernels do.
  const bool avx2_int16 = isa == Isa::Avx2 && m <= int8::kW8Int16Rows;
  const bool vnni_int16 = has_avx512_vnni_vbmi() && m <= int8::kW8Int16RowsVnni;
  if (vt == ValueType::I8 && (avx2_int16 || vnni_int16)) {
    const bool vnni = !avx2_int16;  // its kernel takes the high bytes flipped to unsigned
    if (const auto rounded = x_int16_planes(x, /*flip_high=*/vnni)) {
      const auto& [planes, xscale] = *rounded;
      Args a{planes.data_ptr(), m, planes.size(1), values.data_ptr(), meta.data_ptr<uint8_t>(), k,
             raw.data_ptr(), n, n};
      a.x_scale = xscale.data_ptr<float>();
      const auto kernel = vnni ? w8_int16_rows_avx512_vnni : w8_int16_rows_avx2;
      parallel_rows(n, m, k, [&](int64_t n0, int64_t n1) {
        kernel(a, n0, n1);
        epilogue(n0, n1, 0, m);
      });
      return out;
    }
  }
  // Many rows: the column kernel.
  const bool avx512 = isa >= Isa::Avx512;
  auto columns = [&](const ColumnArgs& a, int64_t n0, int64_t n1, int64_t t0, int64_t t1) {
    (avx512 ? float_columns_avx512 : float_columns_avx2)(vt, a, n0, n1, t0, t1);
  };
  const int64_t column_rows = avx512          ? kColumnMinRowsAvx512
                              : isa == Isa::Avx2 ? kColumnMinRowsAvx2
                                                 : INT64_MAX;
  const int64_t lanes = avx512 ? kColumnLanesAvx512 : kColumnLanesAvx2;
  if (ran_columns(lanes, column_rows, x, values, meta, raw.data_ptr(), columns, epilogue))
    return out;
  const auto [xs, x_finite] = padded_x_f32(x);
  const Args a{xs.data_ptr(), m, xs.size(1), values.data_ptr(), meta.data_ptr<uint8_t>(), k,
               raw.data_ptr(), n, n, x_finite};
  auto kernel = isa >= Isa::Avx512 ? float_rows_avx512
                : isa == Isa::Avx2 ? float_rows_avx2
                                   : float_rows_scalar;
  parallel_rows(n, m, k, [&](int64_t n0, int64_t n1) {
    kernel(vt, a, n0, n1);
    epilogue(n0, n1, 0, m);
  });
  return out;
}

// W8A8: out = float(sum x_q * w_q) * x_scale[m] * w_scale[n] (+ bias[n]), cast to out_dtype;
// exact int32 sums, the epilogue in this order in fp32 (bit-identical to the reference).
at::Tensor sparse24_w8a8_matmul(const at::Tensor& x_q, const at::Tensor& values,
                                const at::Tensor& meta, const at::Tensor& x_scale,
                                const at::Tensor& w_scale, const c10::optional<at::Tensor>& bias,
                                at::ScalarType out_dtype) {
  check_compressed(x_q, values, meta);
  TORCH_CHECK(values.scalar_type() == at::kChar, "int8 values expected");
  const int64_t m = x_q.size(0), k = x_q.size(1), n = values.size(0);
  at::Tensor acc = at::empty({m, n}, x_q.options().dtype(at::kInt));
  at::Tensor out = at::empty({m, n}, x_q.options().dtype(out_dtype));
  const std::vector<float> xsc = vector_f32(x_scale, m), wsc = vector_f32(w_scale, n);
  const std::vector<float> b = vector_f32(bias, n);
  const int32_t* ap = acc.data_ptr<int32_t>();
  const Output o(out);
  const bool f32_out = out_dtype == at::kFloat;
  float* of = f32_out ? out.data_ptr<float>() : nullptr;
  auto epilogue = [&](int64_t n0, int64_t n1, int64_t i0, int64_t i1) {
    std::vector<float> tmp(f32_out ? 0 : n1 - n0);
    for (int64_t i = i0; i < i1; ++i) {
      // Plain loops (vectorised), the products in the reference's order.
      float* row = f32_out ? of + i * n + n0 : tmp.data();
      const int32_t* a = ap + i * n + n0;
      const float xi = xsc[i];
      for (int64_t j = 0; j < n1 - n0; ++j) row[j] = static_cast<float>(a[j]) * xi * wsc[n0 + j];
      if (!b.empty())
        for (int64_t j = 0; j < n1 - n0; ++j) row[j] += b[n0 + j];
      if (!f32_out)
        for (int64_t j = 0; j < n1 - n0; ++j) o.store(i * n + n0 + j, row[j]);
    }
  };
  // Many rows on AVX2: the exact column kernel. AVX-512 keeps the int row kernels (the 2:4
  // W8A8 module takes the dense path from 5 rows there).
  const Isa isa = active_isa();
  const int64_t column_rows = isa == Isa::Avx2 ? kColumnMinRowsAvx2 : INT64_MAX;
  if (ran_columns(kColumnLanesAvx2, column_rows, x_q, values, meta, acc.data_ptr(),
                  int_columns_avx2, epilogue))
    return out;
  const at::Tensor xs = padded_x_i8(x_q);
  const Args a{xs.data_ptr(), m, xs.size(1), values.data_ptr(), meta.data_ptr<uint8_t>(), k,
               acc.data_ptr(), n, n};
  auto kernel = has_avx512_vnni_vbmi() ? int_rows_avx512_vnni
                : isa >= Isa::Avx512    ? int_rows_avx512
                : isa == Isa::Avx2      ? int_rows_avx2
                                        : int_rows_scalar;
  parallel_rows(n, m, k, [&](int64_t n0, int64_t n1) {
    kernel(a, n0, n1);
    epilogue(n0, n1, 0, m);
  });
  return out;
}

}  // namespace
}  // namespace llmkern::sparse24

// Schemas: csrc/schemas.cpp.
TORCH_LIBRARY_IMPL(llmkern_C, CPU, m) {
  m.impl("sparse24_matmul", &llmkern::sparse24::sparse24_matmul);
  m.impl("sparse24_w8a8_matmul", &llmkern::sparse24::sparse24_w8a8_matmul);
}
