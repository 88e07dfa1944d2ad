"""save() / load(): compressed checkpoints as a folder with two files:

- ``model.safetensors``: the model's state dict (each tensor shared under several names stored once);
- ``llmkern.json``: format version, size and SHA-256 of the tensor file, how to rebuild the base
  model (a transformers class and its config, when the model is a Hugging Face model; an llmkern
  class, its constructor arguments and settings, when the model is an llmkern module), every
  swapped module (dotted name -> llmkern class, constructor arguments and ``attrs``: the settings
  set after construction, e.g. ``Sparse24Linear.max_sparse_rows``), and the aliases of shared
  tensors.

Every setting of an llmkern module is saved: its constructor arguments and its other public
attributes (anything in the instance's ``__dict__`` that is not private, a parameter, a buffer
or a submodule). A setting JSON cannot hold (a callable, a tensor that is not a buffer, ...)
raises at save time instead of being dropped, so a loaded model behaves as the saved one.
Version 1 checkpoints (before settings were saved) still load, with construction defaults.

``load`` checks everything before it touches a model: the config, the tensor file's size and
hash, that every swapped module replaces a linear layer of the model with the same in/out
features and bias, and that every tensor name, shape and kind (integer or floating) matches the
rebuilt architecture. A truncated, corrupted or mismatched checkpoint raises a ValueError that says
which, and nothing is loaded.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import os

import torch
from torch import nn

FORMAT = "llmkern-compressed"
VERSION = 2
READABLE_VERSIONS = (1, 2)  # version 1: no module settings ("attrs"), no llmkern base module
CONFIG_FILE = "llmkern.json"
TENSORS_FILE = "model.safetensors"
_SKIP_ARGS = {"self", "device", "dtype"}


def _is_llmkern_module(m: nn.Module) -> bool:
    return type(m).__module__.split(".")[0] == "llmkern"


def llmkern_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Every llmkern module inside ``model`` (the model itself excepted), by dotted name: the
    int8 layers inside a LowRankLinear too."""
    return {name: m for name, m in model.named_modules() if name and _is_llmkern_module(m)}


def swapped_modules(model: nn.Module) -> dict[str, nn.Module]:
    """The outermost llmkern modules inside ``model``, by dotted name."""
    out: dict[str, nn.Module] = {}
    for name, m in model.named_modules():
        if name and _is_llmkern_module(m) and not any(name.startswith(p + ".") for p in out):
            out[name] = m
    return out


def _encode(owner: str, name: str, v):
    """A setting as JSON: scalars, None, lists; tuples and torch dtypes tagged. Anything else is a
    ValueError (dropping it would make the loaded module behave differently)."""
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, torch.dtype):
        return {"dtype": str(v).removeprefix("torch.")}
    if isinstance(v, (list, tuple)):
        items = [_encode(owner, name, x) for x in v]
        return {"tuple": items} if isinstance(v, tuple) else items
    raise ValueError(
        f"cannot save {owner}: setting {name!r} is a {type(v).__name__}, which a checkpoint "
        "cannot hold (set it again after loading, or remove it before saving)"
    )


def _decode(v):
    if isinstance(v, list):
        return [_decode(x) for x in v]
    if isinstance(v, dict) and set(v) == {"tuple"}:
        return tuple(_decode(x) for x in v["tuple"])
    if isinstance(v, dict) and set(v) == {"dtype"}:
        dtype = getattr(torch, str(v["dtype"]), None)
        if not isinstance(dtype, torch.dtype):
            raise ValueError(f"checkpoint names an unknown dtype {v['dtype']!r}")
        return dtype
    if isinstance(v, dict):
        raise ValueError(f"checkpoint holds an unreadable setting {v!r}")
    return v


