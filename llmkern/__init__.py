"""llmkern: kernels that make compressed LLMs fast.

INT8 GEMM (W8A8 and weight-only), 2:4 structured-sparse matmul and fused knowledge-distillation
losses, each with C++ CPU, Triton and CUDA C++ kernels behind one op registry (llmkern.ops,
llmkern.backends), drop-in ``torch.nn`` modules (llmkern.nn) and a compression API.
"""

__version__ = "0.1.0"

# Importing cpu, cuda and triton registers the fast backends of every op.
from llmkern import backends, cpu, cuda, ops, triton  # noqa: E402,F401
from llmkern.backends import BackendUnavailableError  # noqa: E402,F401
from llmkern.compress import (  # noqa: E402,F401
    Recovery,
    convert,
    distill,
    load,
    low_rank,
    prepare_qat,
    prune,
    prune_structure,
    quantize,
    save,
)
from llmkern.ops import (  # noqa: E402,F401
    compress_24,
    decompress_24,
    fused_linear_kd_loss,
    kd_loss,
    kd_loss_topk,
    prune_24,
    quantize_per_token,
    quantize_weight,
    sparse24_matmul,
    sparse24_w8_matmul,
    sparse24_w8a8_matmul,
    w8_matmul,
    w8a8_matmul,
)
