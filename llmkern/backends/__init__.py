"""Backend detection and per-op kernel selection.

Every public op (llmkern.ops) runs through :func:`dispatch`. Kernels register themselves with
:func:`register` under a backend name:

- ``reference``: the pure-PyTorch ground truth, any device, always present;
- ``cpu``: the C++ kernels of ``llmkern._C`` (AVX-512 VNNI / AVX2 / scalar chosen at run time);
- ``cuda``: the CUDA C++ kernels of ``llmkern._C`` (built when a CUDA toolkit and torch exist);
- ``triton``: Triton kernels on CUDA tensors; on CPU tensors only under ``TRITON_INTERPRET=1``
  and only when asked for by name (the interpreter is for tests, not speed).

Selection: an explicit per-call ``backend=`` wins, then the environment variable
``LLMKERN_BACKEND``, then the automatic order for the tensor's device (:data:`AUTO_ORDER`), where
the first registered, available kernel that supports the call is used. A backend asked for by
name that cannot run the call raises :class:`BackendUnavailableError`; it never falls back.

On CUDA tensors automatic selection lands on ``reference`` only when no GPU kernel can run the
call (the extension built without CUDA and triton missing, or an unsupported dtype such as
float64 KD logits); it then warns once per op (:class:`ReferenceOnGPUWarning`), since the
reference is a slow composition of torch operators. Ops whose reference *is* the GPU
implementation (plain tensor operators, e.g. the 2:4 format conversions) are registered with
``native=True`` and do not warn.

Two entries run an op: the public functions of llmkern.ops check their arguments and call the
op's ``torch.library`` custom op, which dispatches here; the llmkern.nn modules, whose buffers
were validated when set, call :func:`run`, which in eager mode calls the selected kernel
directly (the selection is cached per op, device and environment, so a batch-1 call costs
microseconds) and under torch.compile, or when autograd must see the op, the custom op.
Shape rules that are kernel selection (e.g. a dense GEMM beating the 2:4 kernel for many rows)
live in the backend's kernel, so the public op and the module compute the same thing.

Prepared weights: a backend may register :func:`register_prepare` for an op, a function that
turns a module's weight into the form its kernel reads (a packed layout). The module calls
:func:`prepare` when its weight is set, loaded or moved and holds the result; forms that are
only needed for some calls (a dense copy for large batches, a tensor-core layout) are built on
first use into the module's :class:`Prepared` slots. Nothing is cached globally.
"""

from __future__ import annotations

import functools
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch

from llmkern import _ext

BACKENDS = ("reference", "cpu", "cuda", "triton")
AUTO_ORDER = {"cpu": ("cpu", "reference"), "cuda": ("cuda", "triton", "reference")}


class BackendUnavailableError(RuntimeError):
    """A backend was requested by name but cannot run this call."""


class ReferenceOnGPUWarning(UserWarning):
    """Automatic selection ran an op's pure-PyTorch reference on CUDA tensors (slow)."""


@dataclass(frozen=True)
class Kernel:
    op: str
    backend: str
    fn: Callable
    devices: tuple[str, ...]
    # Optional predicate on the op's arguments: False means "this kernel does not handle
    # these inputs" (e.g. a shape where 2:4 loses to dense); auto-selection then moves on and
    # an explicit request raises with `why`.
    supports: Callable[..., bool] | None = None
    why: str = ""
    # A reference that is also the production implementation on every device (vectorised
    # tensor operators, nothing faster to write): running it on CUDA tensors does not warn.
    native: bool = False
    # The kernel takes a module's Prepared forms as the keyword argument ``prepared``.
    takes_prepared: bool = False


_REGISTRY: dict[str, dict[str, Kernel]] = {}
_PREPARE: dict[tuple[str, str], Callable] = {}


