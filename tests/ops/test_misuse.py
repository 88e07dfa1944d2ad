"""Hypothesis-driven misuse of every public function and module (issue 15).

Each case draws a valid call, then one misuse of it: a non-contiguous or expanded argument, a
wrong rank, a wrong dtype, a non-tensor, the meta device, autograd on, a generator, a single
batch, double application, a pickling or dtype round trip, a mismatched checkpoint. The outcome
must be either the correct result (against float64 or the reference, tolerances per op below)
or a TypeError/ValueError that names the argument, raised before any state changed. Any other
exception (an internal RuntimeError, an AttributeError, a C++ check) fails.

``test_every_public_callable_is_covered`` keeps the suite complete: every public function of
``llmkern``, every ``llmkern.compress.__all__`` entry and every ``llmkern.nn`` module must be
named by a case of this file (the ``COVERED`` registry)."""

import copy
import inspect
import pickle

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import llmkern
import llmkern.compress
import llmkern.nn as lnn
from llmkern.ops import int8 as int8_ops
from llmkern.ops import kd as kd_ops
from llmkern.ops import sparse24 as s24_ops
from tests.models import TinyLM
from tests.strategies import w8_rounding_bound

COVERED: set[str] = set()
SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def covers(*names):
    COVERED.update(names)
    return lambda f: f


# ---------------------------------------------------------------------------------------------
# The ops: valid calls, their references, and the misuses
# ---------------------------------------------------------------------------------------------


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _f(g, *shape, scale=1.0):
    return torch.randn(*shape, generator=g) * scale


def _i8(g, *shape):
    return torch.randint(-127, 128, shape, generator=g, dtype=torch.int8)


def _scales(g, n):
    return torch.rand(n, generator=g) * 0.1 + 0.01


def _w24(g, n, k, int8=False):
    w = _i8(g, n, k).float() if int8 else _f(g, n, k)
    w = s24_ops.prune_24(w)
    return w.to(torch.int8) if int8 else w


def _close_f64(got, want64, bound):
    """|got - want| <= bound elementwise (bound from docs/numerics.md)."""
    err = (got.double() - want64).abs()
    assert bool((err <= bound + 1e-30).all()), float((err - bound).max())


U32 = 2.0**-24


def _gemm_bound(x, w, bias, k):
    mag = x.double().abs() @ w.double().abs().T
    if bias is not None:
        mag = mag + bias.double().abs()
    return ((k + 2) * U32 + U32) * mag


def _w8_bound(x, w, bias, k):
    """_gemm_bound, plus the int16 rounding of x the cpu weight-only kernels apply at few rows
    (docs/numerics.md)."""
    return _gemm_bound(x, w, bias, k) + w8_rounding_bound(x, w, 0)


def case_quantize_per_token(g, m, k):
    args = {"x": _f(g, m, k, scale=3.0)}

    def check(out, a):
        q, s = int8_ops.quantize_per_token_ref(a["x"].contiguous())
        assert torch.equal(out[0], q) and torch.equal(out[1], s)

    return llmkern.quantize_per_token, args, check


def case_quantize_weight(g, m, k):
    args = {"w": _f(g, m, k)}

    def check(out, a):
        q, s = out
        w = a["w"].double()
        assert q.dtype == torch.int8 and s.shape == (m,)
        _close_f64(q.double() * s.double()[:, None], w, s.double()[:, None] * (0.5 + 300 * U32))

    return llmkern.quantize_weight, args, check


def case_w8a8_matmul(g, m, k):
    n = 5
    args = {"x_q": _i8(g, m, k), "w_q": _i8(g, n, k), "x_scale": _scales(g, m),
            "w_scale": _scales(g, n), "bias": _f(g, n)}  # fmt: skip

    def check(out, a):
        want = int8_ops.w8a8_matmul_ref(*(a[key].contiguous() for key in
                                          ("x_q", "w_q", "x_scale", "w_scale", "bias")),
                                        torch.float32)  # fmt: skip
        torch.testing.assert_close(out, want, rtol=5 * U32, atol=1e-6)

    return llmkern.w8a8_matmul, args, check


def case_w8_matmul(g, m, k):
    n = 5
    args = {"x": _f(g, m, k), "w_q": _i8(g, n, k), "w_scale": _scales(g, n), "bias": _f(g, n)}

    def check(out, a):
        w = int8_ops.dequantize_weight(a["w_q"], a["w_scale"], 0)
        want = a["x"].double() @ w.double().T + a["bias"].double()
        _close_f64(out, want, _w8_bound(a["x"], w, a["bias"], k))

    return llmkern.w8_matmul, args, check


