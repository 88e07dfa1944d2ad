// The part of torch that the op glue files use: tensors and their methods, at::empty(_like),
// at::parallel_for, the dtype dispatch macros and op registration. Not <torch/extension.h>: it
// pulls in all of libtorch's C++ API and pybind11, about 60 s of compile per glue file (14 s
// with this header).
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>
