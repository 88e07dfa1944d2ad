"""Triton kernels, one file per op family. Importing this package registers the ``triton``
backend of each op; triton itself is imported lazily, when a kernel first runs."""
