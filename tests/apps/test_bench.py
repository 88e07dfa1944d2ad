"""The benchmarks keep working: bench/bench_decode.py runs every variant on a toy Llama in seconds
and writes the standard JSON rows; the shared baselines and helpers of llmkern.apps.benchmark give
the right numbers."""

import json
import math
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from llmkern.apps import benchmark as B
from llmkern.cpu import sparse24 as cpu_s24
from llmkern.ops.int8 import dequantize_weight
from tests import ROOT

DECODE = os.path.join(ROOT, "bench", "bench_decode.py")
ROW_KEYS = {"op", "shape", "dtype", "impl", "median_ms", "peak_mem_mb", "baseline",
            "speedup_vs_baseline"}  # fmt: skip


def run_decode(*args, timeout=300):
    return subprocess.run([sys.executable, DECODE, *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=timeout)  # fmt: skip


@pytest.fixture(scope="module")
def decode_run(tmp_path_factory):
    from llmkern import _ext

    if not _ext.available():
        pytest.skip(f"llmkern._C is not built: {_ext.load_error}")
    path = tmp_path_factory.mktemp("bench") / "decode.json"
    out = run_decode("--tiny", "--threads", "1", "--json", str(path))
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    with open(path) as f:
        return out.stdout, json.load(f)


def test_decode_tiny_runs_every_variant(decode_run):
    stdout, data = decode_run
    assert "RANDOM weights" in stdout and B.header().split(",")[0] in stdout
    meta, rows = data["meta"], data["rows"]
    assert meta["cpu_model"] and meta["cpu_isa"] != "unavailable" and meta["read_bandwidth_gbs"] > 0
    names = [r["impl"] for r in rows]
    expected = {"fp32", "bf16", "torch dynamic int8", "llmkern w8 fp32", "llmkern w8 bf16",
                "llmkern w8a8 fp32", "llmkern 2:4 fp32", "llmkern 2:4 bf16",
                "llmkern 2:4+w8 fp32", "llmkern 2:4+w8 bf16", "llmkern 2:4+w8 fp32 lean"}  # fmt: skip
    if B.has_int8pack_mm():
        expected.add("torch int8pack bf16")
    assert set(names) == expected and len(names) == len(expected)
    for r in rows:
        assert ROW_KEYS <= set(r) and r["op"] == "decode" and r["baseline"] == "fp32"
        assert math.isfinite(r["median_ms"]) and r["median_ms"] > 0
        e = r["extra"]
        assert e["tokens_per_s"] == pytest.approx(1e3 / r["median_ms"], rel=1e-2)
        assert math.isfinite(e["logits_cos"]) and "non-finite" not in e["check"]
        assert e["pct_read_bw"] == pytest.approx(100 * e["floor_ms"] / r["median_ms"], abs=0.2)
    by = {r["impl"]: r for r in rows}
    assert (
        by["fp32"]["speedup_vs_baseline"] == 1.0 and by["bf16"]["extra"]["speedup_vs_bf16"] == 1.0
    )
    steps = data["rows"][0]["shape"]["steps"]
    assert by["fp32"]["extra"]["argmax_match"] == f"{steps + 1}/{steps + 1}"
    assert (
        by["fp32"]["extra"]["logits_cos"] == pytest.approx(1.0) and not by["fp32"]["extra"]["check"]
    )
    assert by["bf16"]["dtype"] == "bfloat16" and by["llmkern w8a8 fp32"]["dtype"] == "float32"


def test_decode_weight_bytes_count_every_linear_and_the_lm_head(decode_run):
    _, data = decode_run
    by = {r["impl"]: r["extra"]["weight_bytes"] for r in data["rows"]}
    s = data["rows"][0]["shape"]
    h, kv_dim = s["hidden"], s["kv_heads"] * s["hidden"] // s["heads"]
    params = s["layers"] * (2 * h * h + 2 * h * kv_dim + 3 * h * s["ffn"]) + h * s["vocab"]
    assert by["fp32"] == 4 * params and by["bf16"] == 2 * params
    # int8 forms: one byte a weight plus scales and packing; an LM head left in float would
    # put them above a third of fp32 on the toy model (its head is a third of the weights).
    for name in ("torch dynamic int8", "llmkern w8 fp32", "llmkern w8a8 fp32"):
        assert params <= by[name] < 4 * params / 3, name
    # 2:4: half the values plus 2 bits of position each (params / 8 bytes of metadata)
    assert by["llmkern 2:4 bf16"] == params + params // 8
    assert by["llmkern 2:4 fp32"] == 2 * params + params // 8
    assert by["llmkern 2:4 bf16"] < by["bf16"] * 0.7
    # 2:4 + w8 on its 2:4 kernel: a quarter of the values' fp32 bytes, the same metadata, scales
    lean = by["llmkern 2:4+w8 fp32 lean"]
    assert params // 2 + params // 8 < lean < by["llmkern w8 fp32"] * 0.7
    # The default modules read their dense int8 form where this ISA's DENSE_ROWS send one row.
    for name, dtype in (
        ("llmkern 2:4+w8 fp32", torch.float32),
        ("llmkern 2:4+w8 bf16", torch.bfloat16),
    ):
        if cpu_s24.runs_dense(1, "w8", dtype):
            assert params <= by[name] < 4 * params / 3, name
        else:
            assert by[name] == lean, name


def test_decode_rejects_unknown_variants():
    out = run_decode("--tiny", "--variants", "fp32,fp4", timeout=120)
    assert out.returncode == 2 and "unknown variant" in out.stderr and "fp4" in out.stderr


@pytest.mark.skipif(not B.has_int8pack_mm(), reason="torch lacks _weight_int8pack_mm")
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_int8pack_baseline_is_the_dequantised_linear(dtype, tol):
    lin = nn.Linear(96, 40).to(dtype)
    mod = B.TorchInt8PackLinear(lin)
    x = torch.randn(3, 5, 96, dtype=dtype)
    ref = F.linear(x.double(), dequantize_weight(mod.weight_int8, mod.scales.float(), 0).double(),
                   lin.bias.double())  # fmt: skip
    out = mod(x)
    assert out.dtype == dtype and out.shape == (3, 5, 40)
    assert (out.double() - ref).abs().max() <= tol * ref.abs().max()


def test_torch_dynamic_baseline_quantises_linears_and_lm_heads():
    model = nn.Sequential(nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 8))
    x = torch.randn(4, 32)
    ref = model(x)
    q = B.torch_dynamic_int8(model)
    assert q is model and all(
        isinstance(q[i], torch.ao.nn.quantized.dynamic.Linear) for i in (0, 2)
    )
    assert (q(x) - ref).abs().max() <= 0.05 * ref.abs().max()
    lin = nn.Linear(8, 4)
    assert isinstance(B.torch_dynamic_int8(lin), torch.ao.nn.quantized.dynamic.Linear)
    assert type(lin) is nn.Linear


