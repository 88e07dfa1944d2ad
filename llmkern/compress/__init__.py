"""The compression API: quantize, prune, prune_structure, low_rank, distill, save/load.

Each entry point changes the model in place and returns a report of what it did per layer
(parameters and bytes before/after); ``print(report)`` shows it as a table.
"""

from llmkern.compress.checkpoint import load, save
from llmkern.compress.distill import DistillReport, distill
from llmkern.compress.lowrank import LowRankLinear, low_rank
from llmkern.compress.prune import prune
from llmkern.compress.quantize import convert, prepare_qat, quantize
from llmkern.compress.report import Report
from llmkern.compress.structure import Recovery, prune_structure

__all__ = [
    "DistillReport", "LowRankLinear", "Recovery", "Report", "convert", "distill", "load",
    "low_rank", "prepare_qat", "prune", "prune_structure", "quantize", "save",
]  # fmt: skip
