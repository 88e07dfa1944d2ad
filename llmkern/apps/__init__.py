"""The ``llmkern`` command-line applications, built on the library (never imported by it):

- cli: the ``llmkern`` command (``python -m llmkern``): info, bench, compress, distill;
- benchmark: timing and reporting helpers of ``llmkern bench`` and bench/bench_*.py;
- job: ``llmkern compress``, one model compressed several ways and compared;
- miniature: ``llmkern distill``, the knowledge-distillation experiment in miniature;
- hf, texts, fidelity: local Hugging Face models, offline text corpora, embedding fidelity.
"""
