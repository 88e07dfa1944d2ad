// Torch glue of the 2:4 sparse CUDA kernels (csrc/cuda/sparse24.cu): the CUDA kernels of
// llmkern_C::sparse24_matmul (the gemv kernel, canonical compressed weight), sparse24_mma and
// sparse24_mma_s8 (schemas in csrc/schemas.cpp), called by llmkern/cuda/sparse24.py, which has
// validated the user-facing arguments, built the mma.sp layout and aligned x. The checks here
// are internal invariants that keep the kernels in bounds.
#ifdef LLMKERN_WITH_CUDA

// Only c10's CUDA headers: ATen/cuda/CUDAContext.h pulls in cuSPARSE, cuBLAS and cuSOLVER
// headers, which a CUDA toolkit may lack (pip's CUDA torch ships them in separate packages).
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <optional>

#include "cuda/sparse24.cuh"
#include "cuda/torch_glue.h"

namespace {

namespace sp = llmkern::sparse24;

sp::DType dtype_of(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return sp::DType::kFloat32;
    case at::kHalf: return sp::DType::kFloat16;
    case at::kBFloat16: return sp::DType::kBFloat16;
    case at::kChar: return sp::DType::kInt8;
    default: TORCH_CHECK(false, "sparse24 CUDA: unsupported dtype ", t);
  }
}

void check_device(const at::Tensor& t, const at::Tensor& x, const char* name) {
  TORCH_CHECK(t.is_cuda() && t.device() == x.device(), "sparse24 CUDA: ", name,
              " must be on x's device");
  TORCH_CHECK(t.is_contiguous(), "sparse24 CUDA: ", name, " must be contiguous");
}

const float* vector_ptr(const std::optional<at::Tensor>& t, const at::Tensor& x, int64_t n,
                        const char* name) {
  if (!t.has_value()) return nullptr;
  check_device(*t, x, name);
  TORCH_CHECK(t->scalar_type() == at::kFloat && t->dim() == 1 && t->size(0) == n,
              "sparse24 CUDA: ", name, " must be float32 [", n, "]");
  return t->data_ptr<float>();
}

void check_sm80(const at::Tensor& x) {
  int major = 0, minor = 0;
  llmkern::cuda::check(
      cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, x.get_device()),
      "sparse24 CUDA: compute capability");
  llmkern::cuda::check(
      cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, x.get_device()),
      "sparse24 CUDA: compute capability");
  TORCH_CHECK(major >= 8, "sparse24 CUDA: needs compute capability 8.0 or newer, got ", major,
              ".", minor);
}

void check_launch(cudaError_t err, const char* op) {
  TORCH_CHECK(err == cudaSuccess, "sparse24 CUDA: ", op, " failed: ", cudaGetErrorString(err));
}

// x [m, k] float; canonical values [n, k/2] (x's dtype or int8), meta [n, ceil(k/8)].
at::Tensor sparse24_gemv_cuda(const at::Tensor& x, const at::Tensor& values,
                              const at::Tensor& meta, const std::optional<at::Tensor>& w_scale,
                              const std::optional<at::Tensor>& bias) {
  TORCH_CHECK(x.is_cuda() && x.dim() == 2 && x.is_contiguous(), "x: contiguous 2-D CUDA");
  check_device(values, x, "values");
  check_device(meta, x, "meta");
  const int64_t m = x.size(0), k = x.size(1), n = values.size(0);
  TORCH_CHECK(k % 4 == 0 && values.dim() == 2 && values.size(1) * 2 == k, "values: [n, k/2]");
  TORCH_CHECK(meta.scalar_type() == at::kByte && meta.dim() == 2 && meta.size(0) == n &&
                  meta.size(1) == (k + 7) / 8,
              "meta: uint8 [n, ceil(k/8)]");
  TORCH_CHECK(values.scalar_type() == x.scalar_type() || values.scalar_type() == at::kChar,
              "values: x's dtype or int8");
  c10::cuda::CUDAGuard guard(x.device());
  auto out = at::empty({m, n}, x.options());
  sp::GemvArgs a{};
  a.x = x.data_ptr();
  a.ldx = k;
  a.values = values.data_ptr();
  a.meta = meta.data_ptr<uint8_t>();
  a.m = static_cast<int>(m);
  a.n = static_cast<int>(n);
  a.k = static_cast<int>(k);
  a.w_scale = vector_ptr(w_scale, x, n, "w_scale");
  a.bias = vector_ptr(bias, x, n, "bias");
  a.out = out.data_ptr();
  a.ldo = n;
  check_launch(sp::launch_gemv(dtype_of(x.scalar_type()), dtype_of(values.scalar_type()), a,
                               c10::cuda::getCurrentCUDAStream()),
               "sparse24_gemv_cuda");
  return out;
}

