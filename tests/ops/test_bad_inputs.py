"""Every public function and module with each kind of mistake, and the error it must raise.

One table: (id, call, exception type, message regex). Argument mistakes must be caught by the
Python checks before any kernel runs, so those rows run with every kernel entry point replaced by
one that fails the test; the rows about backend selection (``KERNEL_MAY_RUN``) are raised by the
registry itself and run unpatched.
"""

import pytest
import torch

import llmkern
import llmkern.nn as lnn
from llmkern.backends import BackendUnavailableError
from llmkern.ops import MAX_K_W8A8
from llmkern.ops import int8 as int8_ops
from llmkern.ops import kd as kd_ops
from llmkern.ops import sparse24 as sparse24_ops

I8, U8, F32, BF16 = torch.int8, torch.uint8, torch.float32, torch.bfloat16
META = torch.device("meta")  # a second device that exists on every machine


def i8(*shape):
    return torch.randint(-127, 128, shape, dtype=I8)


def f32(*shape, device=None):
    return torch.randn(*shape, device=device)


def scales(n):
    return torch.rand(n) + 0.1


def w24(n=3, k=8, dtype=F32):
    w = torch.randn(n, k) if dtype != I8 else torch.randint(-127, 128, (n, k)).float()
    return llmkern.prune_24(w.to(dtype))


def compressed(n=3, k=8, dtype=F32):
    # The reference directly: building valid inputs must not go through the (patched) dispatch.
    return sparse24_ops.compress_24_ref(w24(n, k, dtype))


def bad_code_meta():
    values, meta = compressed(2, 8)
    meta = meta.clone()
    meta[0, 0] = 0x5  # idx0 = 1, idx1 = 1: not increasing
    return values, meta


def kd(**kw):
    args = dict(
        student_logits=f32(4, 7), teacher_logits=f32(4, 7), labels=torch.tensor([0, 6, -100, 3])
    )
    args.update(kw)
    return llmkern.kd_loss(**args)


def kd_topk(**kw):
    lp, idx = torch.log_softmax(f32(3, 9), 1).topk(4, dim=1)
    args = dict(student_logits=f32(3, 9), topk_indices=idx, topk_logprobs=lp, labels=None)
    args.update(kw)
    return llmkern.kd_loss_topk(**args)


def w8a8(**kw):
    args = dict(x_q=i8(2, 8), w_q=i8(3, 8), x_scale=scales(2), w_scale=scales(3))
    args.update(kw)
    return llmkern.w8a8_matmul(**args)


def w8(**kw):
    args = dict(x=f32(2, 8), w_q=i8(3, 8), w_scale=scales(3))
    args.update(kw)
    return llmkern.w8_matmul(**args)


def s24(**kw):
    values, meta = compressed(3, 8)
    args = dict(x=f32(2, 8), values=values, meta=meta)
    args.update(kw)
    return llmkern.sparse24_matmul(**args)


def s24_w8a8(**kw):
    values, meta = compressed(3, 8, I8)
    args = dict(x_q=i8(2, 8), values=values, meta=meta, x_scale=scales(2), w_scale=scales(3))
    args.update(kw)
    return llmkern.sparse24_w8a8_matmul(**args)


def s24_w8(**kw):
    values, meta = compressed(3, 8, I8)
    args = dict(x=f32(2, 8), values=values, meta=meta, w_scale=scales(3))
    args.update(kw)
    return llmkern.sparse24_w8_matmul(**args)


def flkd(**kw):
    args = dict(student_hidden=f32(4, 6), student_head=f32(11, 6), teacher_hidden=f32(4, 5),
                teacher_head=f32(13, 5))  # fmt: skip
    args.update(kw)
    return llmkern.fused_linear_kd_loss(**args)


def case(case_id, call, exc, match):
    return pytest.param(call, exc, match, id=case_id)


# Rows whose error comes from backend selection (a kernel lookup is expected there).
KERNEL_MAY_RUN = {"backend-unknown", "backend-cuda-on-cpu", "backend-env-unknown"}

