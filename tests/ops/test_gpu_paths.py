"""No silent slow paths and no hidden waits on a GPU:

- automatic selection on CUDA tensors lands on the pure-PyTorch reference only with a one-time
  warning naming the op, and every op has a GPU kernel (triton, and cuda when built);
- per-call value checks run on CPU tensors always, on GPU tensors only with
  LLMKERN_DEBUG_CHECKS=1; unchecked bad values never make a GPU kernel read out of bounds, they
  give NaN (shown here with the Triton kernels under the interpreter and with the reference);
- on a GPU (``gpu``): module forwards and the KD ops, forward and backward, run without one host
  synchronisation (torch.cuda.set_sync_debug_mode("error") turns any into an error).
"""

import math
import types
import warnings

import pytest
import torch

from llmkern import _ext, backends
from llmkern.ops._checks import values_checked
from llmkern.ops.kd import kd_loss_rows_ref, kd_loss_topk_rows_ref


@pytest.fixture
def probe_op():
    """A throw-away op name, removed from the registry and the warned set afterwards."""
    yield "_probe_gpu_paths"
    backends._REGISTRY.pop("_probe_gpu_paths", None)
    backends._WARNED_REFERENCE.discard("_probe_gpu_paths")


def test_reference_on_cuda_warns_once_naming_the_op(probe_op):
    backends.register(probe_op, "reference", ("cpu", "cuda"))(lambda x: x)
    with pytest.warns(backends.ReferenceOnGPUWarning, match=probe_op) as record:
        assert backends.select(probe_op, "cuda", (1,)).backend == "reference"
    assert "triton: no kernel" in str(record[0].message)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a second warning would raise
        assert backends.select(probe_op, "cuda", (1,)).backend == "reference"
        assert backends.select(probe_op, "cpu", (1,)).backend == "reference"  # CPU: no warning


def test_reference_on_cuda_names_why_the_gpu_kernels_declined(probe_op):
    backends.register(probe_op, "reference", ("cpu", "cuda"))(lambda x: x)
    backends.register(probe_op, "triton", ("cpu", "cuda"), supports=lambda x: x > 0,
                      why="x must be > 0")(lambda x: x)  # fmt: skip
    with pytest.warns(backends.ReferenceOnGPUWarning, match="x must be > 0"):
        assert backends.select(probe_op, "cuda", (-1,)).backend == "reference"


