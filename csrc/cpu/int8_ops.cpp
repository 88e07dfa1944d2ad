// Torch glue of the INT8 CPU kernels: validates internal invariants (Python already checked the
// user's arguments), checks packed weights against their header, prepares activations in the
// format of the active ISA, picks the kernel variant and parallelises over output tiles.
#include <atomic>
#include <cstring>

#include "torch_ops.h"
#include "cpu/int8_kernels.h"
#include "cpu/isa.h"

namespace llmkern::int8 {
namespace {

// Rows per W8A8/W8 tile: a multiple of every micro-kernel height (8, 6, 4, 2) and of kMaxXRows,
// and a tile over one 64-channel panel keeps that panel in L2 while the rows stream.
constexpr int64_t kRowBlock = 192;
// Below this many multiply-adds per thread, waking another thread costs more than it saves.
// 2^18 rather than 2^20: MiniLM's 384x1536 and 1536x384 at M = 1 (590K, weights from memory)
// ran 1.3-2x faster on two threads (Intel Xeon with AMX).
constexpr int64_t kMacsPerTask = 1 << 18;
// W8A8 calls with at least this many rows take the AMX tiles. Fewer rows are bound by reading
// the weights, and a tile multiply costs the same for 1 row as for 16. Intel Xeon with AMX, 2
// threads, weights rotated through 960 MB (as in decode): AMX / VNNI 0.81-0.88x at M = 1,
// 0.90-0.98x at M = 2, 1.03-1.14x at M = 4, 1.23-1.36x at M = 8 on 2048x2048, 2048x5632,
// 5632x2048 and 4096x4096 (with hot weights VNNI still led at M = 4 on 4096x4096, 1.1x).
constexpr int64_t kAmxRows = 4;
// From this many rows AMX tiles run row block by row block, every panel for one block first:
// its activations stay in L2 and the weights stream once a block, rather than all activations
// once a panel. Intel Xeon with AMX, 2 threads, 4096x4096 / 2048x5632 / 384x1536 / 1536x384:
// 1.0-1.2x at M = 1024, 1.05-1.9x at M = 2048-4096; at M = 256-512 mixed (0.65-1.26x).
constexpr int64_t kAmxRowsOuter = 1024;
// Weight-only calls with at least this many rows (x rounded to int16) take the AMX tiles. Intel
// Xeon with AMX, 2 threads, weights from DRAM, 4096x4096 and 2048x5632: AMX / vpdpwssd 0.96-1.00x
// at M = 2, 1.01-1.03x at M = 3-4, 1.3x at M = 6, 1.4x at M = 8 (67-72% of the measured read
// bandwidth against 49-52%), 1.7-1.9x at M = 16.
constexpr int64_t kAmxW8Rows = 3;

DType dtype_of(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return DType::F32;
    case at::kBFloat16: return DType::BF16;
    case at::kHalf: return DType::F16;
    default: TORCH_CHECK(false, "llmkern int8: unsupported float dtype ", t);
  }
}

ActFormat act_format(Isa isa) {
  switch (isa) {
    case Isa::Amx:
    case Isa::Avx512Vnni: return ActFormat::U8;
    case Isa::Avx512:
    case Isa::Avx2: return ActFormat::S16;
    case Isa::Scalar: return ActFormat::S8;
  }
  return ActFormat::S8;
}

at::ScalarType act_dtype(ActFormat f) {
  return f == ActFormat::S16 ? at::kShort : (f == ActFormat::U8 ? at::kByte : at::kChar);
}

void quantize_rows(Isa isa, const QuantizeArgs& a, int64_t r0, int64_t r1) {
  switch (isa) {
    case Isa::Amx:
    case Isa::Avx512Vnni:
    case Isa::Avx512: return quantize_rows_avx512(a, r0, r1);
    case Isa::Avx2: return quantize_rows_avx2(a, r0, r1);
    case Isa::Scalar: return quantize_rows_scalar(a, r0, r1);
  }
}

void w8a8_tile(Isa isa, const W8a8Args& a, int64_t m0, int64_t m1, int64_t p) {
  switch (isa) {
    case Isa::Amx:
      if (a.m >= kAmxRows) return w8a8_tile_amx(a, m0, m1, p, p + 1);
      [[fallthrough]];
    case Isa::Avx512Vnni: return w8a8_tile_avx512_vnni(a, m0, m1, p, p + 1);
    case Isa::Avx512: return w8a8_tile_avx512(a, m0, m1, p, p + 1);
    case Isa::Avx2: return w8a8_tile_avx2(a, m0, m1, p, p + 1);
    case Isa::Scalar: return w8a8_tile_scalar(a, m0, m1, p, p + 1);
  }
}

void w8_tile(Isa isa, const W8Args& a, int64_t m0, int64_t m1, int64_t p) {
  switch (isa) {
    case Isa::Amx:
      if (a.x_bytes) return w8_int16_tile_amx(a, m0, m1, p, p + 1);
      [[fallthrough]];
    case Isa::Avx512Vnni:
      if (a.xq) return w8_int16_tile_avx512_vnni(a, m0, m1, p, p + 1);
      [[fallthrough]];
    case Isa::Avx512: return w8_tile_avx512(a, m0, m1, p, p + 1);
    case Isa::Avx2: return w8_tile_avx2(a, m0, m1, p, p + 1);
    case Isa::Scalar: return w8_tile_scalar(a, m0, m1, p, p + 1);
  }
}

int64_t panel_count(int64_t n) { return (round_up(n, kLane) + kPanel - 1) / kPanel; }

// Runs tile(m0, m1, panel) over every (panel, row block): consecutive tiles share a panel, or
// with rows_outer a row block.
template <class Tile>
void for_each_tile(int64_t m, int64_t n, int64_t k, const Tile& tile, bool rows_outer = false) {
  const int64_t panels = panel_count(n);
  const int64_t block = std::min(m, kRowBlock);
  const int64_t blocks = (m + block - 1) / block;
  const int64_t grain = std::max<int64_t>(1, kMacsPerTask / (block * kPanel * k));
  at::parallel_for(0, panels * blocks, grain, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t p = rows_outer ? t % panels : t / blocks, b = rows_outer ? t / panels : t % blocks;
      tile(b * block, std::min(m, (b + 1) * block), p);
    }
  });
}

