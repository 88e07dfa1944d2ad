"""Property-based tests (hypothesis) of the int8 ops: quantize_per_token, quantize_weight,
w8a8_matmul, w8_matmul and their 2:4 forms (sparse24_w8a8_matmul, sparse24_w8_matmul), on every
backend that runs CPU tensors. Inputs, tolerances and example counts: tests/strategies.py."""

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import llmkern
from llmkern.ops import sparse24 as s24
from tests.strategies import (
    BF16,
    COUNTS,
    EXAMPLES,
    F16,
    F32,
    FLOATS,
    I8,
    RANGES,
    TINY,
    U,
    assert_within,
    cpu_backends,
    dim,
    gen,
    int8_tensor,
    known_bug,
    lay,
    layout,
    matmul_bound,
    maybe_bias,
    run_examples,
    values,
    w8_rounding_bound,
    with_backend,
)

# ---------------------------------------------------------------------------------------------
# quantize_per_token
# ---------------------------------------------------------------------------------------------


def quantize_oracle(x):
    """numpy: per row absmax, inv = float32(127 / absmax), rint(x * inv) clamped; zero, tiny and
    non-finite rows as documented."""
    xn = x.float().numpy()
    absmax = np.abs(xn).max(axis=1)
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        inv = (np.float32(127.0) / absmax).astype(np.float32)
        q = np.clip(np.rint(xn * inv[:, None]), -127, 127)
    usable = np.isfinite(inv) & np.isfinite(absmax)
    q = np.where(usable[:, None], q, 0).astype(np.int8)
    scale = np.where(usable, absmax / np.float32(127.0), np.float32(1.0)).astype(np.float32)
    scale = np.where(np.isfinite(absmax), scale, np.float32(np.nan))
    return torch.from_numpy(q), torch.from_numpy(scale)


