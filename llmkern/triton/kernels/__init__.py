"""The Triton kernels themselves and their launchers. Nothing here is imported at package import:
the backend modules one level up (int8, sparse24, kd) import these on the first call, so that
``import llmkern`` never imports triton."""