PackedHeader read_header(const at::Tensor& packed, int64_t kind) {
  TORCH_CHECK(packed.device().is_cpu() && packed.scalar_type() == at::kByte && packed.dim() == 1 &&
                  packed.is_contiguous() && packed.numel() >= kHeaderBytes,
              "llmkern int8: a packed weight is a contiguous 1-D uint8 CPU tensor from "
              "llmkern.cpu.int8.pack_*");
  PackedHeader h;
  std::memcpy(&h, packed.data_ptr<uint8_t>(), sizeof(h));
  TORCH_CHECK(h.magic == kMagic && h.kind == kind && h.n > 0 && h.k > 0 && h.nbytes == packed.numel(),
              "llmkern int8: not a packed ", kind == kKindW8A8 ? "W8A8" : "W8",
              " weight of this layout version (repack it)");
  if (kind == kKindW8A8) {
    TORCH_CHECK(h.nbytes == w8a8_packed_bytes(h.n, h.k) && (h.w_has_min == 0 || h.w_has_min == 1) &&
                    h.aux_offset == kHeaderBytes + round_up(round_up(h.n, kLane) * round_up(h.k, 4), 64),
                "llmkern int8: corrupt packed W8A8 weight header");
  } else {
    TORCH_CHECK(h.group_size > 0 && h.groups == (h.k + h.group_size - 1) / h.group_size &&
                    h.nbytes == w8_packed_bytes(h.n, h.k, h.groups) &&
                    h.aux_offset == kHeaderBytes + round_up(round_up(h.n, kLane) * h.k, 64),
                "llmkern int8: corrupt packed W8 weight header");
  }
  return h;
}

