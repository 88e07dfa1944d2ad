"""2:4 canonical format: exact round trips, pruning, N:M masks and the errors for bad input."""

import pytest
import torch

import llmkern
from llmkern.ops import sparse24 as s24

DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.int8)


def random_24(n, k, dtype=torch.float32, density=1.0):
    """A 2:4 weight with random kept positions; ``density`` < 1 also zeroes some kept values, so
    groups with fewer than 2 non-zeros occur."""
    if dtype == torch.int8:
        w = torch.randint(-128, 128, (n, k), dtype=torch.int8)
    else:
        w = torch.randn(n, k).to(dtype)
    w = llmkern.prune_24(w, torch.rand(n, k))
    return w * (torch.rand(n, k) < density).to(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,k", [(1, 4), (3, 8), (5, 12), (7, 36), (16, 100), (9, 132)])
@pytest.mark.parametrize("density", [1.0, 0.6])
def test_round_trip_is_exact(n, k, dtype, density):
    w = random_24(n, k, dtype, density)
    values, meta = llmkern.compress_24(w)
    assert values.shape == (n, k // 2) and values.dtype == dtype
    assert meta.shape == (n, -(-k // 8)) and meta.dtype == torch.uint8
    assert torch.equal(llmkern.decompress_24(values, meta, k), w)
    if k % 8 == 4:  # the unused high nibble of the last byte is 0
        assert not bool((meta[:, -1] >> 4).any())


def test_meta_layout_is_the_documented_one():
    # Group 0 keeps positions 1 and 3 (code 1 | 3 << 2 = 13), group 1 keeps 0 and 2 (code 8).
    w = torch.tensor([[0.0, 1.0, 0.0, 2.0, 3.0, 0.0, 4.0, 0.0]])
    values, meta = llmkern.compress_24(w)
    assert values.tolist() == [[1.0, 2.0, 3.0, 4.0]]
    assert meta.tolist() == [[13 | (8 << 4)]]


def test_sparse_groups_fill_the_lowest_free_positions():
    w = torch.tensor([[0.0, 0.0, 5.0, 0.0, 0.0, 0.0, 0.0, 0.0]])
    values, meta = llmkern.compress_24(w)
    assert values.tolist() == [[0.0, 5.0, 0.0, 0.0]]
    assert meta.tolist() == [[(0 | 2 << 2) | ((0 | 1 << 2) << 4)]]


def test_non_24_weight_names_first_offending_group():
    w = random_24(4, 16)
    w[2, 9] = w[2, 10] = w[2, 11] = 1.0
    with pytest.raises(ValueError, match=r"row 2, columns 8\.\.11"):
        llmkern.compress_24(w)


def test_k_not_multiple_of_4_is_rejected():
    with pytest.raises(ValueError, match="multiple of 4"):
        llmkern.compress_24(torch.zeros(2, 6))


def test_decompress_rejects_bad_meta():
    values, meta = llmkern.compress_24(random_24(3, 16))
    with pytest.raises(TypeError, match="meta must have dtype uint8"):
        llmkern.decompress_24(values, meta.to(torch.int32))
    with pytest.raises(ValueError, match="meta must have shape"):
        llmkern.decompress_24(values, meta[:, :1])
    bad = meta.clone()
    bad[0, 0] = 0x00  # idx0 == idx1
    with pytest.raises(ValueError, match="invalid 2:4 code"):
        llmkern.decompress_24(values, bad)


def test_prune_24_keeps_top2_and_ties_keep_lower_position():
    w = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]])
    scores = torch.tensor([[4.0, 1.0, 3.0, 2.0, 1.0, 1.0, 1.0, 1.0]])
    assert llmkern.prune_24(w, scores).tolist() == [[1.0, 0.0, 3.0, 0.0, 5.0, 6.0, 0.0, 0.0]]


@pytest.mark.parametrize("n,m", [(2, 4), (4, 8), (1, 4), (3, 8)])
def test_nm_mask_keeps_n_best_of_every_m(n, m):
    scores = torch.rand(6, 4 * m)
    mask = s24.nm_mask(scores, n, m)
    groups = mask.reshape(6, -1, m)
    assert bool((groups.sum(2) == n).all())
    s = scores.reshape(6, -1, m)
    kept_min = torch.where(groups, s, float("inf")).amin(2)
    dropped_max = torch.where(groups, float("-inf"), s).amax(2)
    assert bool((kept_min >= dropped_max).all())


def test_nm_mask_bad_arguments():
    with pytest.raises(ValueError, match="0 < n <= m"):
        s24.nm_mask(torch.rand(2, 8), 5, 4)
    with pytest.raises(ValueError, match="multiple of m=8"):
        s24.nm_mask(torch.rand(2, 12), 4, 8)
