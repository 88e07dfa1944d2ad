"""torch.library.opcheck of every llmkern custom op, torch.compile(fullgraph=True) of every public
op and module against eager, and torch.export of a small compressed model.

Compiled graphs use the ``aot_eager`` backend (Dynamo tracing + fake kernels + AOT autograd, the
parts llmkern must get right) except one Inductor run of the whole model; each Inductor compile
costs seconds of C++ compilation on CPU.
"""

import pytest
import torch

import llmkern
import llmkern.nn
from llmkern import backends
from llmkern.ops import int8 as int8_ops
from llmkern.ops import kd as kd_ops
from llmkern.ops import sparse24 as s24_ops


def cpu_backends(op):
    names = []
    for name, kernel in sorted(backends.kernels(op).items()):
        if "cpu" in kernel.devices and backends.backend_available(name, "cpu")[0]:
            if name != "triton":  # the interpreter is too slow for opcheck's many calls
                names.append(name)
    return names


def w24(n, k, dtype=torch.float32):
    w = torch.randn(n, k) if dtype != torch.int8 else torch.randint(-127, 128, (n, k)).float()
    return llmkern.prune_24(w.to(dtype), torch.rand(n, k))


def sample_args(op):
    """Positional arguments (without ``backend``) of op ``llmkern::<op>``: odd sizes, a bias."""
    m, n, k = 3, 5, 24
    x = torch.randn(m, k)
    xq = torch.randint(-128, 128, (m, k), dtype=torch.int8)
    wq = torch.randint(-128, 128, (n, k), dtype=torch.int8)
    xs, ws, b = torch.rand(m) / 127 + 1e-3, torch.rand(n) / 127 + 1e-3, torch.randn(n)
    values, meta = s24_ops.compress_24_ref(w24(n, k))
    qvalues, qmeta = s24_ops.compress_24_ref(w24(n, k, torch.int8))
    z, t = torch.randn(4, 11), torch.randn(4, 13)
    labels = torch.tensor([1, -100, 10, 0])
    lp, idx = torch.log_softmax(torch.randn(4, 11), 1).topk(3, dim=1)
    return {
        "quantize_per_token": (x,),
        "w8a8_matmul": (xq, wq, xs, ws, b, torch.bfloat16),
        "w8_matmul": (x, wq, ws, b, 0),
        "compress_24": (w24(n, k),),
        "decompress_24": (values, meta, k),
        "sparse24_matmul": (x, values, meta, b),
        "sparse24_w8a8_matmul": (xq, qvalues, qmeta, xs, ws, b, torch.float32),
        "sparse24_w8_matmul": (x, qvalues, qmeta, ws, None),
        "sparse24_w8a8_linear": (x, qvalues, qmeta, ws, b),
        "kd_loss_rows": (z.requires_grad_(), t, labels, 2.0, 0.5, -100, "kl", 0.5, True),
        "kd_loss_topk_rows": (z.detach().requires_grad_(), idx, lp, labels, 2.0, 0.5, -100, True),
        "w8a8_linear": (x, wq, ws, b, None, None),
        "w8a8_linear/static": (x, wq, ws, b, torch.tensor(0.02), None),
        "w8_linear": (x, wq, ws, None, 0, None),
        "w8_linear/grouped": (x, wq, torch.rand(n, 3) / 127 + 1e-3, b, 8, None),
        "fused_linear_kd_loss": (
            torch.randn(4, 6, requires_grad=True),
            torch.randn(11, 6, requires_grad=True),
            torch.randn(4, 5),
            torch.randn(13, 5),
            labels,
            None,
            2.0,
            0.5,
            -100,
            "kl",
            0.5,
            "mean",
            2,
            True,
            True,
        ),
    }[op]


