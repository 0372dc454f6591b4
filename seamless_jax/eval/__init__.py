"""Evaluation: seam and preservation metrics, FID, Aesthetic Score, the BrushBench runner.

``metrics`` is NumPy-only (training imports it). ``fid`` and ``aesthetic`` import torch /
transformers lazily inside their functions (install the ``eval`` extra). Import submodules by
full path, e.g. ``from seamless_jax.eval import metrics``.
"""