def case_compress_24(g, m, k):
    args = {"w": _w24(g, m, k)}

    def check(out, a):
        want = s24_ops.compress_24_ref(a["w"].contiguous())
        assert torch.equal(out[0], want[0]) and torch.equal(out[1], want[1])

    return llmkern.compress_24, args, check


def case_decompress_24(g, m, k):
    w = _w24(g, m, k)
    values, meta = s24_ops.compress_24_ref(w)
    args = {"values": values, "meta": meta}

    def check(out, a):
        assert torch.equal(out, w)

    return llmkern.decompress_24, args, check


def case_prune_24(g, m, k):
    args = {"w": _f(g, m, k)}

    def check(out, a):
        w = a["w"]
        kept = (out != 0).reshape(m, k // 4, 4)
        assert bool((kept.sum(2) <= 2).all())
        assert torch.equal(out[out != 0], w[out != 0])
        mags = w.abs().reshape(m, k // 4, 4)
        lo = torch.where(kept, mags, torch.inf).amin(2)
        hi = torch.where(kept, -torch.inf, mags).amax(2)
        assert bool((lo >= hi).all())

    return llmkern.prune_24, args, check


def case_sparse24_matmul(g, m, k):
    n = 5
    w = _w24(g, n, k)
    values, meta = s24_ops.compress_24_ref(w)
    args = {"x": _f(g, m, k), "values": values, "meta": meta, "bias": _f(g, n)}

    def check(out, a):
        want = a["x"].double() @ w.double().T + a["bias"].double()
        _close_f64(out, want, _gemm_bound(a["x"], w, a["bias"], k))

    return llmkern.sparse24_matmul, args, check


def case_sparse24_w8a8_matmul(g, m, k):
    n = 5
    values, meta = s24_ops.compress_24_ref(_w24(g, n, k, int8=True))
    args = {"x_q": _i8(g, m, k), "values": values, "meta": meta, "x_scale": _scales(g, m),
            "w_scale": _scales(g, n), "bias": _f(g, n)}  # fmt: skip

    def check(out, a):
        c = {key: v.contiguous() for key, v in a.items()}
        want = s24_ops.sparse24_w8a8_matmul_ref(c["x_q"], c["values"], c["meta"], c["x_scale"],
                                                c["w_scale"], c["bias"], torch.float32)  # fmt: skip
        torch.testing.assert_close(out, want, rtol=5 * U32, atol=1e-6)

    return llmkern.sparse24_w8a8_matmul, args, check


def case_sparse24_w8_matmul(g, m, k):
    n = 5
    w_q = _w24(g, n, k, int8=True)
    values, meta = s24_ops.compress_24_ref(w_q)
    args = {"x": _f(g, m, k), "values": values, "meta": meta, "w_scale": _scales(g, n),
            "bias": _f(g, n)}  # fmt: skip

    def check(out, a):
        w = int8_ops.dequantize_weight(w_q, a["w_scale"], 0)
        want = a["x"].double() @ w.double().T + a["bias"].double()
        _close_f64(out, want, _w8_bound(a["x"], w, a["bias"], k))

    return llmkern.sparse24_w8_matmul, args, check


def _kd_check(ref_rows):
    def check(out, a):
        want = ref_rows(a).mean()
        torch.testing.assert_close(out.double(), want, rtol=1e-4, atol=1e-5)

    return check


def case_kd_loss(g, m, k):
    v = k
    args = {"student_logits": _f(g, m, v, scale=2.0), "teacher_logits": _f(g, m, v, scale=2.0),
            "labels": torch.randint(0, v, (m,), generator=g)}  # fmt: skip
    ref = lambda a: kd_ops.kd_loss_rows_ref(  # noqa: E731
        a["student_logits"].double(), a["teacher_logits"].double(), a["labels"].contiguous(),
        1.0, 0.5, -100, "kl", 0.5, False)[0]  # fmt: skip
    return llmkern.kd_loss, args, _kd_check(ref)


def case_kd_loss_topk(g, m, k):
    v = k
    lp, idx = torch.log_softmax(_f(g, m, v), 1).topk(min(4, v), dim=1)
    args = {"student_logits": _f(g, m, v), "topk_indices": idx, "topk_logprobs": lp,
            "labels": torch.randint(0, v, (m,), generator=g)}  # fmt: skip
    ref = lambda a: kd_ops.kd_loss_topk_rows_ref(  # noqa: E731
        a["student_logits"].double(), a["topk_indices"].contiguous(),
        a["topk_logprobs"].double(), a["labels"].contiguous(), 1.0, 0.5, -100, False)[0]  # fmt: skip
    return llmkern.kd_loss_topk, args, _kd_check(ref)


def case_fused_linear_kd_loss(g, m, k):
    v = 11
    args = {"student_hidden": _f(g, m, k), "student_head": _f(g, v, k),
            "teacher_hidden": _f(g, m, 6), "teacher_head": _f(g, v + 2, 6),
            "labels": torch.randint(0, v, (m,), generator=g)}  # fmt: skip

    def check(out, a):
        c = {key: t.contiguous().double() if t.is_floating_point() else t.contiguous()
             for key, t in a.items()}  # fmt: skip
        want = kd_ops.fused_linear_kd_loss_ref(c["student_hidden"], c["student_head"],
                                               c["teacher_hidden"], c["teacher_head"],
                                               c["labels"])  # fmt: skip
        torch.testing.assert_close(out.double(), want.double(), rtol=1e-4, atol=1e-5)

    return llmkern.fused_linear_kd_loss, args, check


OP_CASES = {
    "quantize_per_token": case_quantize_per_token,
    "quantize_weight": case_quantize_weight,
    "w8a8_matmul": case_w8a8_matmul,
    "w8_matmul": case_w8_matmul,
    "compress_24": case_compress_24,
    "decompress_24": case_decompress_24,
    "prune_24": case_prune_24,
    "sparse24_matmul": case_sparse24_matmul,
    "sparse24_w8a8_matmul": case_sparse24_w8a8_matmul,
    "sparse24_w8_matmul": case_sparse24_w8_matmul,
    "kd_loss": case_kd_loss,
    "kd_loss_topk": case_kd_loss_topk,
    "fused_linear_kd_loss": case_fused_linear_kd_loss,
}
COVERED.update(f"llmkern.{name}" for name in OP_CASES)

OP_MISUSES = ("none", "strided", "expanded", "wrong_rank", "wrong_dtype", "not_tensor", "meta",
              "requires_grad")  # fmt: skip


def strided_copy(t: torch.Tensor) -> torch.Tensor:
    """The same values in a non-contiguous layout (every other element of a wider buffer)."""
    buf = torch.zeros(*t.shape[:-1], 2 * t.shape[-1], dtype=t.dtype)
    buf[..., ::2] = t
    return buf[..., ::2]


def expanded_copy(t: torch.Tensor) -> torch.Tensor | None:
    """A stride-0 view with the same values, when every row of t equals the first."""
    if t.dim() == 0 or t.shape[0] < 1:
        return None
    return t[:1].expand(t.shape) if bool((t == t[:1]).all()) else None


def _assert_clear(exc: Exception, arg: str) -> None:
    assert isinstance(exc, (TypeError, ValueError)), repr(exc)
    assert arg in str(exc) or arg.replace("_", " ") in str(exc), f"{arg!r} not named in: {exc}"


@settings(max_examples=150, **SETTINGS)
@given(op=st.sampled_from(sorted(OP_CASES)), misuse=st.sampled_from(OP_MISUSES),
       m=st.integers(1, 5), k4=st.integers(1, 6), seed=st.integers(0, 2**16), pick=st.randoms())  # fmt: skip
def test_op_misuse(op, misuse, m, k4, seed, pick):
    fn, args, check = OP_CASES[op](_gen(seed), m, 4 * k4)
    names = [n for n, v in args.items() if isinstance(v, torch.Tensor)]
    name = pick.choice(names)
    t = args[name]
    bad = dict(args)
    if misuse == "none":
        check(fn(**args), args)
    elif misuse == "strided":  # any layout: the same result
        bad[name] = strided_copy(t)
        check(fn(**bad), args)
    elif misuse == "expanded":
        if op.startswith("kd") or op.startswith("fused"):
            bad["labels"] = torch.ones(1, dtype=torch.long).expand(m)  # stride 0
            check(fn(**bad), {**args, "labels": bad["labels"].contiguous()})
        else:
            e = expanded_copy(t)
            if e is not None:
                bad[name] = e
                check(fn(**bad), args)
    elif misuse == "wrong_rank":
        bad[name] = t.unsqueeze(0) if pick.random() < 0.5 or t.dim() == 1 else t.reshape(-1)
        with pytest.raises((TypeError, ValueError)) as info:
            fn(**bad)
        _assert_clear(info.value, name)
    elif misuse == "wrong_dtype":
        wrong = torch.int32 if t.is_floating_point() else torch.float64
        bad[name] = t.to(wrong)
        try:
            out = fn(**bad)
        except (TypeError, ValueError) as exc:
            _assert_clear(exc, name)
        else:  # accepted (float64 KD logits): then it must be right
            assert wrong == torch.float64 or name == "labels"
            check(out, args)
    elif misuse == "not_tensor":
        bad[name] = t.tolist()
        with pytest.raises(TypeError) as info:
            fn(**bad)
        _assert_clear(info.value, name)
    elif misuse == "meta":  # shapes only: a meta result of the right shape, or a clear error
        real = fn(**args)
        bad = {n: v.to("meta") if isinstance(v, torch.Tensor) else v for n, v in args.items()}
        try:
            out = fn(**bad)
        except (TypeError, ValueError) as exc:
            assert "meta" in str(exc), exc
        else:
            outs = out if isinstance(out, tuple) else (out,)
            reals = real if isinstance(real, tuple) else (real,)
            for o, r in zip(outs, reals, strict=True):
                assert o.device.type == "meta" and o.shape == r.shape and o.dtype == r.dtype
    elif misuse == "requires_grad":  # values unchanged; a gradient exists or backward says why
        floats = [n for n in names if args[n].is_floating_point()]
        if not floats:
            return
        n0 = pick.choice(floats)
        bad[n0] = args[n0].clone().requires_grad_(True)
        out = fn(**bad)
        check(tuple(o.detach() for o in out) if isinstance(out, tuple) else out.detach(), args)
        first = out[0] if isinstance(out, tuple) else out
        if first.requires_grad:
            try:
                first.float().sum().backward()
            except RuntimeError as exc:  # ops without a derivative say so at backward
                assert "derivative" in str(exc) or "autograd" in str(exc).lower(), exc
            else:
                assert bad[n0].grad is not None and torch.isfinite(bad[n0].grad).all()


@covers("llmkern.BackendUnavailableError")
def test_backend_asked_by_name_that_cannot_run_raises():
    with pytest.raises(llmkern.BackendUnavailableError, match="cuda"):
        llmkern.w8_matmul(torch.randn(2, 8), _i8(_gen(0), 3, 8), _scales(_gen(0), 3),
                          backend="cuda")  # fmt: skip


# ---------------------------------------------------------------------------------------------
# The modules
# ---------------------------------------------------------------------------------------------


def _lin(k, n, seed):
    torch.manual_seed(seed)
    return nn.Linear(k, n)


LINEAR_MODULES = {
    "Int8Linear": lambda lin: lnn.Int8Linear.from_float(lin),
    "Int8Linear-static": lambda lin: lnn.Int8Linear.from_float(lin, input_scale=0.05),
    "Int8WeightOnlyLinear": lambda lin: lnn.Int8WeightOnlyLinear.from_float(lin, group_size=4),
    "Int8LinearQAT": lambda lin: lnn.Int8LinearQAT.from_float(lin),
    "Sparse24Linear": lambda lin: lnn.Sparse24Linear.from_float(lin),
    "Sparse24Linear-w8": lambda lin: lnn.Sparse24Linear.from_float(lin, int8="w8"),
    "Sparse24Linear-w8a8": lambda lin: lnn.Sparse24Linear.from_float(lin, int8="w8a8"),
    "LowRankLinear": lambda lin: llmkern.compress.LowRankLinear.from_float(lin, 2),
}
COVERED.update({"llmkern.nn.Int8Linear", "llmkern.nn.Int8WeightOnlyLinear",
                "llmkern.nn.Int8LinearQAT", "llmkern.nn.Sparse24Linear",
                "llmkern.compress.LowRankLinear"})  # fmt: skip

MODULE_MISUSES = ("strided", "wrong_features", "int_input", "scalar_input", "meta_input",
                  "requires_grad", "pickle", "dtype_round_trip", "double", "state_dict",
                  "torchscript")  # fmt: skip


def _float_weight(m) -> torch.Tensor:
    """The float32 weight the module stands for (what its to_float() holds)."""
    return m.to_float().weight.detach()


def _expected(m, x):
    """The module's own output on a contiguous float32 copy (the value every layout must give)."""
    with torch.no_grad():
        return m(x.contiguous())


@settings(max_examples=120, **SETTINGS)
@given(kind=st.sampled_from(sorted(LINEAR_MODULES)), misuse=st.sampled_from(MODULE_MISUSES),
       m=st.integers(1, 6), k4=st.integers(1, 5), n=st.integers(1, 7), seed=st.integers(0, 999))  # fmt: skip
def test_linear_module_misuse(kind, misuse, m, k4, n, seed):
    k = 4 * k4
    if kind == "LowRankLinear":
        n, k = max(n, 3), max(k, 4)
    mod = LINEAR_MODULES[kind](_lin(k, n, seed))
    x = torch.randn(m, k, generator=_gen(seed))
    want = _expected(mod, x)
    err = (TypeError, ValueError)
    int8 = kind.startswith("Int8") and kind != "Int8LinearQAT" or kind.endswith(("w8", "w8a8"))
    if misuse == "strided":  # int8 kernels: bit for bit; float GEMMs may round by layout
        tol = dict(rtol=0, atol=0) if int8 else dict(rtol=4 * U32 * k, atol=1e-6)
        torch.testing.assert_close(_expected(mod, strided_copy(x)), want, **tol)
        with torch.no_grad():
            torch.testing.assert_close(mod(x.t().contiguous().t()), want, **tol)
    elif misuse == "wrong_features":
        with pytest.raises(err, match=str(k)):
            mod(torch.randn(m, k + 1))
    elif misuse == "int_input":
        with pytest.raises(err):
            mod(torch.randint(0, 3, (m, k)))
    elif misuse == "scalar_input":
        with pytest.raises(err):
            mod(torch.tensor(1.0))
    elif misuse == "meta_input":
        with pytest.raises(err):
            mod(torch.randn(m, k, device="meta"))
    elif misuse == "requires_grad":
        xg = x.clone().requires_grad_(True)
        g = torch.randn(m, n, generator=_gen(seed + 1))
        out = mod(xg)
        out.backward(g)
        w = _float_weight(mod).double()
        if kind in ("Int8LinearQAT",):  # STE through both quantisers: the fake-quant weight
            w = int8_ops.dequantize_weight(*int8_ops.quantize_weight(mod.weight.detach()), 0)
        torch.testing.assert_close(xg.grad.double(), g.double() @ w.double(), rtol=1e-5,
                                   atol=1e-5)  # fmt: skip
    elif misuse == "pickle":
        back = pickle.loads(pickle.dumps(mod))
        torch.testing.assert_close(_expected(back, x), want, rtol=0, atol=0)
    elif misuse == "dtype_round_trip":  # .half().float(): int8 layers unchanged
        back = copy.deepcopy(mod).half().float()
        got = _expected(back, x)
        if int8:
            torch.testing.assert_close(got, want, rtol=0, atol=0)
        else:  # float weights went through float16
            atol = 2e-3
            if kind == "Int8LinearQAT":  # a rounded weight may also cross an int8 rounding edge
                step = int8_ops.quantize_weight(mod.weight.detach())[1].max()
                atol += float(step * x.abs().sum(-1).max())
            torch.testing.assert_close(got, want, rtol=2e-3, atol=atol)
    elif misuse == "double":
        dbl = copy.deepcopy(mod).double()
        if int8:
            torch.testing.assert_close(_expected(dbl, x), want, rtol=0, atol=0)
            for name, b in dbl.named_buffers():
                if b is not None and b.is_floating_point():
                    assert b.dtype == torch.float32, name
        else:  # a float64 layer takes float64 input, or says it cannot
            try:
                got = dbl(x.double())
            except err:
                pass
            else:
                torch.testing.assert_close(got.float(), want, rtol=1e-4, atol=1e-4)
    elif misuse == "state_dict":
        fresh = LINEAR_MODULES[kind](_lin(k, n, seed + 7))
        fresh.load_state_dict(mod.state_dict())
        torch.testing.assert_close(_expected(fresh, x), want, rtol=0, atol=0)
    elif misuse == "torchscript":
        with pytest.raises(TypeError, match="torch.jit.script"):
            torch.jit.script(mod)


KD_MODULES = ("KDLoss", "FusedLinearKDLoss")
COVERED.update(f"llmkern.nn.{n}" for n in KD_MODULES)


@settings(max_examples=60, **SETTINGS)
@given(kind=st.sampled_from(KD_MODULES), lead=st.lists(st.integers(1, 3), min_size=1, max_size=3),
       misuse=st.sampled_from(("none", "permuted_teacher", "bad_labels_shape", "strided_labels",
                               "pickle", "torchscript", "nan_temperature")),
       seed=st.integers(0, 999))  # fmt: skip
def test_kd_module_misuse(kind, lead, misuse, seed):
    g = _gen(seed)
    v, h = 7, 5
    lead = tuple(lead)
    labels = torch.randint(0, v, lead, generator=g)
    if kind == "KDLoss":
        mod = lnn.KDLoss(2.0, 0.5)
        s, t = _f(g, *lead, v), _f(g, *lead, v)
        args = (s, t)
        flat = lambda *a, lab: llmkern.kd_loss(a[0].reshape(-1, v), a[1].reshape(-1, v),  # noqa: E731
                                               lab.reshape(-1), 2.0)  # fmt: skip
    else:
        mod = lnn.FusedLinearKDLoss(2.0, 0.5)
        hs, ws, ht, wt = _f(g, *lead, h), _f(g, v, h), _f(g, *lead, 4), _f(g, v, 4)
        args = (hs, ws, ht, wt)
        flat = lambda *a, lab: llmkern.fused_linear_kd_loss(  # noqa: E731
            a[0].reshape(-1, h), a[1], a[2].reshape(-1, 4), a[3], lab.reshape(-1), 2.0
        )
    teacher_pos = 1 if kind == "KDLoss" else 2
    if misuse == "none":
        torch.testing.assert_close(mod(*args, labels), flat(*args, lab=labels))
    elif misuse == "permuted_teacher":
        t = args[teacher_pos]
        perm = t.reshape(*reversed(lead), t.shape[-1])
        if perm.shape == t.shape:
            perm = t.reshape(1, -1, t.shape[-1]) if len(lead) > 1 or lead[0] > 1 else None
        if perm is None or perm.shape[:-1] == t.shape[:-1]:
            return
        bad = list(args)
        bad[teacher_pos] = perm
        with pytest.raises(ValueError, match="teacher"):
            mod(*bad, labels)
    elif misuse == "bad_labels_shape":
        bad = labels.reshape(-1, 1)
        if tuple(bad.shape) == lead:  # lead (n, 1) is that shape already: flat is wrong for it
            bad = labels.reshape(-1)
        with pytest.raises(ValueError, match="labels"):
            mod(*args, bad)
    elif misuse == "strided_labels":
        wide = torch.stack([labels, labels], -1)[..., 0]
        torch.testing.assert_close(mod(*args, wide), flat(*args, lab=labels))
    elif misuse == "pickle":
        back = pickle.loads(pickle.dumps(mod))
        torch.testing.assert_close(back(*args, labels), mod(*args, labels))
    elif misuse == "torchscript":
        with pytest.raises(TypeError, match="torch.jit.script"):
            torch.jit.script(mod)
    elif misuse == "nan_temperature":
        with pytest.raises(ValueError, match="temperature"):
            type(mod)(float("nan"))


# ---------------------------------------------------------------------------------------------
# The compression API: misuse leaves the model unchanged; valid calls do what they say
# ---------------------------------------------------------------------------------------------


class Net(nn.Module):
    def __init__(self, d=16, h=24, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.ln = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, h)
        self.fc2 = nn.Linear(h, d)

    def forward(self, x):
        return x + self.fc2(F.gelu(self.fc1(self.ln(x))))


def _state(model):
    return ([(n, type(m)) for n, m in model.named_modules()],
            {k: v.clone() for k, v in model.state_dict().items()})  # fmt: skip


def _same(model, snap):
    types, state = _state(model)
    return types == snap[0] and all(torch.equal(v, snap[1][k]) for k, v in state.items())


def _batches(n, d=16, seed=0):
    g = _gen(seed)
    return [torch.randn(2, 3, d, generator=g) for _ in range(n)]


COMPRESS_CALLS = {
    "quantize-w8a8": lambda m, c: llmkern.quantize(m, "w8a8", skip=[]),
    "quantize-w8": lambda m, c: llmkern.quantize(m, "w8", skip=[], group_size=4),
    "quantize-smoothquant": lambda m, c: llmkern.quantize(m, "w8a8", c, smoothquant=0.5, skip=[]),
    "quantize-static": lambda m, c: llmkern.quantize(
        m, "w8a8", c, activation_scale="static", skip=[]
    ),  # fmt: skip
    "prune-magnitude": lambda m, c: llmkern.prune(m, skip=[]),
    "prune-wanda": lambda m, c: llmkern.prune(m, importance="wanda", calibration=c, skip=[]),
    "prune-refit": lambda m, c: llmkern.prune(
        m, importance="wanda", calibration=c, skip=[], reconstruct=True
    ),  # fmt: skip
    "low_rank": lambda m, c: llmkern.low_rank(m, rank=3, skip=[]),
    "prepare_qat": lambda m, c: llmkern.prepare_qat(m, skip=[]),
}
USES_DATA = {"quantize-smoothquant", "quantize-static", "prune-wanda", "prune-refit"}
COVERED.update({"llmkern.quantize", "llmkern.prune", "llmkern.low_rank", "llmkern.prepare_qat",
                "llmkern.compress.Report"})  # fmt: skip
COMPRESS_MISUSES = ("list", "generator", "single_tensor", "single_dict", "empty", "twice",
                    "bad_skip_all", "max_batches_bad")  # fmt: skip


@settings(max_examples=60, **SETTINGS)
@given(call=st.sampled_from(sorted(COMPRESS_CALLS)), misuse=st.sampled_from(COMPRESS_MISUSES),
       n_batches=st.integers(1, 3), seed=st.integers(0, 99))  # fmt: skip
def test_compression_misuse(call, misuse, n_batches, seed):
    fn = COMPRESS_CALLS[call]
    data = _batches(n_batches, seed=seed)
    model = Net(seed=seed)
    x = _batches(1, seed=seed + 1)[0]
    snap = _state(model)
    if misuse in ("list", "generator"):
        rep = fn(model, data if misuse == "list" else (b for b in data))
        assert len(rep.layers) == 2 and not _same(model, snap)
        if misuse == "generator" and call in USES_DATA:  # the same as the list
            ref = Net(seed=seed)
            fn(ref, data)
            with torch.no_grad():
                torch.testing.assert_close(model(x), ref(x), rtol=0, atol=0)
        return
    if misuse in ("single_tensor", "single_dict", "empty", "max_batches_bad"):
        if call not in USES_DATA:
            return
        calib = {"single_tensor": data[0], "single_dict": {"x": data[0]}, "empty": [],
                 "max_batches_bad": data}[misuse]  # fmt: skip
        exc = TypeError if misuse.startswith("single") else ValueError
        with pytest.raises(exc, match="batch"):
            if misuse == "max_batches_bad":
                op = llmkern.quantize if call.startswith("quantize") else llmkern.prune
                kw = ({"smoothquant": 0.5} if op is llmkern.quantize
                      else {"importance": "wanda"})  # fmt: skip
                op(model, calibration=calib, max_batches=0, **kw)
            else:
                fn(model, calib)
    elif misuse == "twice":
        fn(model, data)
        snap = _state(model)
        if call == "low_rank":  # factors are linear layers: factorising them again is allowed
            return
        with pytest.raises(ValueError, match="already"):
            fn(model, data)
    elif misuse == "bad_skip_all":
        op = {
            "quantize": llmkern.quantize,
            "prune": llmkern.prune,
            "low_rank": llmkern.low_rank,
            "prepare_qat": llmkern.prepare_qat,
        }[call.split("-")[0]]
        with pytest.raises(ValueError, match="no linear layer"):
            op(model, skip=["*"])  # every layer skipped: nothing to do is an error
    assert _same(model, snap)


@covers("llmkern.convert")
def test_convert_misuse():
    model = Net()
    snap = _state(model)
    with pytest.raises(ValueError, match="prepare_qat"):
        llmkern.convert(model)
    assert _same(model, snap)
    llmkern.prepare_qat(model, skip=[])
    x = _batches(1)[0]
    with torch.no_grad():
        want = model(x)
    llmkern.convert(model)
    with torch.no_grad():
        torch.testing.assert_close(model(x), want, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="prepare_qat"):
        llmkern.convert(model)


@covers("llmkern.save", "llmkern.load")
@settings(max_examples=12, **SETTINGS)
@given(d=st.sampled_from([12, 16, 20]), h=st.sampled_from([20, 24, 28]),
       how=st.sampled_from(["quantize", "prune", "low_rank"]))  # fmt: skip
def test_checkpoint_into_a_model_of_other_shapes(tmp_path_factory, d, h, how):
    path = str(tmp_path_factory.mktemp("ck") / "ck")
    src = Net()
    {"quantize": lambda: llmkern.quantize(src, "w8a8", skip=[]),
     "prune": lambda: llmkern.prune(src, skip=[]),
     "low_rank": lambda: llmkern.low_rank(src, rank=3, skip=[])}[how]()  # fmt: skip
    llmkern.save(src, path)
    other = Net(d, h, seed=3)
    snap = _state(other)
    x = torch.randn(2, d)
    if (d, h) == (16, 24):
        got = llmkern.load(path, model=other)
        with torch.no_grad():
            torch.testing.assert_close(got(x), src(x), rtol=0, atol=0)
    else:
        with pytest.raises(ValueError, match="does not match the model"):
            llmkern.load(path, model=other)
        assert _same(other, snap)


COVERED.update({"llmkern.distill", "llmkern.compress.DistillReport"})


@settings(max_examples=30, **SETTINGS)
@given(misuse=st.sampled_from(("list", "generator_short", "single_dict", "single_tensor", "empty",
                               "bad_temperature", "bad_alpha", "bad_steps", "no_logits")),
       steps=st.integers(1, 4), n=st.integers(1, 3))  # fmt: skip
def test_distill_misuse(misuse, steps, n):
    data = [{"input_ids": torch.randint(0, 12, (2, 4), generator=_gen(i))} for i in range(n)]
    teacher, student = TinyLM(0), TinyLM(1)
    snap = _state(student)
    kw = dict(steps=steps, progress=False)
    if misuse == "list":
        rep = llmkern.distill(teacher, student, data, **kw)
        assert rep.steps == steps and not rep.stopped
        return
    if misuse == "generator_short":
        if n >= steps:
            assert llmkern.distill(teacher, student, iter(data), **kw).steps == steps
            return
        with pytest.warns(UserWarning, match="ran out"):
            rep = llmkern.distill(teacher, student, iter(data), **kw)
        assert rep.steps == n and "ran out" in rep.stopped
        return
    bad = {"single_dict": (data[0], {}, TypeError), "single_tensor": (data[0]["input_ids"], {},
           TypeError), "empty": ([], {}, ValueError),
           "bad_temperature": (data, {"temperature": float("nan")}, ValueError),
           "bad_alpha": (data, {"alpha": -0.5}, ValueError),
           "bad_steps": (data, {"steps": 0}, ValueError)}  # fmt: skip
    if misuse == "no_logits":

        class Hidden(TinyLM):
            def forward(self, input_ids):
                return (self.emb(input_ids),)  # a tuple: not logits

        with pytest.raises(TypeError, match="no logits"):
            llmkern.distill(Hidden(0), Hidden(1), data, **kw)
        return
    d, extra, exc = bad[misuse]
    with pytest.raises(exc):
        llmkern.distill(teacher, student, d, **{**kw, **extra})
    assert _same(student, snap)


# ---------------------------------------------------------------------------------------------
# The suite covers every public callable
# ---------------------------------------------------------------------------------------------


def public_callables() -> set[str]:
    names = set()
    for name, obj in vars(llmkern).items():
        if not name.startswith("_") and callable(obj) and not inspect.ismodule(obj):
            names.add(f"llmkern.{name}")
    for name in llmkern.compress.__all__:
        if f"llmkern.{name}" not in names:
            names.add(f"llmkern.compress.{name}")
    for name, obj in vars(lnn).items():
        if inspect.isclass(obj) and issubclass(obj, nn.Module):
            names.add(f"llmkern.nn.{name}")
    return names


def test_every_public_callable_is_covered():
    missing = public_callables() - COVERED
    assert not missing, f"add misuse cases to tests/ops/test_misuse.py for {sorted(missing)}"
    assert len(public_callables()) >= 30  # the walk itself found the API


# ---------------------------------------------------------------------------------------------
# Structured pruning (llmkern.prune_structure, llmkern.Recovery)
# ---------------------------------------------------------------------------------------------


def _tiny_llama(seed):
    import transformers

    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(vocab_size=40, hidden_size=32, num_hidden_layers=3,
                                   num_attention_heads=8, num_key_value_heads=2,
                                   intermediate_size=48, max_position_embeddings=32)  # fmt: skip
    return transformers.LlamaModel(cfg).eval()


def _token_batches(n, seed):
    g = _gen(seed)
    return [{"input_ids": torch.randint(0, 40, (2, 6), generator=g)} for _ in range(n)]


STRUCTURE_MISUSES = ("list", "generator", "single_dict", "empty", "unsupported", "bad_ratio",
                     "too_many_layers", "bad_recovery")  # fmt: skip


@covers("llmkern.prune_structure", "llmkern.Recovery")
@settings(max_examples=16, **SETTINGS)
@given(misuse=st.sampled_from(STRUCTURE_MISUSES), n_batches=st.integers(1, 3),
       seed=st.integers(0, 99))  # fmt: skip
def test_structure_misuse(misuse, n_batches, seed):
    data = _token_batches(n_batches, seed)
    model = Net(seed=seed) if misuse == "unsupported" else _tiny_llama(seed)
    snap = _state(model)
    kw = {"ffn": 0.5, "heads": 0.5, "layers": 1}
    if misuse in ("list", "generator"):
        calib = data if misuse == "list" else (b for b in data)
        llmkern.prune_structure(model, calibration=calib, **kw)
        ref = _tiny_llama(seed)
        llmkern.prune_structure(ref, calibration=data, **kw)
        assert not _same(model, snap)
        x = _token_batches(1, seed + 1)[0]
        with torch.no_grad():
            torch.testing.assert_close(model(**x).last_hidden_state,
                                       ref(**x).last_hidden_state, rtol=0, atol=0)  # fmt: skip
        return
    calls = {
        "single_dict": (TypeError, dict(calibration=data[0], **kw)),
        "empty": (ValueError, dict(calibration=[], **kw)),
        "unsupported": ((TypeError, ValueError), dict(calibration=data, **kw)),
        "bad_ratio": (ValueError, dict(calibration=data, ffn=1.5)),
        "too_many_layers": (ValueError, dict(calibration=data, layers=3)),
        "bad_recovery": ((TypeError, ValueError),
                         dict(calibration=data, recovery=llmkern.Recovery(data=[], steps=1), **kw)),
    }  # fmt: skip
    exc, kwargs = calls[misuse]
    with pytest.raises(exc):
        llmkern.prune_structure(model, **kwargs)
    assert _same(model, snap)
