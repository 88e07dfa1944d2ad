"""The backend registry: detection, selection, overrides and their errors, and `llmkern info`."""

import os
import subprocess
import sys

import pytest
import torch

import llmkern
from llmkern import _ext, backends
from llmkern.backends import BackendUnavailableError
from llmkern.ops.int8 import quantize_per_token_ref


def test_every_op_has_a_reference():
    ops = backends.registered_ops()
    for op in ("quantize_per_token", "w8a8_matmul", "w8_matmul", "compress_24", "decompress_24",
               "sparse24_matmul", "sparse24_w8a8_matmul", "sparse24_w8_matmul", "kd_loss_rows",
               "kd_loss_topk_rows"):  # fmt: skip
        assert op in ops
        assert "reference" in backends.kernels(op)


def test_explicit_reference_backend_runs():
    x = torch.randn(3, 8)
    q, s = llmkern.quantize_per_token(x, backend="reference")
    assert q.dtype == torch.int8 and s.shape == (3,)


def test_unknown_backend_name_is_rejected():
    with pytest.raises(ValueError, match="backend must be one of"):
        llmkern.quantize_per_token(torch.randn(2, 4), backend="fortran")


def test_env_override_unknown_name(monkeypatch):
    monkeypatch.setenv("LLMKERN_BACKEND", "fortran")
    with pytest.raises(ValueError, match="LLMKERN_BACKEND must be one of"):
        llmkern.quantize_per_token(torch.randn(2, 4))


def test_requested_backend_without_kernel_raises_instead_of_falling_back(monkeypatch):
    monkeypatch.setenv("LLMKERN_BACKEND", "cuda")
    with pytest.raises(BackendUnavailableError, match="backend 'cuda'"):
        llmkern.quantize_per_token(torch.randn(2, 4))


def test_triton_on_cpu_needs_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    ok, why = backends.backend_available("triton", "cpu")
    assert not ok and ("TRITON_INTERPRET" in why or "not installed" in why)


def test_auto_selection_never_picks_the_interpreter(monkeypatch):
    calls = []
    backends.register("_probe", "reference", ("cpu",))(lambda x: calls.append("reference") or x)
    backends.register("_probe", "triton", ("cpu",))(lambda x: calls.append("triton") or x)
    try:
        assert backends.select("_probe", "cpu").backend in ("cpu", "reference")
    finally:
        backends._REGISTRY.pop("_probe")


def test_supports_predicate_declines_in_auto_and_raises_when_forced():
    backends.register("_probe", "reference", ("cpu",))(lambda x: "ref")
    backends.register("_probe", "cpu", ("cpu",), supports=lambda x: x > 0, why="x must be > 0")(
        lambda x: "cpu"
    )
    try:
        if _ext.available():
            assert backends.dispatch("_probe", "cpu", None, 1) == "cpu"
        assert backends.dispatch("_probe", "cpu", None, -1) == "ref"
        if _ext.available():
            with pytest.raises(BackendUnavailableError, match="x must be > 0"):
                backends.dispatch("_probe", "cpu", "cpu", -1)
    finally:
        backends._REGISTRY.pop("_probe")


def test_run_follows_the_environment_and_per_call_rules(needs_ext, monkeypatch):
    # backends.run (the module hot path) caches the CPU kernel per environment: a change of
    # LLMKERN_BACKEND between calls must still take effect, and a kernel with a per-call
    # supports rule must be asked on every call.
    monkeypatch.delenv("LLMKERN_BACKEND", raising=False)
    backends.register("_probe", "reference", ("cpu",))(lambda x: "ref")
    backends.register("_probe", "cpu", ("cpu",))(lambda x: "cpu")
    backends.register("_rule", "reference", ("cpu",))(lambda x: "ref")
    backends.register("_rule", "cpu", ("cpu",), supports=lambda x: x.numel() > 1)(lambda x: "cpu")
    never = lambda *args: pytest.fail("the custom op runs only under compile/meta/autograd")  # noqa: E731
    one, two = torch.zeros(1), torch.zeros(2)
    try:
        assert backends.run("_probe", never, (one,)) == "cpu"
        monkeypatch.setenv("LLMKERN_BACKEND", "reference")
        assert backends.run("_probe", never, (one,)) == "ref"
        monkeypatch.delenv("LLMKERN_BACKEND")
        assert backends.run("_probe", never, (one,)) == "cpu"
        assert [backends.run("_rule", never, (x,)) for x in (two, one, two)] == [
            "cpu",
            "ref",
            "cpu",
        ]
    finally:
        backends._REGISTRY.pop("_probe")
        backends._REGISTRY.pop("_rule")