CUSTOM_OPS = [
    "quantize_per_token", "w8a8_matmul", "w8_matmul", "w8a8_linear", "w8_linear", "compress_24",
    "decompress_24", "sparse24_matmul", "sparse24_w8a8_matmul", "sparse24_w8_matmul",
    "sparse24_w8a8_linear", "kd_loss_rows", "kd_loss_topk_rows", "fused_linear_kd_loss",
]  # fmt: skip
VARIANTS = {"w8a8_linear": ["w8a8_linear/static"], "w8_linear": ["w8_linear/grouped"]}
# The backward of the KD ops scales the saved forward gradient in place (llmkern/ops/kd.py
# _backward_rows / _backward_fused_linear); AOT autograd rejects mutating a graph output, so
# opcheck's test_aot_dispatch_dynamic fails. Reported; strict, so the fix flips it.
INPLACE_BACKWARD = pytest.mark.xfail(
    reason="KD backward mutates the saved output in place (grad.mul_): AOT dispatch rejects it",
    strict=True,
)
# The registry name of a custom op equals its llmkern:: name ("fused_linear_kd_loss" has no
# registry entry of its own: it runs kd_loss_rows kernels, so it is checked with the auto choice).
OPCHECK_CASES = [
    pytest.param(case, b, marks=[INPLACE_BACKWARD] if op.startswith(("kd_", "fused")) else [])
    for op in CUSTOM_OPS
    for case in [op] + VARIANTS.get(op, [])
    for b in [""] + cpu_backends(op)
]


def test_every_custom_op_is_opchecked():
    defined = {
        name
        for name in dir(torch.ops.llmkern)
        if isinstance(getattr(torch.ops.llmkern, name, None), torch._ops.OpOverloadPacket)
    }
    assert defined == set(CUSTOM_OPS), defined ^ set(CUSTOM_OPS)


@pytest.mark.parametrize("op,backend", OPCHECK_CASES, ids=lambda v: v or "auto")
def test_opcheck(op, backend):
    """Schema, fake (meta) implementation, autograd registration and AOT dispatch agree with
    the real kernel of each backend."""
    name = op.split("/")[0]
    torch.library.opcheck(getattr(torch.ops.llmkern, name).default, sample_args(op) + (backend,))


@pytest.mark.parametrize("op", ["kd_loss_rows", "kd_loss_topk_rows", "fused_linear_kd_loss"])
def test_opcheck_kd_without_aot_dispatch(op):
    """Everything opcheck tests except AOT dispatch passes for the KD ops (see INPLACE_BACKWARD)."""
    utils = ("test_schema", "test_autograd_registration", "test_faketensor")
    torch.library.opcheck(getattr(torch.ops.llmkern, op).default, sample_args(op) + ("",),
                          test_utils=utils)  # fmt: skip


def test_opcheck_with_packed_cpu_weights():
    if "cpu" not in cpu_backends("w8a8_linear"):
        pytest.skip("no cpu kernel for w8a8_linear")
    from llmkern.cpu import int8 as cpu_int8

    x, wq, ws, b, _, _ = sample_args("w8a8_linear")
    torch.library.opcheck(torch.ops.llmkern.w8a8_linear.default,
                          (x, wq, ws, b, None, cpu_int8.pack_w8a8(wq), "cpu"))  # fmt: skip
    x, wq, ws, _, g, _ = sample_args("w8_linear")
    torch.library.opcheck(torch.ops.llmkern.w8_linear.default,
                          (x, wq, ws, None, g, cpu_int8.pack_w8(wq, ws, g), "cpu"))  # fmt: skip


# ---------------------------------------------------------------------------------------------
# torch.compile(fullgraph=True) of the public functions vs eager
# ---------------------------------------------------------------------------------------------


def compiled(fn):
    torch._dynamo.reset()
    return torch.compile(fn, fullgraph=True, backend="aot_eager")


def _int8_pipeline(x, wq, ws, b):
    xq, xs = llmkern.quantize_per_token(x)
    return (
        llmkern.w8a8_matmul(xq, wq, xs, ws, b, torch.bfloat16)
        + llmkern.w8_matmul(x.bfloat16(), wq, ws, b)
        + int8_ops.w8a8_linear(x, wq, ws, b).bfloat16()
        + int8_ops.w8_linear(x, wq, ws, b).bfloat16()
    )


def _sparse_pipeline(x, values, meta, qvalues, qmeta, ws):
    xq, xs = llmkern.quantize_per_token(x)
    w = llmkern.decompress_24(values, meta)
    return (
        llmkern.sparse24_matmul(x, values, meta)
        + llmkern.sparse24_w8a8_matmul(xq, qvalues, qmeta, xs, ws)
        + llmkern.sparse24_w8_matmul(x, qvalues, qmeta, ws)
        + x @ w.T
    )


