"""Compile every Triton kernel variant for sm_80 and sm_90 without a GPU (triton ships ptxas),
so that code which only the interpreter has run is known to lower to real GPU code, and report
registers, spills and shared memory per configuration.

    python -m llmkern.triton.kernels.compile_check [--all-configs] [--arch 80 90] [--only NAME..]

Must run without TRITON_INTERPRET (the kernels must be real JIT functions).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import tempfile
from dataclasses import dataclass

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from llmkern.triton.kernels import gemm, kd, quantize

_TORCH_DTYPES = {
    "i8": torch.int8,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
    "fp32": torch.float32,
}


@dataclass
class Variant:
    name: str
    fn: object  # the JITFunction
    signature: dict  # arg name -> triton type string ("constexpr" for compile-time args)
    constexprs: dict
    configs: list  # [(constexpr overrides, num_warps, num_stages)]


def _gemm_variant(name, x, w, out, sparse, group, configs):
    sig = {
        "x_ptr": f"*{x}", "w_ptr": f"*{w}", "meta_ptr": "*u8", "xs_ptr": "*fp32",
        "ws_ptr": "*fp32", "bias_ptr": "*fp32", "out_ptr": f"*{out}",
        "M": "i32", "N": "i32", "K": "i32", "stride_xm": "i32", "stride_wn": "i32",
        "stride_mn": "i32", "stride_sn": "i32", "stride_om": "i32", "M_KEY": "i32",
    }  # fmt: skip
    flags = {
        "SPARSE": sparse, "INT8_DOT": x == "i8", "HAS_XS": x == "i8", "HAS_WS": w == "i8",
        "WS_GROUP": group, "HAS_BIAS": True,
    }  # fmt: skip
    return Variant(name, gemm._gemm_kernel, sig, flags, configs)


def _gemv_variant(name, x, w, out, sparse, group):
    sig = {
        "x_ptr": f"*{x}", "w_ptr": f"*{w}", "meta_ptr": "*u8", "xs_ptr": "*fp32",
        "ws_ptr": "*fp32", "bias_ptr": "*fp32", "out_ptr": f"*{out}",
        "N": "i32", "K": "i32", "stride_wn": "i32", "stride_mn": "i32", "stride_sn": "i32",
    }  # fmt: skip
    flags = {
        "SPARSE": sparse, "INT8_DOT": x == "i8", "HAS_XS": x == "i8", "HAS_WS": w == "i8",
        "WS_GROUP": group, "HAS_BIAS": True,
    }  # fmt: skip
    return Variant(name, gemm._gemv_kernel, sig, flags, _configs(gemm.GEMV_CONFIGS))


def _configs(configs):
    return [(dict(c.kwargs), c.num_warps, c.num_stages) for c in configs]


def variants(all_configs: bool) -> list[Variant]:
    def configs(x, tiles):
        found = _configs(gemm.CONFIGS[gemm.dot_kind(_TORCH_DTYPES[x]), tiles])
        return found if all_configs else found[:1]

    out = []
    for tiles in ("large", "small"):
        out += [
            _gemm_variant(f"w8a8 {tiles}", "i8", "i8", "bf16", False, 0, configs("i8", tiles)),
            _gemm_variant(
                f"w8 bf16 {tiles}", "bf16", "i8", "bf16", False, 0, configs("bf16", tiles)
            ),
            _gemm_variant(
                f"w8 fp16 g128 {tiles}", "fp16", "i8", "fp16", False, 128, configs("fp16", tiles)
            ),
            _gemm_variant(
                f"w8 bf16 g32 {tiles}", "bf16", "i8", "bf16", False, 32, configs("bf16", tiles)
            ),
            _gemm_variant(
                f"w8 fp32 {tiles}", "fp32", "i8", "fp32", False, 0, configs("fp32", tiles)
            ),
            _gemm_variant(
                f"2:4 bf16 {tiles}", "bf16", "bf16", "bf16", True, 0, configs("bf16", tiles)
            ),
            _gemm_variant(f"2:4 w8a8 {tiles}", "i8", "i8", "fp16", True, 0, configs("i8", tiles)),
            _gemm_variant(f"2:4 w8 {tiles}", "bf16", "i8", "bf16", True, 0, configs("bf16", tiles)),
        ]
    gemv = [
        _gemv_variant("gemv w8 bf16", "bf16", "i8", "bf16", False, 0),
        _gemv_variant("gemv w8 bf16 g128", "bf16", "i8", "bf16", False, 128),
        _gemv_variant("gemv w8a8", "i8", "i8", "bf16", False, 0),
        _gemv_variant("gemv 2:4 bf16", "bf16", "bf16", "bf16", True, 0),
        _gemv_variant("gemv 2:4 w8", "fp16", "i8", "fp16", True, 0),
    ]
    if not all_configs:
        for v in gemv:
            v.configs = v.configs[1:2]
    out += gemv
    for name, x, one_pass, static in (
        ("quantize bf16", "bf16", True, False),
        ("quantize fp16 two-pass", "fp16", False, False),
        ("quantize static bf16", "bf16", True, True),
        ("quantize static fp32 two-pass", "fp32", False, True),
    ):
        sig = {
            "x_ptr": f"*{x}", "q_ptr": "*i8", "scale_ptr": "*fp32", "static_ptr": "*fp32",
            "K": "i32", "stride_xm": "i32", "stride_qm": "i32",
        }  # fmt: skip
        # As launched: K = 4096 in one pass (8 warps), K > MAX_ONE_PASS in blocks of it (16).
        config = ({"BLOCK_K": 4096}, 8, 1) if one_pass else ({"BLOCK_K": 16384}, 16, 1)
        flags = {"ONE_PASS": one_pass, "STATIC": static}
        out.append(Variant(name, quantize._quantize_rows_kernel, sig, flags, [config]))
    kd_sig = {
        "s_ptr": "*bf16", "t_ptr": "*bf16", "y_ptr": "*i64", "rows_ptr": "*fp32",
        "g_ptr": "*bf16", "V": "i32", "stride_s": "i32", "stride_t": "i32", "stride_g": "i32",
        "inv_tau": "fp32", "loss_scale": "fp32", "grad_scale": "fp32", "w_ce": "fp32",
        "ignore_index": "i32", "beta": "fp32",
    }  # fmt: skip
    for div in ("kl", "reverse_kl", "jsd"):
        out.append(
            Variant(
                f"kd {div}",
                kd._kd_rows_kernel,
                kd_sig,
                {
                    "HAS_LABELS": True,
                    "TAU_ONE": div == "kl",
                    "DIVERGENCE": kd._DIVERGENCE_CODE[div],
                    "GRAD": True,
                },
                [({"BLOCK_V": kd.MAX_BLOCK_V}, 8, 1)],
            )
        )
    topk_sig = {
        "s_ptr": "*bf16", "idx_ptr": "*i64", "lp_ptr": "*fp32", "start_ptr": "*i32",
        "y_ptr": "*i64", "rows_ptr": "*fp32", "g_ptr": "*bf16", "V": "i32", "KT": "i32",
        "stride_s": "i32", "stride_i": "i32", "stride_l": "i32", "stride_st": "i32",
        "stride_g": "i32", "inv_tau": "fp32", "loss_scale": "fp32", "grad_scale": "fp32",
        "w_ce": "fp32", "ignore_index": "i32",
    }  # fmt: skip
    out.append(
        Variant(
            "kd top-k",
            kd._kd_topk_kernel,
            topk_sig,
            {"HAS_LABELS": True, "TAU_ONE": False, "GRAD": True},
            [({"BLOCK_V": kd.MAX_BLOCK_V_TOPK, "BLOCK_T": 64, "BLOCK_HIT": kd.BLOCK_HITS}, 8, 1)],
        )
    )
    return out


def _resources(cubin: bytes) -> tuple[int, int]:
    """(registers, spill stores) of a cubin, from the cuobjdump bundled with triton."""
    tool = os.path.join(os.path.dirname(triton.backends.nvidia.__file__), "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run([tool, "-res-usage", f.name], capture_output=True, text=True).stdout
    regs = re.search(r"REG:(\d+)", text)
    spill = re.search(r"STACK:(\d+)", text)
    return int(regs.group(1)) if regs else -1, int(spill.group(1)) if spill else -1


_ANY_VALUE = ("M", "M_KEY", "ignore_index")  # integer arguments with no alignment to assume


def compile_variant(v: Variant, arch: int, config) -> dict:
    meta, warps, stages = config
    constexprs = {**v.constexprs, **meta}
    signature = {**v.signature, **{k: "constexpr" for k in constexprs}}
    # What the JIT assumes at launch for realistic shapes: pointers and sizes/strides that are
    # multiples of 16 (without it loads are not vectorised, nor pipelined through shared memory).
    attrs = {
        (v.fn.arg_names.index(name),): [["tt.divisibility", 16]]
        for name, ty in v.signature.items()
        if ty.startswith("*") or (ty == "i32" and name not in _ANY_VALUE)
    }
    src = ASTSource(fn=v.fn, signature=signature, constexprs=constexprs, attrs=attrs)
    options = {"num_warps": warps, "num_stages": stages}
    if v.fn is quantize._quantize_rows_kernel:
        options["enable_fp_fusion"] = False
    compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=options)
    # Every kernel computes in float32 or narrower: float64 in the PTX is an accident (a Python
    # float literal that triton typed as float64 promotes whole expressions; 64x slower on GPUs).
    f64 = re.findall(r"^\s*\S+\.f64\b.*$", compiled.asm["ptx"], flags=re.MULTILINE)
    if f64:
        raise TypeError(
            f"float64 arithmetic in the PTX ({len(f64)} instructions): {f64[0].strip()}"
        )
    regs, stack = _resources(compiled.asm["cubin"])
    return {"shared": compiled.metadata.shared, "regs": regs, "stack": stack}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--all-configs", action="store_true")
    parser.add_argument("--arch", type=int, nargs="+", default=[80, 90])
    parser.add_argument("--only", nargs="+", help="variants whose name contains one of these")
    args = parser.parse_args(argv)
    failures = 0
    for v in variants(args.all_configs):
        if args.only and not any(part in v.name for part in args.only):
            continue
        for arch in args.arch:
            for config in v.configs:
                try:
                    r = compile_variant(v, arch, config)
                    smem = r["shared"] // 1024
                    status = f"regs {r['regs']:3d} stack {r['stack']:4d} smem {smem:3d} KiB"
                except Exception as e:  # report every failing variant, not just the first
                    failures += 1
                    status = f"FAILED: {type(e).__name__}: {str(e).splitlines()[0][:120]}"
                print(f"sm_{arch} {v.name:22s} {config[0]} w{config[1]} s{config[2]}: {status}")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
