// Portable INT8 kernels (no SIMD) and the weight packing shared by every ISA path.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "cpu/int8_kernels.h"

namespace llmkern::int8 {
namespace {

float load_float(const void* base, DType dtype, int64_t i) {
  switch (dtype) {
    case DType::F32: return static_cast<const float*>(base)[i];
    case DType::BF16: {
      const uint32_t bits = static_cast<uint32_t>(static_cast<const uint16_t*>(base)[i]) << 16;
      float f;
      std::memcpy(&f, &bits, 4);
      return f;
    }
    case DType::F16: return static_cast<float>(static_cast<const _Float16*>(base)[i]);
  }
  return 0.f;
}

// Round to nearest even, NaN -> 0x7FC0: the conversion torch uses for float -> bfloat16.
uint16_t float_to_bf16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return 0x7fc0;
  return static_cast<uint16_t>((bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16);
}

void store_float(void* base, DType dtype, int64_t i, float v) {
  switch (dtype) {
    case DType::F32: static_cast<float*>(base)[i] = v; break;
    case DType::BF16: static_cast<uint16_t*>(base)[i] = float_to_bf16(v); break;
    case DType::F16: static_cast<_Float16*>(base)[i] = static_cast<_Float16>(v); break;
  }
}

void store_q(void* base, ActFormat fmt, int64_t i, int32_t q) {
  switch (fmt) {
    case ActFormat::S8: static_cast<int8_t*>(base)[i] = static_cast<int8_t>(q); break;
    case ActFormat::U8: static_cast<uint8_t*>(base)[i] = static_cast<uint8_t>(q + 128); break;
    case ActFormat::S16: static_cast<int16_t*>(base)[i] = static_cast<int16_t>(q); break;
  }
}

int32_t load_a(const void* base, ActFormat fmt, int64_t i) {
  switch (fmt) {
    case ActFormat::S8: return static_cast<const int8_t*>(base)[i];
    case ActFormat::U8: return static_cast<int32_t>(static_cast<const uint8_t*>(base)[i]) - 128;
    case ActFormat::S16: return static_cast<const int16_t*>(base)[i];
  }
  return 0;
}

}  // namespace

int64_t w8a8_packed_bytes(int64_t n, int64_t k) {
  const int64_t n_pad = round_up(n, kLane);
  return kHeaderBytes + round_up(n_pad * round_up(k, 4), 64) + n_pad * 4;
}

void pack_w8a8_header(int64_t n, int64_t k, bool w_has_min, uint8_t* dst) {
  const int64_t aux = kHeaderBytes + round_up(round_up(n, kLane) * round_up(k, 4), 64);
  const PackedHeader h{kMagic, kKindW8A8, n, k, 0, 0, aux, w8a8_packed_bytes(n, k), w_has_min};
  std::memset(dst, 0, h.nbytes);
  std::memcpy(dst, &h, sizeof(h));
}

void pack_w8a8_panels(const int8_t* w, uint8_t* dst, int64_t p0, int64_t p1) {
  PackedHeader h;
  std::memcpy(&h, dst, sizeof(h));
  const int64_t n = h.n, k = h.k, kp = round_up(k, 4), n_pad = round_up(n, kLane);
  int32_t* comp = reinterpret_cast<int32_t*>(dst + h.aux_offset);
  for (int64_t p = p0; p < p1; ++p) {
    const int64_t n0 = p * kPanel, width = std::min(kPanel, n_pad - n0);
    const int64_t rows = std::min(width, n - n0);  // padding channels stay zero
    int8_t* panel = reinterpret_cast<int8_t*>(dst + kHeaderBytes) + n0 * kp;
    // Transposed in 256-column blocks so that reads and writes both stay within L1.
    for (int64_t c0 = 0; c0 < k; c0 += 256)
      for (int64_t j = 0; j < rows; ++j) {
        const int8_t* row = w + (n0 + j) * k;
        const int64_t c1 = std::min(k, c0 + 256), full = c0 + (c1 - c0) / 4 * 4;
        for (int64_t c = c0; c < full; c += 4) std::memcpy(panel + c * width + j * 4, row + c, 4);
        for (int64_t c = full; c < c1; ++c) panel[(c / 4 * width + j) * 4 + c % 4] = row[c];
      }
    for (int64_t j = 0; j < rows; ++j) {
      int32_t sum = 0;
      for (int64_t c = 0; c < k; ++c) sum += w[(n0 + j) * k + c];
      comp[n0 + j] = 128 * sum;
    }
  }
}

int64_t w8_packed_bytes(int64_t n, int64_t k, int64_t groups) {
  const int64_t n_pad = round_up(n, kLane);
  return kHeaderBytes + round_up(n_pad * k, 64) + n_pad * groups * 4;
}

void pack_w8_header(int64_t n, int64_t k, int64_t group_size, uint8_t* dst) {
  // group_size 0 means one scale per channel, i.e. a single group spanning K.
  const int64_t gs = group_size == 0 ? k : group_size;
  const int64_t groups = (k + gs - 1) / gs;
  const int64_t aux = kHeaderBytes + round_up(round_up(n, kLane) * k, 64);
  const PackedHeader h{kMagic, kKindW8, n, k, gs, groups, aux, w8_packed_bytes(n, k, groups), 0};
  std::memset(dst, 0, h.nbytes);
  std::memcpy(dst, &h, sizeof(h));
}

void pack_w8_panels(const int8_t* w, const float* scale, uint8_t* dst, int64_t p0, int64_t p1) {
  PackedHeader h;
  std::memcpy(&h, dst, sizeof(h));
  const int64_t n = h.n, k = h.k, groups = h.groups, n_pad = round_up(n, kLane);
  float* scales = reinterpret_cast<float*>(dst + h.aux_offset);
  for (int64_t p = p0; p < p1; ++p) {
    const int64_t n0 = p * kPanel, width = std::min(kPanel, n_pad - n0);
    const int64_t rows = std::min(width, n - n0);
    int8_t* panel = reinterpret_cast<int8_t*>(dst + kHeaderBytes) + n0 * k;
    for (int64_t c0 = 0; c0 < k; c0 += 256)  // blocked transpose, as above
      for (int64_t j = 0; j < rows; ++j) {
        const int8_t* row = w + (n0 + j) * k;
        for (int64_t c = c0; c < std::min(k, c0 + 256); ++c) panel[c * width + j] = row[c];
      }
    float* pscale = scales + n0 * groups;
    for (int64_t g = 0; g < groups; ++g)
      for (int64_t j = 0; j < rows; ++j) pscale[g * width + j] = scale[(n0 + j) * groups + g];
  }
}

void quantize_rows_scalar(const QuantizeArgs& a, int64_t r0, int64_t r1) {
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t base = r * a.ld_x;
    // max of |x| as bits: for non-negative floats the integer order is the float order, and
    // inf/NaN compare above every finite value.
    uint32_t maxbits = 0;
    for (int64_t c = 0; c < a.k; ++c) {
      const float v = load_float(a.x, a.x_dtype, base + c);
      uint32_t bits;
      std::memcpy(&bits, &v, 4);
      maxbits = std::max(maxbits, bits & 0x7fffffffu);
    }
    const bool finite = maxbits < 0x7f800000u;
    float absmax;
    std::memcpy(&absmax, &maxbits, 4);
    float inv, scale;
    row_scale(a, finite, absmax, &inv, &scale);
    a.scale[r] = scale;
    for (int64_t c = 0; c < a.ld_q; ++c) {
      int32_t q = 0;
      if (finite && c < a.k) {
        const float v = std::nearbyint(load_float(a.x, a.x_dtype, base + c) * inv);
        q = static_cast<int32_t>(std::min(127.0f, std::max(-127.0f, v)));
      }
      store_q(a.q, a.q_format, r * a.ld_q + c, q);
    }
  }
}

