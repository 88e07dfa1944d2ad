#!/usr/bin/env bash
# GPU-stack step: the software of the lent GPU machine (torch 2.11.0, the CUDA 13.0 build, and
# triton 3.6.0; Python 3.12 and transformers 5.x there, this machine's Python here), checked
# without a GPU, in a venv of its own and a throw-away copy of the tree (llmkern not installed,
# run from the tree, as bench/gpu_check.py runs there):
#   1. the full CUDA extension built with nvcc for sm_80 and sm_90, imported, every CUDA op there;
#   2. every Triton kernel variant compiled for sm_80 and sm_90 (its first autotune configuration;
#      `python -m llmkern.triton.kernels.compile_check --all-configs` compiles all of them);
#   3. the Triton tests, and the GPU-path tests, under TRITON_INTERPRET=1;
#   4. bench/gpu_check.py: --dry-run, its tests, and its GPU test run collected without errors.
#
#   bash .ci/gpu-stack.sh              (LLMKERN_GPU_STACK_KEEP=1 keeps the copy)
#   bash .ci/gpu-stack.sh --venv-only  (only makes the venv: .ci/run downloads it in the background)
#
# The venv is kept in the cache folder between runs (pip makes it match the pins below, from
# pip's cache; the first run downloads about 3 GB). MAX_JOBS (default 2) bounds the compilers.
set -euo pipefail
cd "$(dirname "$0")/.."
t0=$(date +%s)
stage() { echo "--- $1 ($(($(date +%s) - t0))s)"; }

# numpy < 2.4: triton 3.6's interpreter converts scalar arguments with int() of a one-element
# array, which numpy 2.4 refuses (llmkern.triton.kernels.common.check_interpreter says so).
# transformers 5.17: the GPU machine's; gensim and the MiniLM package are absent there, as here.
PINS=(torch==2.11.0 triton==3.6.0 "numpy<2.4" transformers==5.17.0 safetensors pytest hypothesis
  ninja setuptools wheel pybind11 tqdm)
venv="${LLMKERN_GPU_STACK_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/llmkern-ci/venv-torch2.11-cu130}"

stage "venv $venv"
[ -x "$venv/bin/python" ] || python -m venv "$venv"
py="$venv/bin/python"
# (pip's log goes to a file: this machine's pip configuration warns once per package)
"$py" -m pip install -q "${PINS[@]}" >"$venv/pip.log" 2>&1 || {
  grep -v "is ignored: it is neither" "$venv/pip.log" | tail -30
  exit 1
}
"$py" - <<'PY'
import torch, triton
assert torch.__version__.startswith("2.11.0") and torch.version.cuda == "13.0", torch.__version__
assert triton.__version__ == "3.6.0", triton.__version__
print(f"    torch {torch.__version__} (CUDA {torch.version.cuda}), triton {triton.__version__}")
PY
if [ "${1:-}" = "--venv-only" ]; then stage "venv ready"; exit 0; fi

work=$(mktemp -d "${TMPDIR:-/tmp}/llmkern-gpu-stack.XXXXXX")
if [ -z "${LLMKERN_GPU_STACK_KEEP:-}" ]; then trap 'rm -rf "$work"' EXIT; fi
git ls-files -z --cached --others --exclude-standard | tar --null --ignore-failed-read -T - -cf - | tar -xf - -C "$work"
cd "$work"
export PYTHONPATH="$work" PYTHONUNBUFFERED=1

stage "build: the full CUDA extension for sm_80 and sm_90 (MAX_JOBS=${MAX_JOBS:-2})"
LLMKERN_FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST="8.0;9.0" MAX_JOBS="${MAX_JOBS:-2}" \
  "$py" setup.py build_ext --inplace >build.log 2>&1 || { tail -60 build.log; exit 1; }
"$py" - <<'PY'
import torch
from llmkern import _ext, backends

assert _ext.available(), f"llmkern._C failed to load: {_ext.load_error}"
assert _ext._C.built_with_cuda(), "llmkern._C was built without CUDA"
# The llmkern_C ops with a CUDA kernel (csrc/schemas.cpp declares them all in any build).
want = {"int8_quantize_per_token", "int8_w8a8_gemm", "int8_w8a8_linear", "int8_w8_linear",
        "kd_loss_rows", "kd_loss_topk_rows", "sparse24_matmul", "sparse24_mma",
        "sparse24_mma_s8"}
have = set(_ext.native_ops("CUDA"))
assert have == want, f"CUDA kernels: missing {sorted(want - have)}, unexpected {sorted(have - want)}"
cpu = set(_ext.native_ops("CPU"))
assert cpu and not any(n.endswith("_cuda") for n in have | cpu), sorted(have | cpu)
missing = [op for op in backends.registered_ops()
           if not backends.kernels(op)["reference"].native and "cuda" not in backends.kernels(op)]
assert not missing, f"ops without a cuda backend: {missing}"
print(f"    llmkern._C imported with {len(have)} CUDA ops; cpu ISA {_ext._C.detected_isa()}")
PY

stage "Triton: every kernel variant compiled for sm_80 and sm_90"
"$py" -m llmkern.triton.kernels.compile_check >compile_check.log 2>&1 || {
  grep -E "FAILED|Error" compile_check.log | head -40
  exit 1
}
echo "    $(grep -c regs compile_check.log) compiles, none failed"

stage "Triton tests under the interpreter"
TRITON_INTERPRET=1 "$py" -m pytest -q -p no:cacheprovider tests/triton/test_int8.py \
  tests/triton/test_sparse24.py tests/triton/test_kd.py tests/ops/test_gpu_paths.py \
  tests/ops/test_backends.py

stage "bench/gpu_check.py as on the GPU machine"
"$py" bench/gpu_check.py --dry-run >/dev/null
"$py" -m pytest -q -p no:cacheprovider tests/apps/test_gpu_check.py
# What gpu_check's test step collects there (no GPU here, so only collection is checked).
LLMKERN_TEST_GPU=1 "$py" -m pytest -q -p no:cacheprovider --collect-only -m gpu tests >collect.log 2>&1 || {
  tail -40 collect.log
  exit 1
}
echo "    $(tail -1 collect.log)"
stage "done"