void check_vector(const at::Tensor& t, int64_t n, const char* name) {
  TORCH_CHECK(t.device().is_cpu() && t.dim() == 1 && t.numel() == n, "llmkern int8: ", name,
              " must be a CPU vector of ", n, " elements");
}

at::Tensor float_vector(const at::Tensor& t) { return t.to(at::kFloat).contiguous(); }

// Rows with unit stride along K, copying only when needed.
at::Tensor unit_stride_rows(const at::Tensor& x) { return x.stride(1) == 1 ? x : x.contiguous(); }

at::Tensor pack_w8a8_op(const at::Tensor& w_q) {
  TORCH_CHECK(w_q.device().is_cpu() && w_q.scalar_type() == at::kChar && w_q.dim() == 2 &&
                  w_q.numel() > 0,
              "llmkern int8: w_q must be a non-empty 2-D int8 CPU tensor");
  const at::Tensor w = w_q.contiguous();
  const int64_t n = w.size(0), k = w.size(1);
  at::Tensor out = at::empty({w8a8_packed_bytes(n, k)}, w.options().dtype(at::kByte));
  pack_w8a8_header(n, k, w.eq(-128).any().item<bool>(), out.data_ptr<uint8_t>());
  at::parallel_for(0, panel_count(n), 1, [&](int64_t p0, int64_t p1) {
    pack_w8a8_panels(w.data_ptr<int8_t>(), out.data_ptr<uint8_t>(), p0, p1);
  });
  return out;
}

at::Tensor pack_w8_op(const at::Tensor& w_q, const at::Tensor& w_scale, int64_t group_size) {
  TORCH_CHECK(w_q.device().is_cpu() && w_q.scalar_type() == at::kChar && w_q.dim() == 2 &&
                  w_q.numel() > 0 && group_size >= 0,
              "llmkern int8: w_q must be a non-empty 2-D int8 CPU tensor, group_size >= 0");
  const int64_t n = w_q.size(0), k = w_q.size(1);
  const int64_t groups = group_size == 0 ? 1 : (k + group_size - 1) / group_size;
  TORCH_CHECK(w_scale.device().is_cpu() && w_scale.numel() == n * groups,
              "llmkern int8: w_scale must have N * groups elements");
  const at::Tensor w = w_q.contiguous(), s = float_vector(w_scale.reshape({-1}));
  at::Tensor out = at::empty({w8_packed_bytes(n, k, groups)}, w.options().dtype(at::kByte));
  pack_w8_header(n, k, group_size, out.data_ptr<uint8_t>());
  at::parallel_for(0, panel_count(n), 1, [&](int64_t p0, int64_t p1) {
    pack_w8_panels(w.data_ptr<int8_t>(), s.data_ptr<float>(), out.data_ptr<uint8_t>(), p0, p1);
  });
  return out;
}

// Quantises x into q (rows of ld_q values in `fmt`) and scale, in parallel over rows.
void quantize_into(Isa isa, const at::Tensor& x, void* q, ActFormat fmt, int64_t ld_q, float* scale,
                   const std::optional<at::Tensor>& static_scale) {
  const at::Tensor xr = unit_stride_rows(x);
  QuantizeArgs a{xr.data_ptr(), dtype_of(xr.scalar_type()), xr.stride(0), xr.size(1), q, fmt, ld_q,
                 scale, static_scale.has_value(), 0.f};
  if (a.is_static) {
    TORCH_CHECK(static_scale->numel() == 1, "llmkern int8: a static x_scale is one value");
    a.static_scale = static_scale->to(at::kFloat).item<float>();
  }
  const int64_t grain = std::max<int64_t>(1, (1 << 16) / ld_q);
  at::parallel_for(0, xr.size(0), grain, [&](int64_t r0, int64_t r1) { quantize_rows(isa, a, r0, r1); });
}