def quantize_body(data, backend, small):
    g = gen(data)
    m, k = dim(data, "m", small, 12), dim(data, "k", small, 300)
    dtype = data.draw(st.sampled_from(FLOATS), label="dtype")
    rng = data.draw(st.sampled_from(RANGES + ("zero-rows", "nonfinite")), label="range")
    x = values(g, (m, k), dtype, "unit" if rng in ("zero-rows", "nonfinite") else rng)
    if rng == "zero-rows":
        x[torch.rand(m, generator=g) < 0.5] = 0
    if rng == "nonfinite":
        special = torch.tensor([float("nan"), float("inf"), -float("inf")], dtype=dtype)
        idx = torch.randint(0, m * k, (max(1, m * k // 7),), generator=g)
        x.view(-1)[idx] = special[torch.randint(0, 3, idx.shape, generator=g)]
    x = lay(x, layout(data))
    absmax = x.float().abs().amax(1)
    tiny = ((absmax > 0) & (absmax < 127.0 / torch.finfo(F32).max)).any()
    known_bug("quantize_per_token", backend, "tiny-rows", bool(tiny))
    q, s = llmkern.quantize_per_token(x, **with_backend(backend))
    assert q.dtype == I8 and s.dtype == F32 and q.shape == (m, k) and s.shape == (m,)
    if backend == "reference":
        want_q, want_s = quantize_oracle(x)
    else:
        want_q, want_s = llmkern.ops.int8.quantize_per_token_ref(x.contiguous())
    assert torch.equal(q, want_q), "q differs"
    assert torch.equal(torch.isnan(s), torch.isnan(want_s)), "scale NaN pattern differs"
    assert torch.equal(s[~torch.isnan(s)], want_s[~torch.isnan(want_s)]), "scale differs"
    # The invariant behind the codes: |x - q * scale| <= scale / 2 (+ float32 rounding of x * inv).
    # Zero and tiny rows (scale 1, q 0) satisfy it too; NaN rows are excluded.
    ok = torch.isfinite(s)
    err = (x.float()[ok] - q.float()[ok] * s[ok, None]).abs()
    assert (err <= s[ok, None] * (0.5 + 200 * U[F32])).all()


@pytest.mark.parametrize("backend", cpu_backends("quantize_per_token"))
def test_quantize_per_token(backend):
    run_examples("quantize_per_token", backend, quantize_body)


# ---------------------------------------------------------------------------------------------
# quantize_weight (pure Python, no backends): round-trip error and scale invariants
# ---------------------------------------------------------------------------------------------


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.data())
def test_quantize_weight(data):
    g = gen(data)
    n, k = dim(data, "n", False, 20), dim(data, "k", False, 130)
    dtype = data.draw(st.sampled_from(FLOATS), label="dtype")
    group = data.draw(st.sampled_from((0, 1, 3, 8, 32, 1000)), label="group_size")
    rng = data.draw(st.sampled_from(RANGES), label="range")
    w = lay(values(g, (n, k), dtype, rng), layout(data))
    q, s = llmkern.quantize_weight(w, group)
    groups = -(-k // group) if group else 1
    assert q.dtype == I8 and q.shape == (n, k) and q.is_contiguous()
    assert s.shape == ((n,) if group == 0 else (n, groups)) and (s > 0).all()
    assert (q.abs() <= 127).all()
    step = s[:, None].expand(n, k) if group == 0 else s.repeat_interleave(group, 1)[:, :k]
    err = (w.float() - q.float() * step).abs()
    assert (err <= step * (0.5 + 300 * U[F32])).all()
    COUNTS["quantize_weight[python]"] += 1


# ---------------------------------------------------------------------------------------------
# w8a8_matmul and w8_matmul
# ---------------------------------------------------------------------------------------------


def scale_vector(g, n, out_dtype, data, label):
    """Positive float32 scales; for float16 output small enough that |out| stays finite."""
    top = {F32: 1e3, BF16: 1e3, F16: 1e-2}[out_dtype]
    lo = data.draw(st.sampled_from((1e-30, 1e-8, 1e-4, 1e-2)), label=label)
    return (torch.rand(n, generator=g) * (min(top, 1.0) - lo) + lo) / 127


def w8a8_body(data, backend, small, sparse=False):
    g = gen(data)
    m, n = dim(data, "m", small, 40), dim(data, "n", small, 40)
    k = 4 * dim(data, "k/4", small, 40) if sparse else dim(data, "k", small, 300)
    out_dtype = data.draw(st.sampled_from(FLOATS), label="out_dtype")
    xq = lay(int8_tensor(g, (m, k)), layout(data, "x_layout"))
    wq = int8_tensor(g, (n, k))
    xs = scale_vector(g, m, out_dtype, data, "x_scale_lo")
    if data.draw(st.booleans(), label="nan_row"):
        xs[0] = float("nan")  # a row quantize_per_token marked non-finite: NaN must propagate
    ws = lay(scale_vector(g, n, out_dtype, data, "w_scale_lo"), layout(data, "ws_layout"))
    bias = maybe_bias(data, g, n)
    kw = with_backend(backend)
    if sparse:
        wq = llmkern.prune_24(wq, torch.rand(n, k, generator=g))
        vals, meta = s24.compress_24_ref(wq)
        vals = lay(vals, layout(data, "values_layout"))
        out = llmkern.sparse24_w8a8_matmul(xq, vals, meta, xs, ws, bias, out_dtype, **kw)
        ref = s24.sparse24_w8a8_matmul_ref
        want = ref(xq, vals.contiguous(), meta, xs, ws, bias, out_dtype)
    else:
        out = llmkern.w8a8_matmul(xq, wq, xs, ws, bias, out_dtype, **kw)
        want = llmkern.ops.int8.w8a8_matmul_ref(xq, wq, xs, ws, bias, out_dtype)
    assert out.dtype == out_dtype and out.shape == (m, n)
    if backend == "reference":  # independent: exact integer product in float64
        acc = xq.double() @ wq.double().T
        want = acc * xs.double()[:, None] * ws.double()[None, :]
        want = want + (bias.double()[None, :] if bias is not None else 0)
    # Exact int32 accumulation; the float32 epilogue may associate differently (a few ulps).
    mag = (xq.double() @ wq.double().T).abs() * xs.double()[:, None].abs() * ws.double()[None, :]
    mag = mag + (bias.double().abs()[None, :] if bias is not None else 0)
    assert_within(out, want, (8 * U[F32] + 2 * U[out_dtype]) * mag + TINY[out_dtype], "w8a8")


@pytest.mark.parametrize("backend", cpu_backends("w8a8_matmul"))
def test_w8a8_matmul(backend):
    run_examples("w8a8_matmul", backend, w8a8_body)


@pytest.mark.parametrize("backend", cpu_backends("sparse24_w8a8_matmul"))
def test_sparse24_w8a8_matmul(backend):
    run_examples("sparse24_w8a8_matmul", backend, lambda d, b, s: w8a8_body(d, b, s, sparse=True))


def dequant_oracle(wq, ws, group):
    """float64 w_q * scale[n, k // group] by explicit indexing."""
    k = wq.shape[1]
    if group == 0:
        return wq.double() * ws.double()[:, None]
    idx = torch.arange(k) // group
    return wq.double() * ws.double()[:, idx]


def w8_body(data, backend, small, sparse=False):
    g = gen(data)
    m, n = dim(data, "m", small, 40), dim(data, "n", small, 40)
    k = 4 * dim(data, "k/4", small, 40) if sparse else dim(data, "k", small, 300)
    dtype = data.draw(st.sampled_from(FLOATS), label="dtype")
    rng = data.draw(st.sampled_from(RANGES), label="range")
    group = 0 if sparse else data.draw(st.sampled_from((0, 1, 5, 16, 32, 128, 512)), label="group")
    x = lay(values(g, (m, k), dtype, rng), layout(data, "x_layout"))
    wq = int8_tensor(g, (n, k))
    groups = -(-k // group) if group else 0
    ws = (torch.rand((n, groups) if group else (n,), generator=g) + 0.01) / 127
    ws = lay(ws, layout(data, "ws_layout"))
    bias = maybe_bias(data, g, n)
    kw = with_backend(backend)
    if sparse:
        wq = llmkern.prune_24(wq, torch.rand(n, k, generator=g))
        vals, meta = s24.compress_24_ref(wq)
        vals = lay(vals, layout(data, "values_layout"))
        out = llmkern.sparse24_w8_matmul(x, vals, meta, ws, bias, **kw)
    else:
        out = llmkern.w8_matmul(x, wq, ws, bias, group, **kw)
    w = dequant_oracle(wq, ws, group)
    if backend == "reference":
        want = x.double() @ w.T + (bias.double()[None, :] if bias is not None else 0)
    else:
        want = llmkern.ops.int8.w8_matmul_ref(x.contiguous(), wq, ws.contiguous(), bias, group)
    assert out.dtype == dtype and out.shape == (m, n)
    bound = matmul_bound(x.double(), w, bias, k, dtype)
    if backend == "cpu":
        bound = bound + w8_rounding_bound(x, w, group)
    assert_within(out, want, bound, "w8_matmul")


@pytest.mark.parametrize("backend", cpu_backends("w8_matmul"))
def test_w8_matmul(backend):
    run_examples("w8_matmul", backend, w8_body)


@pytest.mark.parametrize("backend", cpu_backends("sparse24_w8_matmul"))
def test_sparse24_w8_matmul(backend):
    run_examples("sparse24_w8_matmul", backend, lambda d, b, s: w8_body(d, b, s, sparse=True))


def test_every_public_op_has_a_property():
    """A new public op must get a property test in a tests/ops/test_*_properties.py (and its
    name here)."""
    tested = {
        "quantize_per_token", "quantize_weight", "w8a8_matmul", "w8_matmul", "compress_24",
        "decompress_24", "prune_24", "sparse24_matmul", "sparse24_w8a8_matmul",
        "sparse24_w8_matmul", "kd_loss", "kd_loss_topk", "fused_linear_kd_loss",
    }  # fmt: skip
    public = {
        n for n in vars(llmkern.ops) if not n.startswith("_") and callable(vars(llmkern.ops)[n])
    }
    assert public <= tested, public - tested
