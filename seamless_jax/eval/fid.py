"""FID with the standard TF-Inception (2015-12-05) features, via the ``pytorch-fid`` package.

The network is ``pytorch_fid.inception.InceptionV3`` (its FID-specific Inception blocks, pool3
2048-d features, bilinear resize to 299², inputs scaled to [−1, 1]) with weights read from the
file pytorch-fid itself downloads — ``pt_inception-2015-12-05-6726825d.pth`` — which the user
brings (nothing is downloaded here). The file is read with ``torch.load(weights_only=True)``
and loaded strictly. The Fréchet distance from features is computed exactly in NumPy
(:func:`fid_from_features`, tested equal to ``pytorch_fid.fid_score.calculate_frechet_distance``,
which :func:`frechet_distance` wraps for precomputed statistics).

torch / pytorch-fid are imported inside functions: install the ``eval`` extra to use this.
Images are (N, H, W, 3) uint8 RGB, any size (pytorch-fid resizes to 299²).
"""

from __future__ import annotations

import os
from typing import Iterable
from unittest import mock

import numpy as np

FEATURE_DIM = 2048  # pool3, the standard FID feature


def load_inception(weights_path: str, device: str = "cpu"):
  """``pytorch_fid`` InceptionV3 (pool3 output) with the user's 2015-12-05 weights, eval mode.

  Raises ``FileNotFoundError`` if the file is missing and ``RuntimeError`` (from torch's strict
  ``load_state_dict``) if it is not the FID Inception state dict.
  """
  if not os.path.isfile(weights_path):
    raise FileNotFoundError(f"FID Inception weights not found at {weights_path!r} (the file "
                            "pytorch-fid uses: pt_inception-2015-12-05-6726825d.pth)")
  import torch
  from pytorch_fid import inception as fid_inception
  state_dict = torch.load(weights_path, map_location="cpu", weights_only=True)
  # pytorch-fid builds the FID Inception and fetches its weights by URL; hand it the local
  # state dict instead, so the architecture and the strict load stay the package's own.
  with mock.patch.object(fid_inception, "load_state_dict_from_url",
                         lambda *args, **kwargs: state_dict):
    block = fid_inception.InceptionV3.BLOCK_INDEX_BY_DIM[FEATURE_DIM]
    model = fid_inception.InceptionV3([block], resize_input=True, normalize_input=True)
  return model.eval().to(device)


def inception_features(model, images: Iterable[np.ndarray] | np.ndarray, *, batch_size: int = 32,
                       device: str = "cpu") -> np.ndarray:
  """(N, 2048) float64 pool3 features of uint8 RGB images.

  ``images``: an (N, H, W, 3) uint8 array, or an iterable of (H, W, 3) uint8 arrays (sizes may
  differ between batches, not within one batch of ``batch_size``).
  """
  import torch
  images = list(images)
  features = []
  for start in range(0, len(images), batch_size):
    batch = np.stack([_check_uint8_rgb(im) for im in images[start:start + batch_size]])
    x = torch.from_numpy(batch).permute(0, 3, 1, 2).float().div(255.0).to(device)
    with torch.no_grad():
      pooled = model(x)[0]
    features.append(pooled.squeeze(-1).squeeze(-1).cpu().double().numpy())
  if not features:
    raise ValueError("inception_features: no images")
  return np.concatenate(features)


def _check_uint8_rgb(image) -> np.ndarray:
  image = np.asarray(image)
  if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
    raise ValueError(f"FID expects uint8 RGB (H, W, 3) images, got {image.dtype} {image.shape}")
  return image


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """``(mu (D,), sigma (D, D))``: mean and unbiased covariance of (N, D) features, N >= 2.

  The statistics pytorch-fid stores in its ``.npz`` files (use with :func:`frechet_distance`).
  """
  features = _check_features(features)
  return features.mean(axis=0), np.cov(features, rowvar=False)


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
  """``‖mu1 − mu2‖² + Tr(Σ1 + Σ2 − 2(Σ1Σ2)^½)`` — pytorch-fid's own implementation (scipy sqrtm).

  For statistics computed elsewhere; from features prefer :func:`fid_from_features` (same
  value, much faster at D = 2048).
  """
  from pytorch_fid.fid_score import calculate_frechet_distance
  return float(calculate_frechet_distance(mu1, sigma1, mu2, sigma2))


def _check_features(features) -> np.ndarray:
  features = np.asarray(features, np.float64)
  if features.ndim != 2 or features.shape[0] < 2:
    raise ValueError(f"need (N >= 2, D) features for FID statistics, got {features.shape}")
  return features


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
  """Symmetric square root of a symmetric PSD matrix (negative round-off eigenvalues → 0)."""
  eigenvalues, vectors = np.linalg.eigh(matrix)
  return (vectors * np.sqrt(np.clip(eigenvalues, 0, None))) @ vectors.T


def fid_from_features(features_a: np.ndarray, features_b: np.ndarray) -> float:
  """FID between two (N, D) feature sets — the same number as :func:`frechet_distance` of
  their :func:`feature_statistics`, computed exactly without a non-symmetric ``sqrtm``.

  With centred, ``1/sqrt(N − 1)``-scaled features A, B (Σ1 = AᵀA, Σ2 = BᵀB), the eigenvalues of
  Σ1Σ2 are the squared singular values of ABᵀ (= those of Σ1^½ Σ2^½), so
  ``Tr((Σ1Σ2)^½) = ‖ABᵀ‖_*`` (nuclear norm). ABᵀ is (Na, Nb): for BrushBench (600 images,
  D = 2048) this takes well under a second where scipy's ``sqrtm`` of a rank-deficient
  2048² matrix takes tens of seconds and warns that it is singular.
  """
  a, b = _check_features(features_a), _check_features(features_b)
  if a.shape[1] != b.shape[1]:
    raise ValueError(f"feature dims differ: {a.shape} vs {b.shape}")
  mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
  centred_a = (a - mu_a) / np.sqrt(a.shape[0] - 1)
  centred_b = (b - mu_b) / np.sqrt(b.shape[0] - 1)
  dim = a.shape[1]
  if a.shape[0] * b.shape[0] <= dim * dim:
    cross = centred_a @ centred_b.T
  else:  # many samples: the (D, D) form Σ1^½ Σ2^½ is smaller
    cross = _psd_sqrt(centred_a.T @ centred_a) @ _psd_sqrt(centred_b.T @ centred_b)
  trace_sqrt = np.linalg.svd(cross, compute_uv=False).sum()
  value = (np.sum((mu_a - mu_b) ** 2) + np.sum(centred_a ** 2) + np.sum(centred_b ** 2)
           - 2.0 * trace_sqrt)
  return float(value)


def compute_fid(images_a, images_b, weights_path: str, *, batch_size: int = 32,
                device: str = "cpu") -> float:
  """FID between two sets of uint8 RGB images (see :func:`inception_features`).

  The paper's protocol (BrushBench) is FID(generated images, the benchmark's source images).
  FID is biased at small N: compare numbers only at the same N (BrushBench has 600 images).
  """
  model = load_inception(weights_path, device)
  features_a = inception_features(model, images_a, batch_size=batch_size, device=device)
  features_b = inception_features(model, images_b, batch_size=batch_size, device=device)
  return fid_from_features(features_a, features_b)