// Per token, or static with a one-element x_scale (then every finite row's scale is x_scale).
std::tuple<at::Tensor, at::Tensor> quantize_per_token_op(const at::Tensor& x,
                                                         const std::optional<at::Tensor>& x_scale) {
  TORCH_CHECK(x.device().is_cpu() && x.dim() == 2 && x.numel() > 0, "llmkern int8: x must be 2-D");
  const Isa isa = active_isa();
  at::Tensor q = at::empty(x.sizes(), x.options().dtype(at::kChar));
  at::Tensor scale = at::empty({x.size(0)}, x.options().dtype(at::kFloat));
  quantize_into(isa, x, q.data_ptr(), ActFormat::S8, x.size(1), scale.data_ptr<float>(), x_scale);
  return {q, scale};
}

// The GEMM on activations already in the ISA's format ([m, kp]); x_scale float32 [m].
at::Tensor w8a8_run(Isa isa, const at::Tensor& act, const at::Tensor& x_scale, const at::Tensor& w_scale,
                    const std::optional<at::Tensor>& bias, const at::Tensor& packed,
                    const PackedHeader& h, at::ScalarType out_dtype) {
  const int64_t m = act.size(0);
  check_vector(w_scale, h.n, "w_scale");
  const at::Tensor ws = float_vector(w_scale);
  at::Tensor b;
  if (bias.has_value()) {
    check_vector(*bias, h.n, "bias");
    b = float_vector(*bias);
  }
  at::Tensor out = at::empty({m, h.n}, act.options().dtype(out_dtype));
  const uint8_t* base = packed.data_ptr<uint8_t>();
  const W8a8Args a{act.data_ptr(),
                   m,
                   h.n,
                   round_up(h.k, 4),
                   reinterpret_cast<const int8_t*>(base + kHeaderBytes),
                   reinterpret_cast<const int32_t*>(base + h.aux_offset),
                   x_scale.data_ptr<float>(),
                   ws.data_ptr<float>(),
                   b.defined() ? b.data_ptr<float>() : nullptr,
                   out.data_ptr(),
                   dtype_of(out_dtype),
                   h.n,
                   h.w_has_min != 0};
  const bool rows_outer = isa == Isa::Amx && m >= kAmxRowsOuter;
  for_each_tile(
      m, h.n, a.kp, [&](int64_t m0, int64_t m1, int64_t p) { w8a8_tile(isa, a, m0, m1, p); }, rows_outer);
  return out;
}

// `packed`: the weight from int8_pack_w8a8.
at::Tensor w8a8_gemm_op(const at::Tensor& x_q, const at::Tensor& packed, const at::Tensor& x_scale,
                        const at::Tensor& w_scale, const std::optional<at::Tensor>& bias,
                        at::ScalarType out_dtype) {
  const PackedHeader h = read_header(packed, kKindW8A8);
  TORCH_CHECK(x_q.device().is_cpu() && x_q.scalar_type() == at::kChar && x_q.dim() == 2 &&
                  x_q.size(0) > 0 && x_q.size(1) == h.k,
              "llmkern int8: x_q must be int8 [M, ", h.k, "]");
  const int64_t m = x_q.size(0), k = h.k, kp = round_up(k, 4);
  check_vector(x_scale, m, "x_scale");
  const Isa isa = active_isa();
  const ActFormat fmt = act_format(isa);
  // Re-express x_q in the kernel's activation format, zero-padded to kp columns.
  const at::Tensor xq = unit_stride_rows(x_q);
  at::Tensor act = at::empty({m, kp}, x_q.options().dtype(act_dtype(fmt)));
  const int8_t* src = xq.data_ptr<int8_t>();
  const int64_t ld = xq.stride(0);
  void* dst = act.data_ptr();
  at::parallel_for(0, m, std::max<int64_t>(1, (1 << 16) / kp), [&](int64_t r0, int64_t r1) {
    // Branch-free loops over [0, k) and the zero padding, so the compiler vectorises them.
    for (int64_t r = r0; r < r1; ++r) {
      const int8_t* row = src + r * ld;
      if (fmt == ActFormat::U8) {
        uint8_t* out = static_cast<uint8_t*>(dst) + r * kp;
        for (int64_t c = 0; c < k; ++c) out[c] = static_cast<uint8_t>(row[c]) ^ 0x80;  // q + 128
        for (int64_t c = k; c < kp; ++c) out[c] = 0x80;
      } else if (fmt == ActFormat::S16) {
        int16_t* out = static_cast<int16_t*>(dst) + r * kp;
        for (int64_t c = 0; c < k; ++c) out[c] = row[c];
        for (int64_t c = k; c < kp; ++c) out[c] = 0;
      } else {
        int8_t* out = static_cast<int8_t*>(dst) + r * kp;
        std::memcpy(out, row, k);
        std::memset(out + k, 0, kp - k);
      }
    }
  });
  return w8a8_run(isa, act, float_vector(x_scale), w_scale, bias, packed, h, out_dtype);
}

