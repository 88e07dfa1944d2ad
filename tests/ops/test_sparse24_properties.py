"""Property-based tests (hypothesis) of the 2:4 ops: prune_24, compress_24, decompress_24 and
sparse24_matmul, on every backend that runs CPU tensors. Inputs, tolerances and example counts:
tests/strategies.py (the int8 2:4 matmuls are in test_int8_properties.py)."""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import llmkern
from llmkern.ops import sparse24 as s24
from tests.strategies import (
    COUNTS,
    EXAMPLES,
    FLOATS,
    I8,
    RANGES,
    assert_within,
    cpu_backends,
    dim,
    gen,
    int8_tensor,
    interpreted_bf16_subnormals,
    lay,
    layout,
    matmul_bound,
    maybe_bias,
    run_examples,
    values,
    with_backend,
)

# ---------------------------------------------------------------------------------------------
# 2:4 format: prune, compress, decompress
# ---------------------------------------------------------------------------------------------


WEIGHT_RANGES = ("tiny", "small", "unit")  # times x up to "huge" stays finite in every dtype


def sparse_weight(data, g, n, k, dtype, ranges=RANGES):
    """A 2:4 weight with random kept positions, some groups with fewer than 2 non-zeros."""
    if dtype == I8:
        w = int8_tensor(g, (n, k))
    else:
        w = values(g, (n, k), dtype, data.draw(st.sampled_from(ranges), label="w_range"))
    w = llmkern.prune_24(w, torch.rand(n, k, generator=g))
    drop = torch.rand(n, k, generator=g) < data.draw(st.sampled_from((0.0, 0.3, 1.0)), label="drop")
    return torch.where(drop, torch.zeros((), dtype=dtype), w)


