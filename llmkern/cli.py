"""The ``llmkern`` command line. User mistakes end in one clear line, not a traceback."""

from __future__ import annotations

import argparse
import os
import platform
import sys


def cmd_info(args) -> int:
    import torch

    import llmkern
    from llmkern import _ext, backends

    gpu = backends.gpu_info()
    print(f"llmkern   {llmkern.__version__}")
    print(f"python    {platform.python_version()}")
    print(f"torch     {torch.__version__} (cuda {torch.version.cuda or 'none'})")
    print(f"triton    {backends.triton_version() or 'not installed'}")
    if _ext.available():
        c = _ext._C
        print(f"extension llmkern._C built, cuda={'yes' if c.built_with_cuda() else 'no'}")
        isa = c.active_isa()
        note = (
            ""
            if isa == c.detected_isa()
            else f" (lowered by LLMKERN_CPU_ISA from {c.detected_isa()})"
        )
        print(f"cpu isa   {isa}{note}, avx512_bf16={'yes' if c.has_avx512_bf16() else 'no'}")
        print(f"threads   {c.parallel_threads()}")
    else:
        print(f"extension not built: {_ext.load_error}")
    if gpu:
        print(
            f"gpu       {gpu['name']} (sm_{gpu['capability'].replace('.', '')}, {gpu['memory_gb']} GB) x{gpu['count']}"
        )
    else:
        print("gpu       none")
    forced = os.environ.get("LLMKERN_BACKEND")
    if forced:
        print(f"LLMKERN_BACKEND={forced} (every op must use it or raise)")
    print()
    print(f"{'op':<24}{'cpu tensors':<14}{'cuda tensors':<14}registered")
    for op in backends.registered_ops():
        have = ",".join(sorted(backends.kernels(op)))
        print(
            f"{op:<24}{backends.would_use(op, 'cpu'):<14}{backends.would_use(op, 'cuda'):<14}{have}"
        )
    return 0


def cmd_bench(args) -> int:
    from llmkern.benchmark import run_bench_scripts

    return run_bench_scripts(args.op, args.json, args.plot, args.quick)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="llmkern", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("info", help="versions, CPU ISA, GPU and the backend each op uses")
    s.set_defaults(func=cmd_info)
    s = sub.add_parser("bench", help="run the microbenchmarks (bench/bench_*.py)")
    s.add_argument(
        "--op", action="append", help="benchmark name(s), e.g. int8_gemm, sparse24, kd_loss"
    )
    s.add_argument("--json", default="bench/results", help="folder for the JSON results")
    s.add_argument("--plot", action="store_true", help="also draw PNG plots of the speedups")
    s.add_argument("--quick", action="store_true", help="few shapes and repetitions (smoke run)")
    s.set_defaults(func=cmd_bench)
    for register in _EXTRA_COMMANDS:
        register(sub)
    return p


# Later subcommands (compress, distill) add themselves here: callables taking the subparsers.
_EXTRA_COMMANDS: list = []


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except BrokenPipeError:  # output piped into `head` and closed early
        return 0
    except (ValueError, TypeError, FileNotFoundError, RuntimeError) as exc:
        if os.environ.get("LLMKERN_TRACEBACK"):
            raise
        print(f"llmkern {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
