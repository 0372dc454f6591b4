"""One-time converter: torchvision VGG16 + lpips linear heads (.pth) → LPIPS safetensors.

    python tools/convert_lpips.py --vgg vgg16-397923af.pth --lin vgg.pth --out lpips_vgg.safetensors

``--vgg``: a torchvision ``vgg16`` state dict (``features.N.weight``; classifier keys ignored).
``--lin``: the ``lpips`` package's ``weights/v0.1/vgg.pth`` (``linK.model.1.weight``).
A full ``lpips.LPIPS`` state dict (``net.sliceK.N.*`` + ``lin*``) can be passed as either.
Files are read with ``torch.load(weights_only=True)`` (no unpickling of arbitrary objects).
The output holds Flax-layout float32 arrays keyed ``vgg/features_N/kernel`` etc.; load it with
``seamless_jax.models.lpips.load_lpips``.
"""

from __future__ import annotations

import argparse

import numpy as np


def load_torch_state_dict(path: str) -> dict[str, np.ndarray]:
  """Reads a .pth state dict safely and returns numpy float32 arrays."""
  import torch
  sd = torch.load(path, map_location="cpu", weights_only=True)
  if "state_dict" in sd and isinstance(sd["state_dict"], dict):
    sd = sd["state_dict"]
  return {k: v.detach().cpu().float().numpy() for k, v in sd.items() if hasattr(v, "numpy")}


def convert(state_dicts) -> dict[str, np.ndarray]:
  """Torch-style state dicts (numpy or torch values) → flat Flax LPIPS params."""
  from seamless_jax.models.lpips import params_from_torch
  as_np = [{k: (v.detach().cpu().float().numpy() if hasattr(v, "detach") else np.asarray(v))
            for k, v in sd.items()} for sd in state_dicts]
  return params_from_torch(as_np)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--vgg", required=True, help="torchvision vgg16 .pth state dict")
  parser.add_argument("--lin", required=True, help="lpips v0.1 vgg.pth linear heads")
  parser.add_argument("--out", required=True, help="output .safetensors")
  args = parser.parse_args(argv)
  from safetensors.numpy import save_file
  flat = convert([load_torch_state_dict(args.vgg), load_torch_state_dict(args.lin)])
  save_file({k: np.ascontiguousarray(v) for k, v in flat.items()}, args.out)
  print(f"wrote {len(flat)} tensors to {args.out}")


if __name__ == "__main__":
  main()
