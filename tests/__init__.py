"""llmkern's tests, one package per source area: ops, nn, compress, cpu, triton, cuda, apps.

Shared helpers are plain modules here (``tests.strategies``, ``tests.models``, ``tests.ddp``),
imported by their package path; fixtures are in the conftest.py files."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]  # the repository root