def register(
    op: str,
    backend: str,
    devices: tuple[str, ...] = ("cpu",),
    supports: Callable[..., bool] | None = None,
    why: str = "",
    native: bool = False,
    takes_prepared: bool = False,
):
    """Decorator: register ``fn`` as the ``backend`` kernel of ``op`` on ``devices``."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")

    def deco(fn):
        _REGISTRY.setdefault(op, {})[backend] = Kernel(
            op, backend, fn, tuple(devices), supports, why, native, takes_prepared
        )
        _CANDIDATES.clear()
        _FIXED.clear()
        return fn

    return deco


def registered_ops() -> list[str]:
    return sorted(_REGISTRY)


def kernels(op: str) -> dict[str, Kernel]:
    return dict(_REGISTRY.get(op, {}))


# ---------------------------------------------------------------------------------------------
# Detection
# ---------------------------------------------------------------------------------------------


# os.environ decodes the key and the value on every read (about 2 us on a slow core, and the
# module hot path reads two variables per call); on POSIX its raw bytes dict, which setenv and
# monkeypatching keep in sync, answers in 0.1 us.
_RAW_ENVIRON = getattr(os.environ, "_data", None) if os.name == "posix" else None
if not isinstance(_RAW_ENVIRON, dict):
    _RAW_ENVIRON = None


def _getenv_raw(name: bytes) -> bytes | str | None:
    """The variable as stored (bytes on POSIX): enough for comparisons and cache keys."""
    return os.environ.get(name.decode()) if _RAW_ENVIRON is None else _RAW_ENVIRON.get(name)


def _getenv(name: str) -> str | None:
    value = _getenv_raw(name.encode())
    return os.fsdecode(value) if isinstance(value, bytes) else value


def triton_interpret() -> bool:
    return _getenv("TRITON_INTERPRET") not in (None, "", "0")


@functools.cache
def triton_version() -> str | None:
    try:
        import triton
    except Exception:  # triton missing or broken: the backend is simply absent
        return None
    return triton.__version__


def cpu_isa() -> str:
    """ISA path the CPU kernels use now (LLMKERN_CPU_ISA, read at first use, or
    ``llmkern._C.set_isa`` may lower it), or 'unavailable'."""
    return _ext._C.active_isa() if _ext.available() else "unavailable"


@functools.cache
def cpu_model() -> str:
    """The CPU's model name (``lscpu``, else /proc/cpuinfo, else platform), for benchmark reports."""
    import platform
    import subprocess

    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):  # no lscpu: the next source
        pass
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def cuda_ext_available() -> bool:
    return _ext.available() and _ext._C.built_with_cuda() and torch.cuda.is_available()


def gpu_info() -> dict | None:
    if not torch.cuda.is_available():
        return None
    props = torch.cuda.get_device_properties(0)
    return {
        "name": props.name,
        "capability": f"{props.major}.{props.minor}",
        "memory_gb": round(props.total_memory / 2**30, 1),
        "count": torch.cuda.device_count(),
    }


def backend_available(backend: str, device: str) -> tuple[bool, str]:
    """(available, reason-if-not) for ``backend`` on tensors of ``device`` type."""
    if backend == "reference":
        return True, ""
    if backend == "cpu":
        if device != "cpu":
            return False, "the cpu backend runs on CPU tensors only"
        if not _ext.available():
            return False, f"llmkern._C is not built ({_ext.load_error})"
        return True, ""
    if backend == "cuda":
        if device != "cuda":
            return False, "the cuda backend runs on CUDA tensors only"
        if not _ext.available():
            return False, f"llmkern._C is not built ({_ext.load_error})"
        if not _ext._C.built_with_cuda():
            return False, "llmkern._C was built without CUDA (no CUDA toolkit or CPU-only torch)"
        return True, ""
    if backend == "triton":
        if triton_version() is None:
            return False, "triton is not installed"
        if device == "cpu" and not triton_interpret():
            return False, "triton runs on CPU tensors only with TRITON_INTERPRET=1"
        return True, ""
    return False, f"unknown backend {backend!r}; expected one of {BACKENDS}"


def requested_backend(backend: str | None = None) -> str | None:
    """The per-call backend, else LLMKERN_BACKEND, else None (automatic)."""
    name = backend or _getenv("LLMKERN_BACKEND") or None
    if name is not None and name not in BACKENDS:
        src = "backend" if backend else "LLMKERN_BACKEND"
        raise ValueError(f"{src} must be one of {BACKENDS}, got {name!r}")
    return name


# Kernels that can run an op, in selection order, per (op, device type, requested backend,
# TRITON_INTERPRET): availability never changes within a process, so it is checked once.
_CANDIDATES: dict[tuple, tuple[Kernel, ...]] = {}