CASES = [
    # --- quantize_per_token -------------------------------------------------------------------
    case("qpt-not-tensor", lambda: llmkern.quantize_per_token([[1.0, 2.0]]), TypeError,
         "x must be a torch.Tensor"),
    case("qpt-1d", lambda: llmkern.quantize_per_token(f32(8)), ValueError, r"x must be 2-D"),
    case("qpt-3d", lambda: llmkern.quantize_per_token(f32(2, 2, 2)), ValueError, r"x must be 2-D"),
    case("qpt-int-dtype", lambda: llmkern.quantize_per_token(i8(2, 4)), TypeError,
         "x must have dtype float32/bfloat16/float16"),
    case("qpt-float64", lambda: llmkern.quantize_per_token(f32(2, 4).double()), TypeError,
         "x must have dtype"),
    case("qpt-empty", lambda: llmkern.quantize_per_token(f32(0, 4)), ValueError,
         "x must not be empty"),
    case("qpt-empty-k", lambda: llmkern.quantize_per_token(f32(3, 0)), ValueError,
         "x must not be empty"),
    # --- w8a8_matmul ----------------------------------------------------------------------------
    case("w8a8-xq-float", lambda: w8a8(x_q=f32(2, 8)), TypeError, "x_q must have dtype int8"),
    case("w8a8-wq-not-tensor", lambda: w8a8(w_q=[[1] * 8]), TypeError, "w_q must be a torch.Tensor"),
    case("w8a8-k-mismatch", lambda: w8a8(w_q=i8(3, 9)), ValueError, r"w_q must have shape \[N, 8\]"),
    case("w8a8-k-too-large", lambda: w8a8(x_q=i8(1, MAX_K_W8A8 + 1), w_q=i8(1, MAX_K_W8A8 + 1),
                                          x_scale=scales(1), w_scale=scales(1)),
         ValueError, "MAX_K_W8A8"),
    case("w8a8-xscale-shape", lambda: w8a8(x_scale=scales(3)), ValueError,
         r"x_scale must have shape \(2,\)"),
    case("w8a8-xscale-dtype", lambda: w8a8(x_scale=scales(2).half()), TypeError,
         "x_scale must have dtype float32"),
    case("w8a8-wscale-2d", lambda: w8a8(w_scale=scales(3)[:, None]), ValueError, "w_scale must be 1-D"),
    case("w8a8-wscale-nan", lambda: w8a8(w_scale=torch.tensor([1.0, float("nan"), 1.0])),
         ValueError, "w_scale must be finite"),
    case("w8a8-bias-shape", lambda: w8a8(bias=f32(4)), ValueError, r"bias must have shape \(3,\)"),
    case("w8a8-bias-dtype", lambda: w8a8(bias=torch.zeros(3, dtype=torch.int32)), TypeError,
         "bias must have dtype"),
    case("w8a8-out-dtype", lambda: w8a8(out_dtype=torch.int8), ValueError, "out_dtype must be one of"),
    case("w8a8-device", lambda: w8a8(x_scale=torch.ones(2, device=META)), ValueError,
         "all tensors must be on one device"),
    case("w8a8-empty", lambda: w8a8(x_q=i8(0, 8), x_scale=scales(0)), ValueError,
         "x_q must not be empty"),
    # --- w8_matmul ------------------------------------------------------------------------------
    case("w8-x-int", lambda: w8(x=i8(2, 8)), TypeError, "x must have dtype"),
    case("w8-wq-float", lambda: w8(w_q=f32(3, 8)), TypeError, "w_q must have dtype int8"),
    case("w8-k-mismatch", lambda: w8(x=f32(2, 7)), ValueError, r"x must have shape \[M, 8\]"),
    case("w8-group-negative", lambda: w8(group_size=-1), ValueError, "group_size must be an int"),
    case("w8-group-float", lambda: w8(group_size=4.0), ValueError, "group_size must be an int"),
    case("w8-group-bool", lambda: w8(group_size=True), ValueError, "group_size must be an int"),
    case("w8-wscale-channel-shape", lambda: w8(w_scale=scales(4)), ValueError,
         r"w_scale must have shape \(3,\)"),
    case("w8-wscale-group-shape", lambda: w8(w_scale=scales(3), group_size=4), ValueError,
         r"w_scale must have shape \(3, 2\)"),
    case("w8-wscale-inf", lambda: w8(w_scale=torch.tensor([1.0, float("inf"), 1.0])), ValueError,
         "w_scale must be finite"),
    case("w8-wscale-dtype", lambda: w8(w_scale=scales(3).double()), TypeError,
         "w_scale must have dtype float32"),
    case("w8-bias-2d", lambda: w8(bias=f32(1, 3)), ValueError, "bias must be 1-D"),
    case("w8-device", lambda: w8(x=f32(2, 8, device=META)), ValueError,
         "all tensors must be on one device"),
    # --- quantize_weight ------------------------------------------------------------------------
    case("qw-not-tensor", lambda: llmkern.quantize_weight(3.0), TypeError, "w must be a torch.Tensor"),
    case("qw-1d", lambda: llmkern.quantize_weight(f32(8)), ValueError, "w must be 2-D"),
    case("qw-int8", lambda: llmkern.quantize_weight(i8(2, 4)), TypeError, "w must have dtype"),
    case("qw-inf", lambda: llmkern.quantize_weight(torch.tensor([[1.0, float("inf")]])), ValueError,
         "w must be finite"),
    case("qw-group-negative", lambda: llmkern.quantize_weight(f32(2, 4), -2), ValueError,
         "group_size must be an int"),
    # --- compress_24 / decompress_24 / prune_24 ---------------------------------------------------
    case("c24-not-tensor", lambda: llmkern.compress_24("w"), TypeError, "w must be a torch.Tensor"),
    case("c24-k-not-mult-4", lambda: llmkern.compress_24(torch.zeros(2, 6)), ValueError,
         "multiple of 4"),
    case("c24-not-24", lambda: llmkern.compress_24(torch.ones(2, 8)), ValueError,
         r"not 2:4 sparse: row 0, columns 0\.\.3"),
    case("c24-3d", lambda: llmkern.compress_24(torch.zeros(2, 2, 4)), ValueError, "w must be 2-D"),
    case("c24-float64", lambda: llmkern.compress_24(torch.zeros(2, 8, dtype=torch.float64)),
         TypeError, "w must have dtype"),
    case("d24-values-not-tensor", lambda: llmkern.decompress_24("v", compressed()[1]), TypeError,
         "values must be a torch.Tensor"),
    case("d24-values-1d", lambda: llmkern.decompress_24(f32(4), compressed()[1]), ValueError,
         "values must be 2-D"),
    case("d24-meta-dtype", lambda: llmkern.decompress_24(compressed()[0], compressed()[1].long()),
         TypeError, "meta must have dtype uint8"),
    case("d24-meta-shape", lambda: llmkern.decompress_24(compressed()[0], torch.zeros(3, 2, dtype=U8)),
         ValueError, r"meta must have shape \(3, 1\)"),
    case("d24-k-not-mult-4", lambda: llmkern.decompress_24(*compressed(), k=6), ValueError,
         "multiple of 4"),
    case("d24-k-mismatch", lambda: llmkern.decompress_24(*compressed(), k=16), ValueError,
         r"values must have shape \[N, K/2\]"),
    case("d24-k-str", lambda: llmkern.decompress_24(*compressed(), k="8"), TypeError,
         "K must be an int"),
    case("d24-bad-code", lambda: llmkern.decompress_24(*bad_code_meta()), ValueError,
         "invalid 2:4 code"),
    case("d24-device", lambda: llmkern.decompress_24(compressed()[0].to(META), compressed()[1]),
         ValueError, "all tensors must be on one device"),
    case("p24-not-tensor", lambda: llmkern.prune_24([[1.0] * 4]), TypeError, "w must be a torch.Tensor"),
    case("p24-scores-shape", lambda: llmkern.prune_24(f32(2, 8), f32(2, 4)), ValueError,
         r"scores must have shape \(2, 8\)"),
    case("p24-scores-not-tensor", lambda: llmkern.prune_24(f32(2, 8), 1.0), TypeError,
         "scores must be a torch.Tensor"),
    case("p24-n-gt-m", lambda: llmkern.prune_24(f32(2, 8), n=5, m=4), ValueError, "need 0 < n <= m"),
    case("p24-n-zero", lambda: llmkern.prune_24(f32(2, 8), n=0), ValueError, "need 0 < n <= m"),
    case("p24-k-not-mult-m", lambda: llmkern.prune_24(f32(2, 6)), ValueError, r"the last dim \(6\) is not a multiple of m=4"),
    case("p24-n-float", lambda: llmkern.prune_24(f32(2, 8), n=2.0), TypeError, "n and m must be ints"),
    # --- sparse24 matmuls -----------------------------------------------------------------------
    case("s24-x-int", lambda: s24(x=i8(2, 8)), TypeError, "x must have dtype"),
    case("s24-values-dtype", lambda: s24(x=f32(2, 8).half()), TypeError,
         "values must have dtype float16"),
    case("s24-values-1d", lambda: s24(values=f32(4)), ValueError, "values must be 2-D"),
    case("s24-values-not-tensor", lambda: s24(values=None), TypeError, "values must be a torch.Tensor"),
    case("s24-k-mismatch", lambda: s24(x=f32(2, 12)), ValueError, "x must have K = 2"),
    case("s24-meta-shape", lambda: s24(meta=torch.zeros(3, 2, dtype=U8)), ValueError,
         r"meta must have shape \(3, 1\)"),
    case("s24-meta-dtype", lambda: s24(meta=torch.zeros(3, 1, dtype=I8)), TypeError,
         "meta must have dtype uint8"),
    case("s24-bias-shape", lambda: s24(bias=f32(2)), ValueError, r"bias must have shape \(3,\)"),
    case("s24-device", lambda: s24(bias=f32(3, device=META)), ValueError,
         "all tensors must be on one device"),
    case("s24w8a8-xq-float", lambda: s24_w8a8(x_q=f32(2, 8)), TypeError, "x_q must have dtype int8"),
    case("s24w8a8-values-float", lambda: s24_w8a8(values=compressed(3, 8)[0]), TypeError,
         "values must have dtype int8"),
    case("s24w8a8-k-too-large", lambda: s24_w8a8(
        x_q=i8(1, MAX_K_W8A8 + 1 + 3 - (MAX_K_W8A8 + 1 + 3) % 4),
        values=i8(3, (MAX_K_W8A8 + 1 + 3 - (MAX_K_W8A8 + 1 + 3) % 4) // 2), x_scale=scales(1)),
        ValueError, "MAX_K_W8A8"),
    case("s24w8a8-xscale-shape", lambda: s24_w8a8(x_scale=scales(5)), ValueError,
         r"x_scale must have shape \(2,\)"),
    case("s24w8a8-wscale-group", lambda: s24_w8a8(w_scale=scales(3)[:, None].repeat(1, 2)),
         ValueError, r"w_scale must have shape \(3,\)"),
    case("s24w8a8-out-dtype", lambda: s24_w8a8(out_dtype=torch.int32), ValueError,
         "out_dtype must be one of"),
    case("s24w8-x-int", lambda: s24_w8(x=i8(2, 8)), TypeError, "x must have dtype"),
    case("s24w8-values-float", lambda: s24_w8(values=compressed(3, 8)[0]), TypeError,
         "values must have dtype int8"),
    case("s24w8-wscale-nan", lambda: s24_w8(w_scale=torch.full((3,), float("nan"))), ValueError,
         "w_scale must be finite"),
    # --- kd_loss --------------------------------------------------------------------------------
    case("kd-student-1d", lambda: kd(student_logits=f32(7)), ValueError, "student_logits must be 2-D"),
    case("kd-student-int", lambda: kd(student_logits=i8(4, 7)), TypeError,
         "student_logits must have dtype"),
    case("kd-student-empty", lambda: kd(student_logits=f32(0, 7), teacher_logits=f32(0, 7), labels=None),
         ValueError, "student_logits must not be empty"),
    case("kd-teacher-not-tensor", lambda: kd(teacher_logits=None), TypeError,
         "teacher_logits must be a torch.Tensor"),
    case("kd-teacher-rows", lambda: kd(teacher_logits=f32(3, 7)), ValueError,
         r"teacher_logits must have shape \[4, V_t\]"),
    case("kd-teacher-small-vocab", lambda: kd(teacher_logits=f32(4, 6)), ValueError, "V_t >= V = 7"),
    case("kd-labels-float", lambda: kd(labels=torch.zeros(4)), TypeError, "labels must have dtype"),
    case("kd-labels-length", lambda: kd(labels=torch.zeros(5, dtype=torch.long)), ValueError,
         r"labels must have shape \(4,\)"),
    case("kd-labels-out-of-range", lambda: kd(labels=torch.tensor([0, 7, 1, 2])), ValueError,
         r"labels must be in \[0, 7\) or ignore_index=-100; labels\[1\] = 7"),
    case("kd-labels-negative", lambda: kd(labels=torch.tensor([0, -1, 1, 2])), ValueError,
         r"labels\[1\] = -1"),
    case("kd-tau-zero", lambda: kd(temperature=0.0), ValueError, "temperature must be > 0"),
    case("kd-tau-negative", lambda: kd(temperature=-2.0), ValueError, "temperature must be > 0"),
    case("kd-tau-nan", lambda: kd(temperature=float("nan")), ValueError, "temperature must be finite"),
    case("kd-tau-inf", lambda: kd(temperature=float("inf")), ValueError, "temperature must be finite"),
    case("kd-tau-str", lambda: kd(temperature="2"), TypeError, "temperature must be a float"),
    case("kd-tau-tensor", lambda: kd(temperature=torch.tensor(2.0)), TypeError,
         "temperature must be a float"),
    case("kd-alpha-high", lambda: kd(alpha=1.5), ValueError, "alpha must be <= 1"),
    case("kd-alpha-negative", lambda: kd(alpha=-0.1), ValueError, "alpha must be >= 0"),
    case("kd-beta-high", lambda: kd(divergence="jsd", beta=2.0), ValueError, "beta must be <= 1"),
    case("kd-reduction", lambda: kd(reduction="avg"), ValueError, "reduction must be one of"),
    case("kd-divergence", lambda: kd(divergence="js"), ValueError, "divergence must be one of"),
    case("kd-ignore-index-none", lambda: kd(ignore_index=None), TypeError,
         "ignore_index must be an int"),
    case("kd-device", lambda: kd(teacher_logits=f32(4, 7, device=META)), ValueError,
         "all tensors must be on one device"),
    case("kdtopk-indices-int32", lambda: kd_topk(topk_indices=torch.zeros(3, 4, dtype=torch.int32)),
         TypeError, "topk_indices must have dtype int64"),
    case("kdtopk-k-gt-v", lambda: kd_topk(topk_indices=torch.zeros(3, 10, dtype=torch.long),
                                          topk_logprobs=f32(3, 10)),
         ValueError, r"topk_indices must have shape \[3, k\] with k <= 9"),
    case("kdtopk-index-range", lambda: kd_topk(topk_indices=torch.full((3, 4), 9)), ValueError,
         r"topk_indices must be in \[0, 9\)"),
    case("kdtopk-logprobs-shape", lambda: kd_topk(topk_logprobs=f32(3, 5)), ValueError,
         r"topk_logprobs must have shape \(3, 4\)"),
    case("kdtopk-logprobs-int", lambda: kd_topk(topk_logprobs=torch.zeros(3, 4, dtype=torch.long)),
         TypeError, "topk_logprobs must have dtype"),
    case("kdtopk-tau", lambda: kd_topk(temperature=0), ValueError, "temperature must be > 0"),
    # --- w8a8_linear / w8_linear (the modules' fused forward) -----------------------------------
    case("w8a8lin-x-int", lambda: int8_ops.w8a8_linear(i8(2, 8), i8(3, 8), scales(3)), TypeError,
         "x must have dtype"),
    case("w8a8lin-static-scale-shape", lambda: int8_ops.w8a8_linear(f32(2, 8), i8(3, 8), scales(3),
                                                                    x_scale=scales(2)),
         ValueError, "x_scale \\(static\\) must hold one per-tensor value"),
    case("w8a8lin-static-scale-negative", lambda: int8_ops.w8a8_linear(
        f32(2, 8), i8(3, 8), scales(3), x_scale=torch.tensor(-1.0)), ValueError, "finite and > 0"),
    case("w8a8lin-packed-dtype", lambda: int8_ops.w8a8_linear(f32(2, 8), i8(3, 8), scales(3),
                                                              packed=torch.zeros(4)),
         TypeError, "packed must have dtype uint8"),
    case("w8lin-packed-2d", lambda: int8_ops.w8_linear(f32(2, 8), i8(3, 8), scales(3),
                                                       packed=torch.zeros(2, 2, dtype=U8)),
         ValueError, "packed must be 1-D"),
    case("w8lin-k-mismatch", lambda: int8_ops.w8_linear(f32(2, 9), i8(3, 8), scales(3)), ValueError,
         r"x must have shape \[M, 8\]"),
    # --- fused_linear_kd_loss -------------------------------------------------------------------
    case("flkd-head-shape", lambda: flkd(student_head=f32(11, 7)), ValueError,
         r"student_head must have shape \(11, 6\)"),
    case("flkd-teacher-vocab", lambda: flkd(teacher_head=f32(10, 5)), ValueError,
         r"teacher_head must have shape \[V_t >= 11, 5\]"),
    case("flkd-hidden-1d", lambda: flkd(student_hidden=f32(6)), ValueError,
         "student_hidden must be 2-D"),
    case("flkd-teacher-rows", lambda: flkd(teacher_hidden=f32(3, 5)), ValueError,
         "teacher_hidden must have 4 rows"),
    case("flkd-tau", lambda: flkd(temperature=0), ValueError, "temperature must be > 0"),
    case("flkd-chunk", lambda: flkd(chunk_size=0), ValueError, "chunk_size must be a positive int"),
    case("flkd-labels-range", lambda: flkd(labels=torch.tensor([0, 1, 2, 11])), ValueError,
         r"labels\[3\] = 11"),
    case("flkd-int-dtype", lambda: flkd(teacher_hidden=i8(4, 5)), TypeError,
         "teacher_hidden must have dtype"),
    # --- modules (construction may run kernels; the forward checks come first) -------------------
    case("nn-int8-from-float-type", lambda: lnn.Int8Linear.from_float("x"), TypeError,
         "from_float expects an nn.Linear"),
    case("nn-int8-input-features", lambda: lnn.Int8Linear.from_float(torch.nn.Linear(8, 3))(
        f32(2, 9)), ValueError, r"input must have shape \[\.\.\., 8\]"),
    case("nn-int8wo-group", lambda: lnn.Int8WeightOnlyLinear.from_float(torch.nn.Linear(8, 3),
                                                                        group_size=-1),
         ValueError, "group_size must be an int >= 0"),
    case("nn-qat-from-float-type", lambda: lnn.Int8LinearQAT.from_float(torch.nn.Conv1d(2, 2, 1)),
         TypeError, "from_float expects an nn.Linear"),
    case("nn-qat-input-features", lambda: lnn.Int8LinearQAT.from_float(torch.nn.Linear(8, 3))(
        f32(2, 7)), ValueError, r"input must have shape \[\.\.\., 8\]"),
    case("nn-sparse-int8-form", lambda: lnn.Sparse24Linear(8, 3, int8="int4"), ValueError,
         "int8 must be None or one of"),
    case("nn-sparse-input-features", lambda: lnn.Sparse24Linear.from_float(torch.nn.Linear(8, 3))(
        f32(2, 9)), ValueError, "x must have last dim in_features=8"),
    case("nn-kdloss-tau", lambda: lnn.KDLoss(temperature=0), ValueError, "temperature must be > 0"),
    case("nn-kdloss-rows", lambda: lnn.KDLoss()(f32(2, 5), f32(3, 5)), ValueError,
         "teacher_logits must have shape"),
    case("nn-flkdloss-alpha", lambda: lnn.FusedLinearKDLoss(alpha=2), ValueError,
         "alpha must be <= 1"),
    # --- backend selection (raised by the registry) ---------------------------------------------
    case("backend-unknown", lambda: llmkern.quantize_per_token(f32(2, 4), backend="fortran"),
         ValueError, "backend must be one of"),
    case("backend-cuda-on-cpu", lambda: w8(backend="cuda"), BackendUnavailableError,
         "backend 'cuda'"),
]  # fmt: skip


def _fail_if_a_kernel_runs(*args, **kwargs):
    raise AssertionError("a kernel ran before the argument check raised")


@pytest.mark.parametrize("call,exc,match", CASES)
def test_bad_input_raises_before_any_kernel(call, exc, match, request, monkeypatch):
    case_id = request.node.callspec.id
    if case_id not in KERNEL_MAY_RUN and not case_id.startswith("nn-"):
        for module in (int8_ops, sparse24_ops, kd_ops):
            monkeypatch.setattr(module, "dispatch", _fail_if_a_kernel_runs)
    with pytest.raises(exc, match=match):
        call()


def test_backend_env_unknown_is_rejected(monkeypatch):
    monkeypatch.setenv("LLMKERN_BACKEND", "fortran")
    with pytest.raises(ValueError, match="LLMKERN_BACKEND must be one of"):
        llmkern.kd_loss(f32(2, 3), f32(2, 3))


def test_every_public_function_has_a_row():
    """A new public op must add its mistakes to the table."""
    covered = {
        "quantize_per_token": "qpt", "w8a8_matmul": "w8a8", "w8_matmul": "w8-",
        "quantize_weight": "qw", "compress_24": "c24", "decompress_24": "d24", "prune_24": "p24",
        "sparse24_matmul": "s24-", "sparse24_w8a8_matmul": "s24w8a8", "sparse24_w8_matmul": "s24w8-",
        "kd_loss": "kd-", "kd_loss_topk": "kdtopk", "fused_linear_kd_loss": "flkd",
    }  # fmt: skip
    ids = [p.id for p in CASES]
    public = [
        n
        for n in llmkern.ops.__dict__
        if callable(getattr(llmkern.ops, n)) and not n.startswith("_")
    ]
    missing = [n for n in public if n not in covered]
    assert not missing, f"public ops without bad-input rows: {missing}"
    for name, prefix in covered.items():
        assert any(i.startswith(prefix) for i in ids), name
    modules = {n for n, o in vars(lnn).items() if isinstance(o, type)}
    tested = {"Int8Linear": "nn-int8-", "Int8WeightOnlyLinear": "nn-int8wo", "Int8LinearQAT": "nn-qat",
              "Sparse24Linear": "nn-sparse", "KDLoss": "nn-kdloss", "FusedLinearKDLoss": "nn-flkd"}  # fmt: skip
    assert modules <= set(tested), f"modules without bad-input rows: {modules - set(tested)}"
    for prefix in tested.values():
        assert any(i.startswith(prefix) for i in ids), prefix
