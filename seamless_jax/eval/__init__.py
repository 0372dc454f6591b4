"""Evaluation: FID, Aesthetic Score and the BrushBench runner (above inference).

The seam and kept-region metrics they report live in :mod:`seamless_jax.metrics`, a leaf that
training uses too. ``fid`` and ``aesthetic`` import torch / transformers lazily inside their
functions (install the ``eval`` extra). Import submodules by full path.
"""
