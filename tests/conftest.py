"""Test set-up shared by every test file.

- TRITON_INTERPRET=1 is set before anything imports triton, so Triton kernels run on CPU tensors
  through the interpreter (on a CUDA machine, LLMKERN_TEST_GPU=1 leaves it unset).
- ``cpu_isa`` parametrises a test over every CPU ISA path this machine supports (switched with
  ``llmkern._C.set_isa``: the C++ kernels read LLMKERN_CPU_ISA once, at first use).
- Tests marked ``gpu`` are skipped without a CUDA device.
- Under CI (``CI`` set) hypothesis is derandomised.
- ``ddp`` runs a function in two processes joined in a gloo process group (tests/ddp.py).
"""

import os

if not os.environ.get("LLMKERN_TEST_GPU"):
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from hypothesis import settings  # noqa: E402

# CI (CI=true) replays the same hypothesis examples every run, so a submission's result does not
# depend on which random examples it drew; local runs keep exploring new ones.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

from llmkern import _ext  # noqa: E402
from tests import ddp as _ddp  # noqa: E402

ISA_ORDER = ("scalar", "avx2", "avx512", "avx512_vnni", "amx")


def supported_isas() -> list[str]:
    if not _ext.available():
        return []
    best = _ext._C.detected_isa()
    return list(ISA_ORDER[: ISA_ORDER.index(best) + 1])


@pytest.fixture(params=supported_isas() or [None], ids=lambda p: p or "no-extension")
def cpu_isa(request):
    """Run the test once per CPU ISA path (``llmkern._C.set_isa``; the default afterwards)."""
    if request.param is None:
        pytest.skip("llmkern._C is not built")
    _ext._C.set_isa(request.param)
    try:
        yield request.param
    finally:
        _ext._C.set_isa(None)


@pytest.fixture
def needs_ext():
    if not _ext.available():
        pytest.skip(f"llmkern._C is not built: {_ext.load_error}")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def ddp(tmp_path):
    """``ddp(worker)``: ``worker(rank, world)`` in two processes of one gloo process group on
    loopback; returns what each rank returned."""
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed without gloo")
    return lambda worker: _ddp.run(worker, tmp_path)