def test_goal_lines_mark_met_and_missed_goals():
    lines = B.goal_lines([("M=1", "a >= 1.3", 1.02), ("M=8", "b >= 1.5", 0.5)])
    assert lines[0].startswith("ok ") and "margin 1.02" in lines[0] and "a >= 1.3" in lines[0]
    assert lines[1].startswith("MISS") and "margin 0.50" in lines[1]


def test_with_speedups_across_dtypes():
    shape = {"n": 1}
    rows = [B.Row("decode", shape, "float32", "fp32", 10.0),
            B.Row("decode", shape, "bfloat16", "w8 bf16", 4.0)]  # fmt: skip
    same = B.with_speedups([B.Row(**vars(r)) for r in rows], "fp32")
    assert same[1].baseline == "" and same[1].speedup_vs_baseline == 1.0
    across = B.with_speedups(rows, "fp32", same_dtype=False)
    assert across[1].baseline == "fp32" and across[1].speedup_vs_baseline == 2.5


def test_floor_and_read_bandwidth():
    assert B.floor_ms(2 * 10**9, 20.0) == pytest.approx(100.0)
    bw = B.read_bandwidth_gbs(nbytes=0, reps=2, buffers=1)  # 4x the last-level cache is read
    assert math.isfinite(bw) and bw > 0.1


def test_stream_or_reads_every_byte():
    from llmkern import _ext

    # 3 MB: more than one task of 2^14 lines on torch's threads, and a ragged tail
    buf = torch.zeros(3 * 2**20 + 5, dtype=torch.uint8)
    assert _ext._C.stream_or(buf.data_ptr(), buf.numel()) == 0
    for where, value in [(0, 0x01), (2 * 2**20 + 7, 0x80), (buf.numel() - 1, 0x10)]:
        buf.zero_()
        buf[where] = value
        word = value << (8 * (where % 8)) if where < buf.numel() // 64 * 64 else value
        assert _ext._C.stream_or(buf.data_ptr(), buf.numel()) == word


def test_llc_bytes_from_the_environment(monkeypatch):
    monkeypatch.setenv("LLMKERN_LLC_MB", "12")
    assert B.llc_bytes() == 12 * 2**20
    monkeypatch.delenv("LLMKERN_LLC_MB")
    assert 0 < B.llc_bytes() <= B.LLC_CAP_BYTES