def test_cpu_isa_detection_and_override(needs_ext, monkeypatch):
    c = _ext._C
    best = c.detected_isa()
    assert best in ("scalar", "avx2", "avx512", "avx512_vnni", "amx")
    try:
        # LLMKERN_CPU_ISA is read once, at first use: changing it later changes nothing until
        # set_isa(None) asks for the default again.
        c.set_isa(None)
        before = c.active_isa()
        assert before == (os.environ.get("LLMKERN_CPU_ISA") or best)
        monkeypatch.setenv("LLMKERN_CPU_ISA", "scalar")
        assert c.active_isa() == before
        c.set_isa(None)
        assert c.active_isa() == "scalar"
        monkeypatch.setenv("LLMKERN_CPU_ISA", "sse9")
        c.set_isa("")
        for _ in range(2):  # a bad variable is reported on every use, never half-applied
            with pytest.raises(ValueError, match="LLMKERN_CPU_ISA=sse9 is unknown"):
                c.active_isa()
        x = torch.randn(2, 8)
        with pytest.raises(ValueError, match="LLMKERN_CPU_ISA=sse9 is unknown"):
            torch.ops.llmkern_C.int8_quantize_per_token(x)
        c.set_isa("scalar")  # the hook wins over a bad variable
        assert c.active_isa() == "scalar"
        assert torch.equal(
            torch.ops.llmkern_C.int8_quantize_per_token(x)[0], quantize_per_token_ref(x)[0]
        )
    finally:
        monkeypatch.delenv("LLMKERN_CPU_ISA", raising=False)
        c.set_isa(None)


def test_set_isa_rejects_names_this_cpu_cannot_run(needs_ext):
    c = _ext._C
    allowed = ("scalar", "avx2", "avx512", "avx512_vnni", "amx")
    supported = allowed[: allowed.index(c.detected_isa()) + 1]
    try:
        with pytest.raises(ValueError, match=r"'sse9' is unknown; choose from scalar"):
            c.set_isa("sse9")
        if len(supported) < len(allowed):
            above = allowed[len(supported)]
            with pytest.raises(ValueError, match=f"'{above}' is not supported by this CPU"):
                c.set_isa(above)
        for name in supported:
            c.set_isa(name)
            assert c.active_isa() == name
        assert c.active_isa() == supported[-1]  # a failed set_isa left the last good one
    finally:
        c.set_isa(None)


def test_cpu_isa_matches_proc_cpuinfo(needs_ext):
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        pytest.skip("no /proc/cpuinfo")
    vnni = " avx512_vnni" in flags and " avx512bw" in flags
    # Linux lists the amx flags only where it can hand tile data to a process.
    amx = vnni and " amx_tile" in flags and " amx_int8" in flags
    detected = _ext._C.detected_isa()
    assert (detected == "amx") == amx
    assert (detected == "avx512_vnni") == (vnni and not amx)


def test_info_command_reports_this_machine():
    out = subprocess.run([sys.executable, "-m", "llmkern", "info"], capture_output=True, text=True,
                         check=True).stdout  # fmt: skip
    assert "cpu isa" in out and "w8a8_matmul" in out and "kd_loss_rows" in out
    if not torch.cuda.is_available():
        assert "gpu       none" in out
    if _ext.available():
        assert _ext._C.detected_isa() in out
