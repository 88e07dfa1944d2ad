"""The ops of llmkern, each defined once: a ``torch.library`` custom op (``llmkern::<name>``) with
a fake implementation for torch.compile/export, a pure-PyTorch reference registered as the
``reference`` backend (the ground truth of every test), and a public Python function that checks
its arguments and dispatches to the selected backend (llmkern.backends).

Families: :mod:`llmkern.ops.int8` (quantisation, W8A8 and weight-only GEMM),
:mod:`llmkern.ops.sparse24` (2:4 format and sparse matmul), :mod:`llmkern.ops.kd`
(knowledge-distillation losses).
"""

from llmkern.ops.int8 import (  # noqa: F401
    MAX_K_W8A8,
    quantize_per_token,
    quantize_weight,
    w8_matmul,
    w8a8_matmul,
)
from llmkern.ops.kd import fused_linear_kd_loss, kd_loss, kd_loss_topk  # noqa: F401
from llmkern.ops.sparse24 import (  # noqa: F401
    compress_24,
    decompress_24,
    prune_24,
    sparse24_matmul,
    sparse24_w8_matmul,
    sparse24_w8a8_matmul,
)