at::Tensor w8a8_linear_op(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& w_scale,
                          const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& x_scale) {
  const PackedHeader h = read_header(packed, kKindW8A8);
  TORCH_CHECK(x.device().is_cpu() && x.dim() == 2 && x.size(0) > 0 && x.size(1) == h.k,
              "llmkern int8: x must be [M, ", h.k, "]");
  const Isa isa = active_isa();
  const ActFormat fmt = act_format(isa);
  const int64_t m = x.size(0), kp = round_up(h.k, 4);
  at::Tensor act = at::empty({m, kp}, x.options().dtype(act_dtype(fmt)));
  at::Tensor scale = at::empty({m}, x.options().dtype(at::kFloat));
  quantize_into(isa, x, act.data_ptr(), fmt, kp, scale.data_ptr<float>(), x_scale);
  return w8a8_run(isa, act, scale, w_scale, bias, packed, h, x.scalar_type());
}

// Whether weight-only rounds x to int16 (AVX2 W8Int16 up to kW8Int16Rows rows, AVX-512 VNNI
// W8Int16Vnni up to kW8Int16RowsVnni, AMX at every row count): one scale per channel or scale
// groups of whole x blocks (a block's int32 sums then share one weight scale).
bool w8_int16_fits(Isa isa, const PackedHeader& h, int64_t m) {
  const int64_t rows = isa == Isa::Avx2         ? kW8Int16Rows
                       : isa == Isa::Amx        ? kW8Int16RowsAmx
                       : isa == Isa::Avx512Vnni ? kW8Int16RowsVnni
                                                : 0;
  return m <= rows && (h.groups == 1 || h.group_size % kW8XBlock == 0);
}