def test_native_reference_does_not_warn(probe_op):
    backends.register(probe_op, "reference", ("cpu", "cuda"), native=True)(lambda x: x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert backends.select(probe_op, "cuda", (1,)).backend == "reference"


def test_every_op_has_a_gpu_kernel():
    """Only ops whose reference is their GPU implementation (native) lack a GPU kernel."""
    cuda_built = _ext.available() and _ext._C.built_with_cuda()
    for op in backends.registered_ops():
        table = backends.kernels(op)
        if table["reference"].native:
            continue
        assert "cuda" in table["triton"].devices, op
        if cuda_built:
            assert "cuda" in table["cuda"].devices, op


def test_value_checks_run_where_they_cost_nothing(monkeypatch):
    on_gpu = types.SimpleNamespace(device=torch.device("cuda", 0))  # no tensor needed
    monkeypatch.delenv("LLMKERN_DEBUG_CHECKS", raising=False)
    assert values_checked(torch.ones(1)) and not values_checked(on_gpu)
    assert not values_checked(torch.ones(1, device="meta"))
    monkeypatch.setenv("LLMKERN_DEBUG_CHECKS", "1")
    assert values_checked(torch.ones(1)) and values_checked(on_gpu)
    monkeypatch.setenv("LLMKERN_DEBUG_CHECKS", "0")
    assert not values_checked(on_gpu)


# ---------------------------------------------------------------------------------------------
# Unchecked bad values (what a GPU run without LLMKERN_DEBUG_CHECKS gets): NaN, no stray reads
# ---------------------------------------------------------------------------------------------


def _kd_rows_backends():
    found = [pytest.param(kd_loss_rows_ref, kd_loss_topk_rows_ref, id="reference")]
    if backends.backend_available("triton", "cpu")[0]:
        from llmkern.triton.kernels import kd

        found.append(pytest.param(kd.kd_loss_rows, kd.kd_loss_topk_rows, id="triton"))
    return found


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the interpreter's numpy on NaN
@pytest.mark.parametrize("rows_fn,topk_fn", _kd_rows_backends())
def test_unchecked_bad_labels_give_nan_rows(rows_fn, topk_fn):
    n, v = 6, 150
    student, teacher = torch.randn(n, v) * 2, torch.randn(n, v) * 2
    labels = torch.randint(0, v, (n,))
    labels[1], labels[3], labels[4] = -100, v, -7  # ignored, one past the end, negative
    for divergence in ("kl", "jsd"):
        rows, grad = rows_fn(student, teacher, labels, 2.0, 0.4, -100, divergence, 0.5, True)
        good = torch.tensor([0, 2, 5])
        ref_rows, ref_grad = kd_loss_rows_ref(
            student[good], teacher[good], labels[good], 2.0, 0.4, -100, divergence, 0.5, True
        )
        torch.testing.assert_close(rows[good], ref_rows, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(grad[good], ref_grad, rtol=1e-4, atol=1e-5)
        assert rows[1] == 0 and not grad[1].any()  # ignored row
        assert rows[[3, 4]].isnan().all() and grad[[3, 4]].isnan().all()
    idx = torch.randint(0, v, (n, 8))
    idx[2, 5] = v + 3  # a bad top-k index: that row's loss is NaN
    logprobs = torch.randn(n, 8).log_softmax(1)
    rows, _ = topk_fn(student, idx, logprobs, None, 1.0, 0.5, -100, True)
    assert rows[2].isnan() and torch.isfinite(rows[[0, 1, 3, 4, 5]]).all()


def test_kd_mean_needs_no_host_value(monkeypatch):
    """The fused-linear KD mean divides by the number of counted rows as a tensor (no int())."""
    from llmkern.ops.kd import _mean_scale

    labels = torch.tensor([3, -100, 1, -100])
    scale = _mean_scale(labels, 4, -100)
    assert isinstance(scale, torch.Tensor) and scale.item() == 0.5
    assert _mean_scale(torch.full((3,), -100), 3, -100).item() == 1.0  # none counted: / 1
    assert math.isclose(_mean_scale(None, 4, -100), 0.25)


# ---------------------------------------------------------------------------------------------
# GPU: no host synchronisation per call
# ---------------------------------------------------------------------------------------------


def _gpu_calls():
    """(name, call) pairs: module forwards (and backwards where they train) and the KD ops."""
    import llmkern
    from llmkern.nn import (
        FusedLinearKDLoss,
        Int8Linear,
        Int8LinearQAT,
        Int8WeightOnlyLinear,
        KDLoss,
        Sparse24Linear,
    )

    dev, bf16 = "cuda", torch.bfloat16
    lin = torch.nn.Linear(512, 256, device=dev)
    lin_bf16 = torch.nn.Linear(512, 256, device=dev, dtype=bf16)
    x = torch.randn(8, 512, device=dev, dtype=bf16)
    modules = [
        ("Int8Linear dynamic", Int8Linear.from_float(lin)),
        ("Int8Linear static", Int8Linear.from_float(lin, input_scale=0.03)),
        ("Int8WeightOnlyLinear", Int8WeightOnlyLinear.from_float(lin, group_size=128)),
        ("Sparse24Linear bf16", Sparse24Linear.from_float(lin_bf16)),
        ("Sparse24Linear w8", Sparse24Linear.from_float(lin, int8="w8")),
        ("Sparse24Linear w8a8", Sparse24Linear.from_float(lin, int8="w8a8")),
    ]
    out = [(name, lambda m=m: m(x)) for name, m in modules]
    qat = Int8LinearQAT.from_float(lin)
    out.append(("Int8LinearQAT fwd+bwd", lambda: qat(x.float()).sum().backward()))
    v = 1000
    zs = torch.randn(16, v, device=dev, dtype=bf16, requires_grad=True)
    zt = torch.randn(16, v, device=dev, dtype=bf16)
    labels = torch.randint(0, v, (16,), device=dev)
    labels[3] = -100
    kd = KDLoss(temperature=2.0, alpha=0.5)
    out.append(("KDLoss fwd+bwd", lambda: kd(zs, zt, labels).backward()))
    top = zt.float().log_softmax(1).topk(32, dim=1)
    out.append(("kd_loss_topk fwd+bwd",
                lambda: llmkern.kd_loss_topk(zs, top.indices, top.values, labels).backward()))  # fmt: skip
    hs = torch.randn(16, 64, device=dev, requires_grad=True)
    ws = torch.randn(v, 64, device=dev, requires_grad=True)
    ht, wt = torch.randn(16, 96, device=dev), torch.randn(v, 96, device=dev)
    fused = FusedLinearKDLoss(temperature=2.0, chunk_size=5)
    out.append(("FusedLinearKDLoss fwd+bwd", lambda: fused(hs, ws, ht, wt, labels).backward()))
    return out


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_gpu_forward_and_kd_ops_never_synchronise(backend, monkeypatch):
    if not backends.backend_available(backend, "cuda")[0]:
        pytest.skip(f"{backend} backend unavailable")
    calls = _gpu_calls()  # built first: weight conversions use ops that only the reference has
    monkeypatch.setenv("LLMKERN_BACKEND", backend)
    monkeypatch.delenv("LLMKERN_DEBUG_CHECKS", raising=False)
    for name, call in calls:
        call()  # warm-up: compilation, autotuning and weight conversions may synchronise
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            call()
        except RuntimeError as exc:
            raise AssertionError(f"{name} ({backend}) synchronised with the host: {exc}") from exc
        finally:
            torch.cuda.set_sync_debug_mode(0)