def constructor_args(m: nn.Module) -> dict:
    """The module's constructor arguments, read back from its attributes of the same names."""
    owner = type(m).__name__
    args = {}
    for p in inspect.signature(type(m).__init__).parameters.values():
        if p.name in _SKIP_ARGS or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if p.name == "bias":
            args["bias"] = getattr(m, "bias", None) is not None
            continue
        if not hasattr(m, p.name):
            raise ValueError(
                f"cannot save {owner}: constructor argument {p.name!r} is not an attribute, so "
                "its value is unknown"
            )
        v = getattr(m, p.name)
        if isinstance(v, torch.Tensor) and v.dim() == 0:  # e.g. a static activation scale
            v = v.item()
        args[p.name] = _encode(owner, p.name, v)
    return args


def settings(m: nn.Module) -> dict:
    """The settings of ``m`` set outside its constructor arguments (e.g.
    ``Sparse24Linear.max_sparse_rows``): its public plain attributes and settable properties.
    Private attributes (``_prepared``: the backend forms of the weight) are rebuilt on use;
    ``training`` is reset by load (eval mode)."""
    args = set(inspect.signature(type(m).__init__).parameters)
    found = dict(vars(m))
    for k in dir(type(m)):
        prop = getattr(type(m), k, None)
        if isinstance(prop, property) and prop.fset is not None:
            found[k] = getattr(m, k)
    return {
        k: _encode(type(m).__name__, k, v)
        for k, v in found.items()
        if not k.startswith("_") and k != "training" and k not in args
    }


def _module_spec(m: nn.Module) -> dict:
    spec = {"class": _class_path(m), "args": constructor_args(m)}
    attrs = settings(m)
    if attrs:
        spec["attrs"] = attrs
    return spec


def _build_module(spec: dict, where: str) -> nn.Module:
    """An llmkern module from its spec: constructed from ``args``, then ``attrs`` set (only
    public attributes the freshly built module has: a checkpoint cannot add or replace others)."""
    cls = _resolve_class(spec["class"], "llmkern")
    try:
        m = cls(**{k: _decode(v) for k, v in spec["args"].items()})
    except (TypeError, ValueError) as exc:
        raise ValueError(f"checkpoint {where} ({spec['class']}) cannot be built: {exc}") from None
    known = set(settings(m))
    for k, v in spec.get("attrs", {}).items():
        if k not in known:
            raise ValueError(
                f"checkpoint {where} ({spec['class']}) sets {k!r}, which is not a setting of "
                "that class"
            )
        setattr(m, k, _decode(v))
    return m


def _class_path(m: nn.Module) -> str:
    cls = type(m)
    public = cls.__module__
    # Prefer the public re-export (llmkern.nn.Int8Linear) when there is one.
    for candidate in ("llmkern.nn", "llmkern.compress"):
        if getattr(importlib.import_module(candidate), cls.__name__, None) is cls:
            public = candidate
            break
    return f"{public}.{cls.__name__}"


def _resolve_class(path: str, allowed_root: str):
    module, _, name = path.rpartition(".")
    if module.split(".")[0] != allowed_root:
        raise ValueError(
            f"checkpoint names class {path!r}, outside {allowed_root}: refusing to load it"
        )
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise ValueError(
            f"checkpoint needs class {path!r}, which this llmkern does not have ({exc})"
        ) from None


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _base_spec(model: nn.Module) -> dict:
    config = getattr(model, "config", None)
    if type(model).__module__.startswith("transformers.") and hasattr(config, "to_dict"):
        return {"kind": "transformers", "class": type(model).__name__, "config": config.to_dict()}
    if _is_llmkern_module(model):  # e.g. a single Sparse24Linear: load rebuilds it
        return {"kind": "llmkern", **_module_spec(model)}
    return {"kind": "module", "class": f"{type(model).__module__}.{type(model).__qualname__}"}


