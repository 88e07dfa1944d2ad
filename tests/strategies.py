"""Hypothesis inputs and checks shared by the property tests of every public op
(tests/ops/test_*_properties.py), on every backend that runs CPU tensors.

Each example draws a shape (1 and odd sizes included), a memory layout (contiguous, transposed,
sliced with an offset and stride 2: the gaps hold NaN or an int8 sentinel, so a kernel that reads
outside the view shows it), dtypes and a value range (tiny/subnormal, unit, huge, and inf/NaN
where the op defines a result). A fast kernel is compared with the reference on the same inputs;
the reference itself is compared with an independent float64 formulation. The cpu backend draws
its ISA path (llmkern._C.set_isa) per example, so every path sees every kind of input.

Tolerances follow from where implementations may legitimately differ: the order of float32
accumulation (K * 2^-23 of the sum of |products|), one rounding to the output dtype, and for the
KD loss the float32 error of log-softmax at z / tau (docs/numerics.md).

Examples per op and backend: LLMKERN_PROPERTY_EXAMPLES (default 60, Triton under the interpreter 4)
and a count of the examples actually run (``COUNTS``) is printed at the end of the session by
tests/ops/conftest.py (and written as JSON to $LLMKERN_PROPERTY_COUNTS when set).
"""

import collections
import contextlib
import math
import os

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmkern import _ext, backends
from llmkern.backends import BackendUnavailableError

F32, BF16, F16, F64, I8 = torch.float32, torch.bfloat16, torch.float16, torch.float64, torch.int8
FLOATS = (F32, BF16, F16)
EXAMPLES = int(os.environ.get("LLMKERN_PROPERTY_EXAMPLES", "60"))
TRITON_EXAMPLES = 4
U = {F32: 2.0**-24, BF16: 2.0**-8, F16: 2.0**-11, F64: 2.0**-53}  # unit roundoff
TINY = {F32: 1e-36, BF16: 1e-36, F16: 2.0**-23, F64: 1e-300}  # absolute floor near underflow
ISAS = ("scalar", "avx2", "avx512", "avx512_vnni", "amx")
COUNTS: collections.Counter = collections.Counter()


def cpu_backends(op):
    """Every backend whose kernel for ``op`` runs CPU tensors in this process (picked up
    automatically as kernels are registered)."""
    names = []
    for name, kernel in sorted(backends.kernels(op).items()):
        if "cpu" in kernel.devices and backends.backend_available(name, "cpu")[0]:
            names.append(name)
    return names


def isa_paths():
    if not _ext.available():
        return ["scalar"]
    best = _ext._C.detected_isa()
    return list(ISAS[: ISAS.index(best) + 1])


@contextlib.contextmanager
def isa_env(isa):
    """The C++ CPU kernels on ISA path ``isa`` inside the block (``llmkern._C.set_isa``), the
    default after it."""
    _ext._C.set_isa(isa)
    try:
        yield
    finally:
        _ext._C.set_isa(None)


# Reported kernel bugs not fixed yet, (op, backend) -> names: examples that would hit one are
# counted and skipped for that backend, so the rest of its input space stays tested. Empty now:
# the tiny-row, JSD and strided-student bugs found here were fixed in the kernels.
KNOWN_BUGS: dict[tuple[str, str], str] = {}


class KnownBug(Exception):
    """Raised by a body for an input that hits a reported bug of this backend."""


def known_bug(op, backend, bug, hit):
    if hit and bug in KNOWN_BUGS.get((op, backend), ""):
        raise KnownBug(bug)


def interpreted_bf16_subnormals(backend, *tensors):
    """Skip (counted as a known bug) an example whose bf16 CPU tensors hold a subnormal on the
    triton backend: there it runs in Triton's interpreter, which widens bf16 subnormals to fp32
    as if they were normal (triton 3.9: 5.79e-39 -> 1.14e-38), so such an example tests the
    interpreter, not the kernel (a GPU converts them exactly)."""
    tiny = torch.finfo(torch.bfloat16).tiny
    hit = backend == "triton" and any(
        t is not None
        and t.device.type == "cpu"
        and t.dtype == torch.bfloat16
        and ((t != 0) & (t.abs() < tiny)).any()
        for t in tensors
    )
    if hit:
        raise KnownBug("triton interpreter: bf16 subnormals")


def row_major(t):
    """Strides exactly (V, 1): stricter than is_contiguous(), which ignores size-1 dims."""
    return t.stride() == (t.shape[1], 1)


def run_examples(op, backend, body):
    """Run ``body(data, backend, small)`` as a hypothesis property for ``backend`` and count the
    examples. Calls the backend declines (its ``supports`` predicate) are counted separately."""
    small = backend == "triton"
    n = TRITON_EXAMPLES if small else EXAMPLES

    @settings(
        max_examples=n,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        print_blob=True,
    )
    @given(st.data())
    def prop(data):
        isa = data.draw(st.sampled_from(isa_paths()), label="isa") if backend == "cpu" else None
        with isa_env(isa) if isa else contextlib.nullcontext():
            try:
                body(data, backend, small)
            except BackendUnavailableError:
                COUNTS[f"{op}[{backend}] declined"] += 1
                return
            except KnownBug as bug:
                COUNTS[f"{op}[{backend}] skipped, known bug {bug}"] += 1
                return
        COUNTS[f"{op}[{backend}]"] += 1

    prop()