def _candidates(op: str, dev: str, want: str | None) -> tuple[Kernel, ...]:
    key = (op, dev, want, triton_interpret())
    hit = _CANDIDATES.get(key)
    if hit is not None:
        return hit
    table = _REGISTRY.get(op)
    if table is None:
        raise KeyError(f"no op named {op!r} is registered")
    if want is not None:
        kernel = table.get(want)
        if kernel is None or dev not in kernel.devices:
            have = sorted(k for k, v in table.items() if dev in v.devices)
            raise BackendUnavailableError(
                f"llmkern: backend {want!r} has no kernel for op {op!r} on {dev} tensors "
                f"(kernels there: {', '.join(have) or 'none'})"
            )
        ok, reason = backend_available(want, dev)
        if not ok:
            raise BackendUnavailableError(f"llmkern: backend {want!r} for op {op!r}: {reason}")
        found = (kernel,)
    else:
        found = tuple(
            table[name]
            for name in AUTO_ORDER.get(dev, ("reference",))
            if name in table
            and dev in table[name].devices
            and not (name == "triton" and dev == "cpu")  # the interpreter is never automatic
            and backend_available(name, dev)[0]
        )
    _CANDIDATES[key] = found
    return found


def _device_type(device: torch.device | str) -> str:
    return device.type if isinstance(device, torch.device) else torch.device(device).type


def select(
    op: str, device: torch.device | str, args: tuple = (), backend: str | None = None
) -> Kernel:
    """The kernel that runs ``op`` for ``args`` on ``device`` (see module docstring)."""
    dev = _device_type(device)
    want = requested_backend(backend)
    found = _candidates(op, dev, want)
    if want is not None:
        kernel = found[0]
        if kernel.supports is not None and not kernel.supports(*args):
            raise BackendUnavailableError(
                f"llmkern: backend {want!r} does not support this call of {op!r}: {kernel.why}"
            )
        return kernel
    for kernel in found:
        if kernel.supports is not None and args and not kernel.supports(*args):
            continue
        if kernel.backend == "reference" and dev == "cuda" and not kernel.native:
            _warn_reference_on_gpu(op, _REGISTRY[op])
        return kernel
    raise BackendUnavailableError(f"llmkern: no kernel for op {op!r} on {dev} tensors")


def _needs_autograd(args: tuple) -> bool:
    return torch.is_grad_enabled() and any(
        isinstance(a, torch.Tensor) and a.requires_grad for a in args
    )


# Per (op, device type, LLMKERN_BACKEND, TRITON_INTERPRET): the kernel when the choice cannot
# depend on the call (the selected kernel is the first candidate and has no ``supports`` rule),
# else None (select on every call). The module hot path then costs one dict lookup.
_FIXED: dict[tuple, Kernel | None] = {}
_UNSEEN = object()


def _kernel_for(op: str, dev: str, args: tuple) -> Kernel:
    key = (op, dev, _getenv_raw(b"LLMKERN_BACKEND"), _getenv_raw(b"TRITON_INTERPRET"))
    kernel = _FIXED.get(key, _UNSEEN)
    if kernel is None:
        return select(op, dev, args)
    if kernel is _UNSEEN:  # first call: select raises, or warns for a reference on a GPU
        kernel = select(op, dev, args)
        fixed = kernel.supports is None and kernel is _candidates(op, dev, requested_backend())[0]
        _FIXED[key] = kernel if fixed else None
    return kernel


def run(
    op: str,
    custom_op: Callable,
    args: tuple,
    prepared: Prepared | None = None,
    differentiable: bool = False,
):
    """Run ``op`` on ``args`` without argument checks (for modules, whose buffers were checked
    when set): the selected kernel directly in eager mode, with the module's ``prepared``
    forms; the custom op (``custom_op(*args, "")``) under torch.compile, on the meta device
    (its fake implementation gives the shapes), and for a ``differentiable`` op when autograd
    needs its backward."""
    x = args[0]
    if torch.compiler.is_compiling() or x.is_meta or (differentiable and _needs_autograd(args)):
        return custom_op(*args, "")
    kernel = _kernel_for(op, "cpu" if x.is_cpu else x.device.type, args)
    if prepared is None or not kernel.takes_prepared:
        return kernel.fn(*args)
    return kernel.fn(*args, prepared=prepared)


# ---------------------------------------------------------------------------------------------
# Prepared weights
# ---------------------------------------------------------------------------------------------