def save(model: nn.Module, path: str) -> str:
    """Write ``model`` (compressed or not) to the folder ``path``; returns ``path``."""
    from safetensors.torch import save_file

    state = model.state_dict()
    tensors, aliases, seen = {}, {}, {}
    for key, t in state.items():
        ident = (t.data_ptr(), t.dtype, tuple(t.shape), t.stride()) if t.numel() else None
        if ident is not None and ident in seen:
            aliases[key] = seen[ident]
            continue
        if ident is not None:
            seen[ident] = key
        tensors[key] = t.detach().to("cpu").contiguous().clone()
    base = _base_spec(model)  # before writing anything: an unsavable setting raises here
    modules = {name: _module_spec(m) for name, m in llmkern_modules(model).items()}
    os.makedirs(path, exist_ok=True)
    tensor_path = os.path.join(path, TENSORS_FILE)
    save_file(tensors, tensor_path)
    config = {
        "format": FORMAT,
        "version": VERSION,
        "tensors": {
            "file": TENSORS_FILE,
            "bytes": os.path.getsize(tensor_path),
            "sha256": _sha256(tensor_path),
        },
        "base": base,
        "modules": modules,
        "aliases": aliases,
    }
    with open(os.path.join(path, CONFIG_FILE), "w") as f:
        json.dump(config, f, indent=1)
    return path


def _read_config(path: str) -> dict:
    cfg_path = os.path.join(path, CONFIG_FILE)
    if not os.path.isdir(path) or not os.path.isfile(cfg_path):
        raise FileNotFoundError(f"{path} is not an llmkern checkpoint folder (no {CONFIG_FILE})")
    try:
        with open(cfg_path) as f:
            cfg = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{cfg_path} is corrupted (not valid JSON: {exc})") from None
    if not isinstance(cfg, dict) or cfg.get("format") != FORMAT:
        raise ValueError(f"{cfg_path} is not an llmkern checkpoint config")
    if cfg.get("version") not in READABLE_VERSIONS:
        raise ValueError(
            f"{cfg_path} has format version {cfg.get('version')}; this llmkern reads "
            f"{', '.join(map(str, READABLE_VERSIONS))}"
        )
    for key in ("tensors", "base", "modules", "aliases"):
        if key not in cfg:
            raise ValueError(f"{cfg_path} is corrupted (no {key!r} entry)")
    return cfg


def _read_tensors(path: str, spec: dict) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    tpath = os.path.join(path, os.path.basename(spec["file"]))
    if not os.path.isfile(tpath):
        raise FileNotFoundError(f"checkpoint tensor file {tpath} is missing")
    size = os.path.getsize(tpath)
    if size != spec["bytes"]:
        raise ValueError(
            f"{tpath} is truncated or altered: {size} bytes, the checkpoint recorded {spec['bytes']}"
        )
    if _sha256(tpath) != spec["sha256"]:
        raise ValueError(f"{tpath} is corrupted: its SHA-256 does not match the checkpoint's")
    try:
        return load_file(tpath)
    except SafetensorError as exc:
        raise ValueError(f"{tpath} is not a readable safetensors file ({exc})") from None


def _build_base(base: dict, model: nn.Module | None) -> nn.Module:
    if base.get("kind") == "llmkern":
        if model is not None:
            raise ValueError(
                f"this checkpoint holds a {base.get('class')}, which load rebuilds with its "
                "settings: call load(path) without model="
            )
        return _build_module(base, "model")
    if model is not None:
        return model
    if base.get("kind") != "transformers":
        raise ValueError(
            f"this checkpoint holds a {base.get('class')}, which load cannot rebuild by itself: "
            "pass model=<an uncompressed instance of the same architecture>"
        )
    cls = _resolve_class(f"transformers.{base['class']}", "transformers")
    config = cls.config_class.from_dict(base["config"])
    model = cls(config)
    if getattr(config, "llmkern_heads", None):  # attention heads removed by prune_structure
        from llmkern.compress.structure import apply_saved_layout

        apply_saved_layout(model)
    return model


def _kind(dtype: torch.dtype) -> str:
    return "float" if dtype.is_floating_point else "integer"