def test_compile_int8_ops_fullgraph_matches_eager():
    x, wq = torch.randn(3, 24), torch.randint(-128, 128, (5, 24), dtype=torch.int8)
    ws, b = torch.rand(5) / 127 + 1e-3, torch.randn(5)
    torch.testing.assert_close(compiled(_int8_pipeline)(x, wq, ws, b), _int8_pipeline(x, wq, ws, b))


def test_compile_sparse24_ops_fullgraph_matches_eager():
    x = torch.randn(3, 24)
    values, meta = s24_ops.compress_24_ref(w24(5, 24))
    qvalues, qmeta = s24_ops.compress_24_ref(w24(5, 24, torch.int8))
    args = (x, values, meta, qvalues, qmeta, torch.rand(5) / 127 + 1e-3)
    torch.testing.assert_close(compiled(_sparse_pipeline)(*args), _sparse_pipeline(*args))


@pytest.mark.parametrize("divergence", kd_ops.DIVERGENCES)
def test_compile_kd_loss_fullgraph_forward_and_backward_match_eager(divergence):
    def loss_fn(z, t, y, lp, idx):
        dense = llmkern.kd_loss(z, t, y, 2.0, 0.3, divergence=divergence, beta=0.3)
        return dense + llmkern.kd_loss_topk(z, idx, lp, y, 2.0, 0.3, reduction="sum")

    z, t, y = torch.randn(6, 17), torch.randn(6, 19), torch.tensor([0, 16, -100, 3, 3, 9])
    lp, idx = torch.log_softmax(torch.randn(6, 17), 1).topk(5, dim=1)
    z1, z2 = z.clone().requires_grad_(), z.clone().requires_grad_()
    got = compiled(loss_fn)(z1, t, y, lp, idx)
    want = loss_fn(z2, t, y, lp, idx)
    got.backward()
    want.backward()
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(z1.grad, z2.grad)


def test_value_checks_still_run_inside_compiled_graphs():
    """The data-dependent checks that guard memory and format (label and index ranges, the 2:4
    pattern, meta codes) live in the ops, so a compiled graph raises the same errors as eager.
    (The finite-scale check of the int8 ops is eager-only: a NaN scale gives NaN, not a fault.)"""
    z, t = torch.randn(2, 5), torch.randn(2, 5)
    with pytest.raises(ValueError, match=r"labels\[1\] = 9"):
        compiled(lambda z, t, y: llmkern.kd_loss(z, t, y))(z, t, torch.tensor([0, 9]))
    with pytest.raises(ValueError, match="topk_indices must be in"):
        compiled(lambda z, i, lp: llmkern.kd_loss_topk(z, i, lp))(
            z, torch.tensor([[0], [7]]), torch.zeros(2, 1)
        )
    with pytest.raises(ValueError, match="not 2:4 sparse"):
        compiled(lambda w: llmkern.compress_24(w))(torch.ones(2, 8))
    values, meta = s24_ops.compress_24_ref(w24(2, 8))
    with pytest.raises(ValueError, match="invalid 2:4 code"):
        compiled(lambda v, m: llmkern.decompress_24(v, m))(values, torch.full_like(meta, 0x55))


# ---------------------------------------------------------------------------------------------
# torch.export of a small compressed model
# ---------------------------------------------------------------------------------------------


class TinyCompressed(torch.nn.Module):
    """x -> int8 W8A8 linear -> 2:4 sparse linear -> logits; KD loss against a teacher."""

    def __init__(self, d=24, h=32, v=11):
        super().__init__()
        wq, ws = llmkern.quantize_weight(torch.randn(h, d) / 5)
        self.register_buffer("wq", wq)
        self.register_buffer("ws", ws)
        self.register_buffer("b1", torch.randn(h) / 10)
        values, meta = s24_ops.compress_24_ref(w24(v, h) / 5)
        self.register_buffer("values", values)
        self.register_buffer("meta24", meta)

    def forward(self, x, teacher_logits, labels):
        xq, xs = llmkern.quantize_per_token(x)
        hid = torch.relu(llmkern.w8a8_matmul(xq, self.wq, xs, self.ws, self.b1))
        logits = llmkern.sparse24_matmul(hid, self.values, self.meta24)
        return llmkern.kd_loss(logits, teacher_logits, labels, 2.0, 0.5), logits


