"""Drop-in ``torch.nn`` modules backed by llmkern's ops."""

from llmkern.nn.int8 import Int8Linear, Int8LinearQAT, Int8WeightOnlyLinear  # noqa: E402,F401
from llmkern.nn.kd import FusedLinearKDLoss, KDLoss  # noqa: E402,F401
from llmkern.nn.sparse24 import Sparse24Linear  # noqa: E402,F401