def _linear_signature(m: nn.Module):
    """(in_features, out_features, has bias) of a linear layer: nn.Linear, Conv1D or an llmkern
    module; None for anything else."""
    from llmkern.compress.modules import is_conv1d

    if is_conv1d(m):
        return (m.weight.shape[0], m.weight.shape[1], m.bias is not None)
    if isinstance(m, nn.Linear) or (
        _is_llmkern_module(m) and hasattr(m, "in_features") and hasattr(m, "out_features")
    ):
        return (m.in_features, m.out_features, getattr(m, "bias", None) is not None)
    return None


def _check_swap(name: str, current: nn.Module, stored: nn.Module, spec_class: str) -> None:
    """The checkpoint's layer must replace a linear layer of the same shape in the model, or a
    module of its own class (e.g. a KDLoss held by the model)."""
    if type(current) is type(stored) and _linear_signature(stored) is None:
        return
    want, got = _linear_signature(current), _linear_signature(stored)
    if want is None or got is None or want != got:
        fmt = lambda s: "?" if s is None else f"{s[0]} -> {s[1]}, bias={s[2]}"  # noqa: E731
        raise ValueError(
            f"checkpoint does not match the model at {name!r}: the checkpoint has a {spec_class} "
            f"({fmt(got)}), the model a {type(current).__name__} ({fmt(want)})"
        )


def load(path: str, model: nn.Module | None = None) -> nn.Module:
    """Load a checkpoint written by :func:`save`. Hugging Face models are rebuilt from the stored
    config; for any other model pass ``model``, an uncompressed instance of the same architecture,
    which is then compressed and loaded in place (and left untouched when loading fails)."""
    cfg = _read_config(path)
    tensors = _read_tensors(path, cfg["tensors"])
    for alias, target in cfg["aliases"].items():
        if target not in tensors:
            raise ValueError(
                f"checkpoint is corrupted: alias {alias!r} points to missing tensor {target!r}"
            )
    base = _build_base(cfg["base"], model)
    from llmkern.compress.transaction import Transaction

    # Swap in the checkpoint's modules (saved in named_modules order: a LowRankLinear before the
    # int8 layers inside it), check every tensor against the result, undo the swaps on failure.
    with Transaction(base) as txn:
        for name, spec in cfg["modules"].items():
            try:
                current = base.get_submodule(name)
            except AttributeError:
                raise ValueError(
                    f"checkpoint does not match the model: it has no module {name!r}"
                ) from None
            new = _build_module(spec, f"module {name!r}")
            _check_swap(name, current, new, spec["class"])
            txn.swap(name, new)
        expected = base.state_dict()
        stored = set(tensors) | set(cfg["aliases"])
        missing, unexpected = sorted(set(expected) - stored), sorted(stored - set(expected))
        if missing or unexpected:
            raise ValueError(
                "checkpoint does not match the model: "
                + (f"missing {missing[:4]}{' ...' if len(missing) > 4 else ''} " if missing else "")
                + (
                    f"unexpected {unexpected[:4]}{' ...' if len(unexpected) > 4 else ''}"
                    if unexpected
                    else ""
                )
            )
        full = {k: tensors[cfg["aliases"].get(k, k)] for k in expected}
        for k, want in expected.items():
            got = full[k]
            if tuple(got.shape) != tuple(want.shape) or _kind(got.dtype) != _kind(want.dtype):
                raise ValueError(
                    f"checkpoint does not match the model at {k!r}: stored {tuple(got.shape)} "
                    f"{got.dtype}, model expects {tuple(want.shape)} {want.dtype}"
                )

    # Everything checked: load.
    device = next((t.device for t in base.state_dict().values()), torch.device("cpu"))
    base.load_state_dict({k: v.to(device) for k, v in full.items()}, strict=True, assign=True)
    for alias, target in cfg["aliases"].items():  # re-tie shared tensors (e.g. LM head = embedding)
        owner, _, attr = alias.rpartition(".")
        t_owner, _, t_attr = target.rpartition(".")
        setattr(base.get_submodule(owner), attr, getattr(base.get_submodule(t_owner), t_attr))
    base.eval()
    return base