void w8a8_tile_scalar(const W8a8Args& a, int64_t m0, int64_t m1, int64_t p0, int64_t p1) {
  const int64_t n_pad = round_up(a.n, kLane);
  const ActFormat fmt = ActFormat::S8;
  for (int64_t p = p0; p < p1; ++p) {
    const int64_t n0 = p * kPanel, width = std::min(kPanel, n_pad - n0);
    const int8_t* panel = a.w + n0 * a.kp;
    for (int64_t m = m0; m < m1; ++m) {
      // Unsigned arithmetic wraps like the int32 accumulators of the SIMD paths.
      uint32_t acc[kPanel] = {};
      for (int64_t kk = 0; kk < a.kp / 4; ++kk)
        for (int64_t j = 0; j < width; ++j)
          for (int64_t t = 0; t < 4; ++t)
            acc[j] += static_cast<uint32_t>(load_a(a.a, fmt, m * a.kp + kk * 4 + t) *
                                            panel[(kk * width + j) * 4 + t]);
      for (int64_t j = 0; j < width && n0 + j < a.n; ++j) {
        const int64_t nn = n0 + j;
        float v = static_cast<float>(static_cast<int32_t>(acc[j])) * a.x_scale[m] * a.w_scale[nn];
        if (a.bias) v += a.bias[nn];
        store_float(a.out, a.out_dtype, m * a.ld_out + nn, v);
      }
    }
  }
}

void w8_tile_scalar(const W8Args& a, int64_t m0, int64_t m1, int64_t p0, int64_t p1) {
  const int64_t n_pad = round_up(a.n, kLane);
  for (int64_t p = p0; p < p1; ++p) {
    const int64_t n0 = p * kPanel, width = std::min(kPanel, n_pad - n0);
    const int8_t* panel = a.w + n0 * a.k;
    const float* pscale = a.scales + n0 * a.groups;
    for (int64_t m = m0; m < m1; ++m) {
      float acc[kPanel] = {};
      const float* x = a.x_row(m);
      for (int64_t c = 0; c < a.k; ++c) {
        const float xv = x[c * a.x_rows];
        const float* s = pscale + (c / a.group_size) * width;
        for (int64_t j = 0; j < width; ++j)
          acc[j] += xv * (static_cast<float>(panel[c * width + j]) * s[j]);
      }
      for (int64_t j = 0; j < width && n0 + j < a.n; ++j) {
        const float v = a.bias ? acc[j] + a.bias[n0 + j] : acc[j];
        store_float(a.out, a.out_dtype, m * a.ld_out + n0 + j, v);
      }
    }
  }
}

}  // namespace llmkern::int8