# ---------------------------------------------------------------------------------------------
# Input strategies
# ---------------------------------------------------------------------------------------------

LAYOUTS = ("contiguous", "transposed", "sliced")


def dim(data, label, small, hi=80, lo=1):
    """A size: often tiny or odd, sometimes a larger one past SIMD widths and tile edges."""
    if small:
        return data.draw(st.integers(lo, 9), label=label)
    return data.draw(st.one_of(st.integers(lo, 9), st.integers(lo, hi)), label=label)


def gen(data):
    g = torch.Generator().manual_seed(data.draw(st.integers(0, 2**31 - 1), label="seed"))
    return g


def lay(t, layout):
    """The same values in another memory layout."""
    if layout == "contiguous":
        return t.contiguous()
    if layout == "transposed" and t.dim() == 2:
        return t.t().contiguous().t()
    if layout == "transposed":
        return t.contiguous()
    # Sliced: a view at offset > 0 with stride 2 in the last dim; the gaps hold a sentinel.
    shape = list(t.shape)
    shape[-1] = 2 * shape[-1] + 1
    if t.dim() == 2:
        shape[0] += 1
    fill = 127 if not t.is_floating_point() else float("nan")
    big = torch.full(shape, fill, dtype=t.dtype)
    view = big[1:, 1::2] if t.dim() == 2 else big[1::2]
    view.copy_(t)
    return view


def layout(data, label="layout"):
    return data.draw(st.sampled_from(LAYOUTS), label=label)


RANGES = ("tiny", "small", "unit", "large", "huge", "mixed")


def magnitude(rng, dtype):
    """Typical |value| of a range for a dtype (huge stays clear of overflow in the ops' sums)."""
    table = {
        F32: {"tiny": 1e-39, "small": 1e-4, "unit": 1.0, "large": 1e4, "huge": 1e30},
        BF16: {"tiny": 1e-37, "small": 1e-4, "unit": 1.0, "large": 1e4, "huge": 1e30},
        F16: {"tiny": 1e-6, "small": 1e-3, "unit": 1.0, "large": 30.0, "huge": 100.0},
    }
    return table[dtype][rng]


def values(g, shape, dtype, rng):
    """Random values of ``dtype`` in range ``rng``; "mixed" spans tiny to huge across rows."""
    x = torch.randn(shape, generator=g)
    if rng == "mixed":
        lo, hi = math.log10(magnitude("tiny", dtype)), math.log10(magnitude("huge", dtype))
        x = x * torch.logspace(lo, hi, shape[0])[:, None]
    else:
        x = x * magnitude(rng, dtype)
    return x.to(dtype)


def matmul_bound(x, w, bias, k, out_dtype):
    """|kernel - reference| bound for an fp32-accumulated x @ w.T + bias, per element."""
    absdot = x.abs().double() @ w.abs().double().T
    if bias is not None:
        absdot = absdot + bias.abs().double()[None, :]
    return (2 * (k + 2) * U[F32] + 2 * U[out_dtype]) * absdot + TINY[out_dtype]


def w8_rounding_bound(x, w, group_size):
    """Twice what the cpu weight-only kernels' int16 rounding of x can add to a product with
    dequantised weight w (docs/numerics.md); 0 for calls they do not round."""
    from llmkern.cpu import int8 as cpu_int8

    if not cpu_int8.w8_rounds_x(x, group_size):
        return 0
    return 2 * cpu_int8.x_rounding_bound(x, w)


def assert_within(got, want, bound, what):
    """Same NaN pattern, same infinities, finite entries within ``bound``."""
    assert got.shape == want.shape, what
    got, want = got.double(), want.double()
    nan = torch.isnan(want)
    assert torch.equal(torch.isnan(got), nan), f"{what}: NaN pattern differs"
    inf = torch.isinf(want)
    assert torch.equal(got[inf], want[inf]) and not torch.isinf(got[~inf]).any(), (
        f"{what}: infinities differ"
    )
    fin = ~(nan | inf)
    bound = torch.as_tensor(bound, dtype=torch.float64).expand_as(want)
    err = (got - want).abs()
    bad = fin & (err > bound)
    if bad.any():
        i = tuple(int(v) for v in bad.nonzero()[0])
        raise AssertionError(
            f"{what}: {int(bad.sum())} elements outside the bound; at {i}: got {got[i].item()!r}, "
            f"want {want[i].item()!r}, |diff| {err[i].item():.3g} > bound {bound[i].item():.3g}"
        )


def with_backend(backend):
    return {"backend": backend}


def int8_tensor(g, shape, full_range=True):
    lo = -128 if full_range else -127
    return torch.randint(lo, 128, shape, generator=g, dtype=I8)


def maybe_bias(data, g, n, label="bias"):
    kind = data.draw(st.sampled_from((None,) + FLOATS), label=label)
    if kind is None:
        return None
    return lay(torch.randn(n, generator=g).to(kind), layout(data, "bias_layout"))