def _model_inputs():
    return torch.randn(6, 24), torch.randn(6, 11), torch.tensor([1, 2, -100, 4, 10, 0])


def test_export_small_compressed_model_matches_eager():
    model = TinyCompressed().eval()
    args = _model_inputs()
    exported = torch.export.export(model, args)
    targets = {str(n.target) for n in exported.graph.nodes if n.op == "call_function"}
    for op in ("quantize_per_token", "w8a8_matmul", "sparse24_matmul", "kd_loss_rows"):
        assert f"llmkern.{op}.default" in targets, targets
    for got, want in zip(exported.module()(*args), model(*args), strict=True):
        torch.testing.assert_close(got, want)
    other = (torch.randn(6, 24) * 3, torch.randn(6, 11), torch.tensor([0, 0, 1, 1, 2, -100]))
    for got, want in zip(exported.module()(*other), model(*other), strict=True):
        torch.testing.assert_close(got, want)


def test_inductor_compile_of_the_model_matches_eager():
    model = TinyCompressed()
    args = _model_inputs()
    torch._dynamo.reset()
    got = torch.compile(model, fullgraph=True)(*args)
    for g, w in zip(got, model(*args), strict=True):
        torch.testing.assert_close(g, w)


# ---------------------------------------------------------------------------------------------
# Every llmkern.nn module: torch.compile(fullgraph=True) forward (and backward) matches eager
# ---------------------------------------------------------------------------------------------


def _linear(d_in=24, d_out=10):
    lin = torch.nn.Linear(d_in, d_out)
    with torch.no_grad():
        lin.weight.copy_(llmkern.prune_24(lin.weight, torch.rand_like(lin.weight)))
    return lin


def _from_float(name):
    return lambda: getattr(llmkern.nn, name).from_float(_linear())


# name -> (build the module, its inputs, whether the first input gets a gradient)
MODULES = {
    "KDLoss": (
        lambda: llmkern.nn.KDLoss(2.0, 0.5, divergence="jsd", beta=0.3),
        lambda: (torch.randn(2, 3, 9), torch.randn(2, 3, 9), torch.randint(0, 9, (2, 3))),
        True,
    ),
    "FusedLinearKDLoss": (
        lambda: llmkern.nn.FusedLinearKDLoss(2.0, 0.5, chunk_size=2),
        lambda: (
            torch.randn(5, 6),
            torch.randn(9, 6),
            torch.randn(5, 4),
            torch.randn(9, 4),
            torch.tensor([0, 8, -100, 3, 3]),
        ),  # fmt: skip
        True,
    ),
    # the int8 layers' straight-through backward (llmkern/nn/_base.py) compiles too
    "Int8Linear": (_from_float("Int8Linear"), lambda: (torch.randn(3, 24),), True),
    "Int8WeightOnlyLinear": (
        _from_float("Int8WeightOnlyLinear"),
        lambda: (torch.randn(3, 24),),
        True,
    ),  # fmt: skip
    "Int8LinearQAT": (_from_float("Int8LinearQAT"), lambda: (torch.randn(3, 24),), True),
    "Sparse24Linear": (_from_float("Sparse24Linear"), lambda: (torch.randn(3, 24),), True),
}


def nn_modules():
    return sorted(
        name for name, obj in vars(llmkern.nn).items()
        if isinstance(obj, type) and issubclass(obj, torch.nn.Module)
    )  # fmt: skip


def test_every_module_has_a_compile_case():
    missing = set(nn_modules()) - set(MODULES)
    assert not missing, f"add compile cases for {sorted(missing)}"


@pytest.mark.parametrize("name", nn_modules())
def test_module_compiles_fullgraph_and_matches_eager(name):
    build, inputs, grad = MODULES[name]
    module = build()
    args = inputs()
    a1 = [a.clone().requires_grad_(grad and i == 0) for i, a in enumerate(args)]
    a2 = [a.clone().requires_grad_(grad and i == 0) for i, a in enumerate(args)]
    got = compiled(module)(*a1)
    want = module(*a2)
    torch.testing.assert_close(got, want)
    if grad:
        got.sum().backward()
        want.sum().backward()
        torch.testing.assert_close(a1[0].grad, a2[0].grad)
