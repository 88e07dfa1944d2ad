"""Drop-in ``torch.nn`` modules backed by llmkern's ops."""

from llmkern.nn.kd import FusedLinearKDLoss, KDLoss  # noqa: E402,F401