// Shared checks of the mma.sp-layout weight: values [n_pad/16, k_pad/tile_k, 32, lane_elems],
// meta uint8 [n_pad/16, k_pad/tile_k, meta_bytes]; x rows 16-byte aligned with >= k columns.
sp::MmaArgs mma_args(const at::Tensor& x, const at::Tensor& values, const at::Tensor& meta,
                     int64_t n, int64_t k, int tile_k, int64_t lane_elems, int64_t meta_bytes) {
  TORCH_CHECK(x.is_cuda() && x.dim() == 2 && x.stride(1) == 1, "x: 2-D CUDA, unit column stride");
  check_device(values, x, "values");
  check_device(meta, x, "meta");
  check_sm80(x);
  const int64_t n_pad = (n + sp::kRowPad - 1) / sp::kRowPad * sp::kRowPad;
  const int64_t k_pad = (k + sp::kKPad - 1) / sp::kKPad * sp::kKPad;
  TORCH_CHECK(values.dim() == 4 && values.size(0) * 16 == n_pad &&
                  values.size(1) * tile_k == k_pad && values.size(2) == 32 &&
                  values.size(3) == lane_elems,
              "values: mma.sp layout of an [", n, ", ", k, "] weight");
  TORCH_CHECK(meta.scalar_type() == at::kByte && meta.dim() == 3 &&
                  meta.size(0) == values.size(0) && meta.size(1) == values.size(1) &&
                  meta.size(2) == meta_bytes,
              "meta: mma.sp layout");
  // The kernel copies x in 16-byte pieces: the piece holding column k - 1 may run past k,
  // into columns the caller has zero-padded (llmkern/cuda/sparse24.py: _rows_16b_aligned).
  const int64_t elem = x.element_size(), per16 = 16 / elem;
  TORCH_CHECK(x.size(1) >= (k + per16 - 1) / per16 * per16 && (x.stride(0) * elem) % 16 == 0 &&
                  reinterpret_cast<uintptr_t>(x.data_ptr()) % 16 == 0,
              "x: 16-byte aligned rows, zero-padded to a multiple of 16 bytes past k");
  sp::MmaArgs a{};
  a.x = x.data_ptr();
  a.ldx = x.stride(0);
  a.values = values.data_ptr();
  a.meta = meta.data_ptr<uint8_t>();
  a.m = static_cast<int>(x.size(0));
  a.n = static_cast<int>(n);
  a.k = static_cast<int>(k);
  a.k_pad = static_cast<int>(k_pad);
  return a;
}

// x fp16/bf16 [m, >= k]; weight (x's dtype or int8) in the m16n8k32 layout.
at::Tensor sparse24_mma_cuda(const at::Tensor& x, const at::Tensor& values,
                             const at::Tensor& meta, int64_t n, int64_t k,
                             const std::optional<at::Tensor>& w_scale,
                             const std::optional<at::Tensor>& bias) {
  TORCH_CHECK(x.scalar_type() == at::kHalf || x.scalar_type() == at::kBFloat16,
              "x: float16 or bfloat16");
  TORCH_CHECK(values.scalar_type() == x.scalar_type() || values.scalar_type() == at::kChar,
              "values: x's dtype or int8");
  c10::cuda::CUDAGuard guard(x.device());
  sp::MmaArgs a = mma_args(x, values, meta, n, k, 32, 8, 64);
  auto out = at::empty({x.size(0), n}, x.options());
  a.w_scale = vector_ptr(w_scale, x, n, "w_scale");
  a.bias = vector_ptr(bias, x, n, "bias");
  a.out = out.data_ptr();
  a.ldo = n;
  check_launch(sp::launch_mma16(dtype_of(x.scalar_type()), dtype_of(values.scalar_type()), a,
                                c10::cuda::getCurrentCUDAStream()),
               "sparse24_mma_cuda");
  return out;
}

// x int8 [m, >= k]; int8 weight in the m16n8k64 layout; W8A8 epilogue in out_dtype.
at::Tensor sparse24_mma_s8_cuda(const at::Tensor& x, const at::Tensor& values,
                                const at::Tensor& meta, int64_t n, int64_t k,
                                const at::Tensor& x_scale, const at::Tensor& w_scale,
                                const std::optional<at::Tensor>& bias, at::ScalarType out_dtype) {
  TORCH_CHECK(x.scalar_type() == at::kChar && values.scalar_type() == at::kChar,
              "x and values: int8");
  TORCH_CHECK(out_dtype == at::kFloat || out_dtype == at::kHalf || out_dtype == at::kBFloat16,
              "out_dtype: float32, float16 or bfloat16");
  c10::cuda::CUDAGuard guard(x.device());
  sp::MmaArgs a = mma_args(x, values, meta, n, k, 64, 16, 128);
  auto out = at::empty({x.size(0), n}, x.options().dtype(out_dtype));
  a.x_scale = vector_ptr(x_scale, x, x.size(0), "x_scale");
  a.w_scale = vector_ptr(w_scale, x, n, "w_scale");
  a.bias = vector_ptr(bias, x, n, "bias");
  a.out = out.data_ptr();
  a.ldo = n;
  check_launch(sp::launch_mma_s8(dtype_of(out_dtype), a, c10::cuda::getCurrentCUDAStream()),
               "sparse24_mma_s8_cuda");
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(llmkern_C, CUDA, m) {
  m.impl("sparse24_matmul", &sparse24_gemv_cuda);
  m.impl("sparse24_mma", &sparse24_mma_cuda);
  m.impl("sparse24_mma_s8", &sparse24_mma_s8_cuda);
}

#endif  // LLMKERN_WITH_CUDA
