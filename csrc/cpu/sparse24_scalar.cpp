// Portable 2:4 kernels: the readable statement of what the SIMD variants compute.
#include <cstdint>
#include <cstring>

#include "cpu/sparse24_kernels.h"

namespace llmkern::sparse24 {
namespace {

float bf16_to_float(uint16_t h) {
  const uint32_t bits = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

float f16_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000) << 16;
  uint32_t exp = (h >> 10) & 0x1F;
  uint32_t mant = h & 0x3FF;
  uint32_t bits;
  if (exp == 0x1F) {
    bits = sign | 0x7F800000u | (mant << 13);  // inf / nan
  } else if (exp != 0) {
    bits = sign | ((exp + 112) << 23) | (mant << 13);
  } else if (mant == 0) {
    bits = sign;
  } else {  // subnormal: normalise
    exp = 113;
    while ((mant & 0x400) == 0) {
      mant <<= 1;
      --exp;
    }
    bits = sign | (exp << 23) | ((mant & 0x3FF) << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

template <typename S, float (*Cvt)(S)>
void float_rows(const Args& a, int64_t n0, int64_t n1) {
  const int64_t half = a.k / 2, mb = meta_bytes(a.k), groups = a.k / 4;
  const float* x = static_cast<const float*>(a.x);
  float* raw = static_cast<float*>(a.raw);
  for (int64_t n = n0; n < n1; ++n) {
    const S* v = static_cast<const S*>(a.values) + n * half;
    const uint8_t* meta = a.meta + n * mb;
    for (int64_t i = 0; i < a.m; ++i) {
      const float* xr = x + i * a.ldx;
      float acc = 0.f;
      for (int64_t g = 0; g < groups; ++g) {
        const int code = (meta[g >> 1] >> (4 * (g & 1))) & 0xF;
        acc += Cvt(v[2 * g]) * xr[4 * g + (code & 3)];
        acc += Cvt(v[2 * g + 1]) * xr[4 * g + (code >> 2)];
      }
      raw[i * a.ldr + n] = acc;
    }
  }
}

float f32_id(float v) { return v; }
float i8_to_float(int8_t v) { return static_cast<float>(v); }

}  // namespace

void float_rows_scalar(ValueType vt, const Args& a, int64_t n0, int64_t n1) {
  switch (vt) {
    case ValueType::F32: float_rows<float, f32_id>(a, n0, n1); break;
    case ValueType::BF16: float_rows<uint16_t, bf16_to_float>(a, n0, n1); break;
    case ValueType::F16: float_rows<uint16_t, f16_to_float>(a, n0, n1); break;
    case ValueType::I8: float_rows<int8_t, i8_to_float>(a, n0, n1); break;
  }
}

void int_rows_scalar(const Args& a, int64_t n0, int64_t n1) {
  const int64_t half = a.k / 2, mb = meta_bytes(a.k), groups = a.k / 4;
  const int8_t* x = static_cast<const int8_t*>(a.x);
  int32_t* raw = static_cast<int32_t*>(a.raw);
  for (int64_t n = n0; n < n1; ++n) {
    const int8_t* v = static_cast<const int8_t*>(a.values) + n * half;
    const uint8_t* meta = a.meta + n * mb;
    for (int64_t i = 0; i < a.m; ++i) {
      const int8_t* xr = x + i * a.ldx;
      int32_t acc = 0;
      for (int64_t g = 0; g < groups; ++g) {
        const int code = (meta[g >> 1] >> (4 * (g & 1))) & 0xF;
        acc += int32_t{v[2 * g]} * xr[4 * g + (code & 3)];
        acc += int32_t{v[2 * g + 1]} * xr[4 * g + (code >> 2)];
      }
      raw[i * a.ldr + n] = acc;
    }
  }
}

}  // namespace llmkern::sparse24