class Prepared:
    """Forms of one module's weight that kernels derive from it on first use (a dense copy for
    the batch sizes where a dense GEMM wins, a tensor-core layout), owned by the module: they
    die with it, and the module calls :meth:`clear` when its weight moves or is replaced. Each
    form is stored with the key it was built for (the weight's identity and version counters),
    so an in-place update of the weight (an optimizer step) rebuilds it."""

    def __init__(self, **settings):
        # The module's settings for its kernels (e.g. a row limit), kept across clear().
        self.settings = settings
        self._forms: dict[str, tuple] = {}

    def get(self, name: str, key: tuple, build: Callable):
        hit = self._forms.get(name)
        if hit is None or hit[0] != key:
            hit = self._forms[name] = (key, build())
        return hit[1]

    def clear(self) -> None:
        self._forms.clear()

    def built(self) -> list:
        """The forms built so far (what the kernels read in place of the weight; a form built as
        None stands for "the weight itself")."""
        return [form for _, form in self._forms.values() if form is not None]

    def __len__(self) -> int:
        return len(self._forms)

    def __getstate__(self):  # pickles and deep copies keep the settings; forms are rebuilt
        return {"settings": dict(self.settings), "_forms": {}}


def weight_key(*tensors: torch.Tensor | None) -> tuple:
    """Identity and version of the tensors a prepared form was built from (tensors created in
    inference mode have no version counter and are keyed on identity only)."""
    return tuple(
        (t.data_ptr(), None if t.is_inference() else t._version) for t in tensors if t is not None
    )


def register_prepare(op: str, backend: str):
    """Decorator: ``fn(*weight) -> Tensor`` builds the weight form the ``backend`` kernel of
    ``op`` reads (e.g. a packed layout), once per module weight."""

    def deco(fn):
        _PREPARE[(op, backend)] = fn
        return fn

    return deco


def prepare(op: str, device: torch.device | str, *weight):
    """The weight form that the backend automatic selection picks for ``op`` on ``device`` reads
    (see :func:`register_prepare`), or None when that backend reads the canonical weight. A
    backend forced per call (LLMKERN_BACKEND) is handed the same form and ignores what it cannot
    use."""
    dev = _device_type(device)
    if dev == "meta":
        return None
    for kernel in _candidates(op, dev, None):
        fn = _PREPARE.get((op, kernel.backend))
        return None if fn is None else fn(*weight)
    return None


_WARNED_REFERENCE: set[str] = set()


def _warn_reference_on_gpu(op: str, table: dict[str, Kernel]) -> None:
    """One warning per op and process: the GPU kernels that exist and why none ran."""
    if op in _WARNED_REFERENCE:
        return
    _WARNED_REFERENCE.add(op)
    reasons = []
    for name in ("cuda", "triton"):
        kernel = table.get(name)
        if kernel is None or "cuda" not in kernel.devices:
            reasons.append(f"{name}: no kernel")
            continue
        ok, why = backend_available(name, "cuda")
        reasons.append(f"{name}: {why if not ok else kernel.why or 'does not support this call'}")
    warnings.warn(
        f"llmkern: op {op!r} runs its pure-PyTorch reference on CUDA tensors (slow; "
        f"{'; '.join(reasons)}). Warned once per op.",
        ReferenceOnGPUWarning,
        stacklevel=3,
    )


def dispatch(op: str, device: torch.device | str, backend: str | None, *args):
    """Select the kernel for ``op`` and run it on ``args``."""
    return select(op, device, args, backend).fn(*args)


def would_use(op: str, device: str) -> str:
    """The backend automatic selection picks for ``op`` on ``device`` without looking at shapes
    (for ``llmkern info``), or a reason why none can run."""
    table = _REGISTRY.get(op, {})
    for name in AUTO_ORDER.get(device, ()):
        kernel = table.get(name)
        if kernel is None or device not in kernel.devices:
            continue
        if name == "triton" and device == "cpu":
            continue
        if device == "cuda" and name in ("cuda", "triton"):
            # Without a GPU say what would be used if one were present.
            if name == "cuda" and not (_ext.available() and _ext._C.built_with_cuda()):
                continue
            if name == "triton" and triton_version() is None:
                continue
            return name
        if backend_available(name, device)[0]:
            return name
    return "none"