def compress_oracle(w):
    """Per group: non-zero positions, filled up with the lowest zero positions, 4-bit codes."""
    n, k = w.shape
    rows = w.tolist()
    values = [[0] * (k // 2) for _ in range(n)]
    meta = [[0] * (-(-k // 8)) for _ in range(n)]
    for r in range(n):
        for grp in range(k // 4):
            block = rows[r][4 * grp : 4 * grp + 4]
            nz = [j for j in range(4) if block[j] != 0]
            kept = sorted(nz + [j for j in range(4) if j not in nz][: 2 - len(nz)])
            values[r][2 * grp : 2 * grp + 2] = [block[j] for j in kept]
            meta[r][grp // 2] |= (kept[0] | (kept[1] << 2)) << (4 * (grp % 2))
    return torch.tensor(values, dtype=w.dtype), torch.tensor(meta, dtype=torch.uint8)


def compress_body(data, backend, small):
    g = gen(data)
    n, k = dim(data, "n", small, 12), 4 * dim(data, "k/4", small, 24)
    dtype = data.draw(st.sampled_from(FLOATS + (I8,)), label="dtype")
    w = lay(sparse_weight(data, g, n, k, dtype), layout(data))
    vals, meta = llmkern.compress_24(w, **with_backend(backend))
    want_v, want_m = compress_oracle(w) if backend == "reference" else s24.compress_24_ref(w)
    assert torch.equal(meta, want_m), "meta differs"
    assert vals.dtype == dtype and torch.equal(vals, want_v), "values differ"
    dec = backend if backend in cpu_backends("decompress_24") else "reference"
    back = llmkern.decompress_24(lay(vals, layout(data, "v_layout")), meta, k, backend=dec)
    assert back.dtype == dtype and torch.equal(back, w), "round trip differs"


@pytest.mark.parametrize("backend", cpu_backends("compress_24"))
def test_compress_24(backend):
    run_examples("compress_24", backend, compress_body)


def decompress_body(data, backend, small):
    """Arbitrary valid codes (not only those compress_24 emits) decode to the right positions."""
    g = gen(data)
    n, k = dim(data, "n", small, 12), 4 * dim(data, "k/4", small, 24)
    dtype = data.draw(st.sampled_from(FLOATS + (I8,)), label="dtype")
    valid = torch.tensor([0 | 1 << 2, 0 | 2 << 2, 0 | 3 << 2, 1 | 2 << 2, 1 | 3 << 2, 2 | 3 << 2])
    codes = valid[torch.randint(0, 6, (n, -(-k // 8) * 2), generator=g)]
    if (k // 4) % 2:
        codes[:, -1] = 0  # the unused high nibble
    meta = (codes[:, 0::2] | (codes[:, 1::2] << 4)).to(torch.uint8)
    vals = int8_tensor(g, (n, k // 2)) if dtype == I8 else values(g, (n, k // 2), dtype, "unit")
    got = llmkern.decompress_24(lay(vals, layout(data)), lay(meta, layout(data, "meta_layout")), k,
                                **with_backend(backend))  # fmt: skip
    want = torch.zeros(n, k, dtype=dtype)
    for grp in range(k // 4):
        c = codes[:, grp]
        for slot, pos in ((0, c & 3), (1, c >> 2)):
            want[torch.arange(n), 4 * grp + pos] = vals[:, 2 * grp + slot]
    assert torch.equal(got, want)


@pytest.mark.parametrize("backend", cpu_backends("decompress_24"))
def test_decompress_24(backend):
    run_examples("decompress_24", backend, decompress_body)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.data())
def test_prune_24(data):
    """n:m pruning keeps exactly the n highest scores per group (ties: lower position), as-is."""
    g = gen(data)
    m_ = data.draw(st.sampled_from((4, 8)), label="m")
    n_ = data.draw(st.integers(1, m_), label="n")
    rows, k = dim(data, "rows", False, 10), m_ * dim(data, "k/m", False, 12)
    dtype = data.draw(st.sampled_from(FLOATS + (I8,)), label="dtype")
    w = int8_tensor(g, (rows, k)) if dtype == I8 else values(g, (rows, k), dtype, "unit")
    ties = data.draw(st.booleans(), label="ties")
    scores = torch.randint(0, 3, (rows, k), generator=g).float() if ties else None
    w = lay(w, layout(data))
    got = llmkern.prune_24(w, scores, n=n_, m=m_)
    s = (w.double().abs() if scores is None else scores.double()).tolist()
    wl, gl = w.double().tolist(), got.double().tolist()
    for r in range(rows):
        for grp in range(k // m_):
            cols = range(grp * m_, grp * m_ + m_)
            kept = sorted(cols, key=lambda j: (-s[r][j], j))[:n_]
            assert [gl[r][j] for j in cols] == [wl[r][j] if j in kept else 0 for j in cols]
    COUNTS["prune_24[python]"] += 1


# ---------------------------------------------------------------------------------------------
# sparse24_matmul
# ---------------------------------------------------------------------------------------------


def sparse24_body(data, backend, small):
    g = gen(data)
    m, n = dim(data, "m", small, 80), dim(data, "n", small, 40)  # m: column tiles (12+ or 16+ rows)
    k = 4 * dim(data, "k/4", small, 48)
    dtype = data.draw(st.sampled_from(FLOATS), label="dtype")
    x = lay(values(g, (m, k), dtype, data.draw(st.sampled_from(RANGES), label="x_range")),
            layout(data, "x_layout"))  # fmt: skip
    w = sparse_weight(data, g, n, k, dtype, WEIGHT_RANGES)
    vals, meta = s24.compress_24_ref(w)
    vals = lay(vals, layout(data, "values_layout"))
    meta = lay(meta, layout(data, "meta_layout"))
    bias = maybe_bias(data, g, n)
    interpreted_bf16_subnormals(backend, x, w, bias)
    out = llmkern.sparse24_matmul(x, vals, meta, bias, **with_backend(backend))
    if backend == "reference":
        want = x.double() @ w.double().T + (bias.double()[None, :] if bias is not None else 0)
    else:
        want = s24.sparse24_matmul_ref(x.contiguous(), vals.contiguous(), meta.contiguous(), bias)
    assert out.dtype == dtype and out.shape == (m, n)
    assert_within(out, want, matmul_bound(x.double(), w.double(), bias, k, dtype), "sparse24")


@pytest.mark.parametrize("backend", cpu_backends("sparse24_matmul"))
def test_sparse24_matmul(backend):
    run_examples("sparse24_matmul", backend, sparse24_body)