// `packed`: the weight from int8_pack_w8, which holds the scales: w_scale and group_size are only
// checked against it (the CUDA kernel of this op reads them).
at::Tensor w8_linear_op(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& w_scale,
                        const std::optional<at::Tensor>& bias, int64_t group_size) {
  const PackedHeader h = read_header(packed, kKindW8);
  TORCH_CHECK(x.device().is_cpu() && x.dim() == 2 && x.size(0) > 0 && x.size(1) == h.k,
              "llmkern int8: x must be [M, ", h.k, "]");
  const int64_t groups = group_size <= 0 ? 1 : (h.k + group_size - 1) / group_size;
  TORCH_CHECK(groups == h.groups && w_scale.numel() == h.n * h.groups,
              "llmkern int8: w_scale / group_size differ from the packed weight's (", h.groups,
              " groups of ", h.n, " scales)");
  const Isa isa = active_isa();
  const int64_t m = x.size(0), k = h.k;
  at::Tensor b;
  if (bias.has_value()) {
    check_vector(*bias, h.n, "bias");
    b = float_vector(*bias);
  }
  at::Tensor out = at::empty({m, h.n}, x.options());
  const uint8_t* base = packed.data_ptr<uint8_t>();
  W8Args a{nullptr,
           0,
           m,
           h.n,
           h.k,
           reinterpret_cast<const int8_t*>(base + kHeaderBytes),
           reinterpret_cast<const float*>(base + h.aux_offset),
           h.group_size,
           h.groups,
           b.defined() ? b.data_ptr<float>() : nullptr,
           out.data_ptr(),
           dtype_of(x.scalar_type()),
           h.n};
  if (w8_int16_fits(isa, h, m)) {
    const int64_t ld = round_up(k, 2), blocks = (k + kW8XBlock - 1) / kW8XBlock;
    const at::Tensor xc = x.contiguous();
    at::Tensor xq = at::empty({m * ld}, x.options().dtype(at::kShort));
    at::Tensor xs = at::empty({m * blocks}, x.options().dtype(at::kFloat));
    const DType dt = dtype_of(x.scalar_type());
    const char* x_raw = static_cast<const char*>(xc.data_ptr());
    std::atomic<bool> rounded{true};
    const int64_t grain = std::max<int64_t>(1, (1 << 16) / k);
    at::parallel_for(0, m, grain, [&](int64_t r0, int64_t r1) {
      if (!round_x_int16_avx2(x_raw + r0 * k * xc.element_size(), dt, k, r1 - r0, k,
                              xq.data_ptr<int16_t>() + r0 * ld, ld, xs.data_ptr<float>() + r0 * blocks))
        rounded = false;
    });
    if (rounded) {
      a.xq = xq.data_ptr<int16_t>();
      a.xq_scale = xs.data_ptr<float>();
      a.xq_ld = ld;
      at::Tensor x_bytes;
      if (isa == Isa::Amx && m >= kAmxW8Rows) {
        const int64_t rows = amx_w8_x_rows(m), steps = (k + kAmxW8Step - 1) / kAmxW8Step;
        const int64_t tiles = (m + rows - 1) / rows;
        x_bytes = at::empty({tiles * steps * 2 * rows * kAmxW8Step}, x.options().dtype(at::kChar));
        at::parallel_for(0, tiles, std::max<int64_t>(1, grain / rows), [&](int64_t t0, int64_t t1) {
          split_x_bytes_amx(a.xq, ld, m, k, t0, t1, x_bytes.data_ptr<int8_t>());
        });
        a.x_bytes = x_bytes.data_ptr<int8_t>();
        a.x_bytes_steps = steps;
      }
      for_each_tile(m, h.n, h.k, [&](int64_t m0, int64_t m1, int64_t p) { w8_tile(isa, a, m0, m1, p); });
      return out;
    }
  }
  // float32 copy of x in the kernels' row-block layout (see W8Args).
  const int64_t rows = x_block_rows(m), blocks = (m + rows - 1) / rows;
  at::Tensor xb = at::empty({blocks * rows * k}, x.options().dtype(at::kFloat));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "int8_w8_linear", [&] {
    const scalar_t* src = x.data_ptr<scalar_t>();
    const int64_t s0 = x.stride(0), s1 = x.stride(1);
    float* dst = xb.data_ptr<float>();
    at::parallel_for(0, blocks, std::max<int64_t>(1, (1 << 14) / k), [&](int64_t b0, int64_t b1) {
      for (int64_t blk = b0; blk < b1; ++blk)
        for (int64_t r = 0; r < rows; ++r) {
          const int64_t row = blk * rows + r;
          float* out = dst + blk * k * rows + r;
          for (int64_t c = 0; c < k; ++c)
            out[c * rows] = row < m ? static_cast<float>(src[row * s0 + c * s1]) : 0.f;
        }
    });
  });
  a.x = xb.data_ptr<float>();
  a.x_rows = rows;
  for_each_tile(m, h.n, h.k, [&](int64_t m0, int64_t m1, int64_t p) { w8_tile(isa, a, m0, m1, p); });
  return out;
}

}  // namespace
}  // namespace llmkern::int8

// Schemas: csrc/schemas.cpp.
TORCH_LIBRARY_IMPL(llmkern_C, CPU, m) {
  using namespace llmkern::int8;
  m.impl("int8_pack_w8a8", &pack_w8a8_op);
  m.impl("int8_pack_w8", &pack_w8_op);
  m.impl("int8_quantize_per_token", &quantize_per_token_op);
  m.impl("int8_w8a8_gemm", &w8a8_gemm_op);
  m.impl("int8_w8a8_linear", &w8a8_linear_op);
  m.impl("int8_w8_linear", &w8_linear_op);
}
