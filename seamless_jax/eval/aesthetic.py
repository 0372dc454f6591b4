"""LAION Aesthetic Score: CLIP ViT-L/14 image embedding (L2-normalised) → linear head (768 → 1).

Inputs the user brings (nothing is downloaded):
  * ``clip_folder``: a transformers ``CLIPVisionModelWithProjection`` (or full ``CLIPModel``)
    folder with safetensors weights, e.g. a local copy of ``openai/clip-vit-large-patch14``;
  * ``head_path``: LAION's ``sa_0_4_vit_l_14_linear.pth`` (a ``torch.nn.Linear(768, 1)`` state
    dict: ``weight`` (1, 768), ``bias`` (1,)), read with ``torch.load(weights_only=True)``.

Preprocessing is OpenAI CLIP's (shortest side → the model's image size, bicubic; centre crop;
CLIP mean/std), done by transformers' ``CLIPImageProcessor``. torch / transformers are imported
inside the functions (``eval`` extra).
"""

from __future__ import annotations

import os

import numpy as np


def _load_head(head_path: str, embed_dim: int):
  import torch
  if not os.path.isfile(head_path):
    raise FileNotFoundError(f"aesthetic head not found at {head_path!r} "
                            "(LAION's sa_0_4_vit_l_14_linear.pth)")
  state = torch.load(head_path, map_location="cpu", weights_only=True)
  if set(state) != {"weight", "bias"} or tuple(state["weight"].shape) != (1, embed_dim):
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    raise ValueError(f"{head_path}: expected a Linear({embed_dim}, 1) state dict "
                     f"{{weight (1, {embed_dim}), bias (1,)}}, got {shapes}")
  head = torch.nn.Linear(embed_dim, 1)
  head.load_state_dict(state)
  return head.eval()


class AestheticScorer:
  """``scorer(images) -> (N,)`` LAION aesthetic scores (about 1–10) of uint8 RGB images."""

  def __init__(self, clip_folder: str, head_path: str, device: str = "cpu"):
    from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection
    if not os.path.isfile(os.path.join(clip_folder, "config.json")):
      raise FileNotFoundError(f"{clip_folder!r} is not a transformers CLIP folder (no config.json)")
    self.device = device
    self.model = CLIPVisionModelWithProjection.from_pretrained(
        clip_folder, local_files_only=True, use_safetensors=True).eval().to(device)
    size = self.model.config.image_size
    self.processor = CLIPImageProcessor(size={"shortest_edge": size},
                                        crop_size={"height": size, "width": size})
    self.head = _load_head(head_path, self.model.config.projection_dim).to(device)

  def embed(self, images) -> np.ndarray:
    """(N, D) L2-normalised CLIP image embeddings (float64) of uint8 (H, W, 3) images."""
    import torch
    images = [np.array(im) for im in images]  # writable copies (torch warns on read-only)
    for im in images:
      if im.dtype != np.uint8 or im.ndim != 3 or im.shape[-1] != 3:
        raise ValueError(f"aesthetic score expects uint8 RGB (H, W, 3), got {im.dtype} {im.shape}")
    pixels = self.processor(images=images, return_tensors="pt")["pixel_values"].to(self.device)
    with torch.no_grad():
      embeds = self.model(pixel_values=pixels).image_embeds
    embeds = embeds / embeds.norm(dim=-1, keepdim=True)
    return embeds.cpu().double().numpy()

  def __call__(self, images, batch_size: int = 16) -> np.ndarray:
    import torch
    images = list(images)
    scores = []
    for start in range(0, len(images), batch_size):
      embeds = self.embed(images[start:start + batch_size])
      with torch.no_grad():
        head_in = torch.from_numpy(embeds).float().to(self.device)
        scores.append(self.head(head_in)[:, 0].cpu().double().numpy())
    if not scores:
      raise ValueError("aesthetic score: no images")
    return np.concatenate(scores)
