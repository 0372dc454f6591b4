"""3x3 convolution forward, input gradient and kernel gradient: XLA (jax) vs PyTorch.

  python benchmarks/conv_backward.py
  python benchmarks/conv_backward.py --shapes=8x16x16x32x32,2x256x256x128x128

Shapes are ``BxHxWxCinxCout`` (NHWC for JAX, the same data NCHW for PyTorch), float32, padding
1. Each number is the median milliseconds of ``--repeats`` windows of ``--calls`` calls after a
warm-up. PyTorch's gradients are timed as forward+grad minus its forward. Prints Markdown rows
for docs/benchmarks.md; pin both to one thread on a shared host (see benchmarks/attention.py).
"""

from __future__ import annotations

import jax
import numpy as np

from attention import median_ms, print_header, shapes_parser  # benchmarks/  pylint: disable=wrong-import-order

# tiny/small UNet levels, the tiny VAE at 32², the SD VAE's first level at 256²
DEFAULT_SHAPES = "8x16x16x32x32,8x8x8x64x64,16x32x32x32x32,2x32x32x64x64,2x256x256x128x128"


def conv_nhwc(x, w):
  return jax.lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)),
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))


def jax_times(x, w, calls: int, repeats: int) -> tuple[float, float, float]:
  forward = jax.jit(conv_nhwc)
  y = forward(x, w)
  d_input = jax.jit(lambda x, w, g: jax.vjp(lambda x: conv_nhwc(x, w), x)[1](g)[0])
  d_kernel = jax.jit(lambda x, w, g: jax.vjp(lambda w: conv_nhwc(x, w), w)[1](g)[0])
  return (median_ms(lambda: forward(x, w).block_until_ready(), calls, repeats),
          median_ms(lambda: d_input(x, w, y).block_until_ready(), calls, repeats),
          median_ms(lambda: d_kernel(x, w, y).block_until_ready(), calls, repeats))


def torch_times(x, w, calls: int, repeats: int) -> tuple[float, float, float]:
  import torch  # pylint: disable=import-outside-toplevel
  conv = torch.nn.functional.conv2d
  xt = torch.from_numpy(np.array(x)).permute(0, 3, 1, 2).contiguous().requires_grad_(True)
  wt = torch.from_numpy(np.array(w)).permute(3, 2, 0, 1).contiguous().requires_grad_(True)
  grad_out = torch.ones_like(conv(xt, wt, padding=1))

  def forward():
    with torch.no_grad():
      conv(xt, wt, padding=1)

  fwd = median_ms(forward, calls, repeats)
  d_input = median_ms(lambda: torch.autograd.grad(conv(xt, wt.detach(), padding=1), xt,
                                                  grad_out), calls, repeats)
  d_kernel = median_ms(lambda: torch.autograd.grad(conv(xt.detach(), wt, padding=1), wt,
                                                   grad_out), calls, repeats)
  return fwd, d_input - fwd, d_kernel - fwd


def main():
  args = shapes_parser(__doc__, DEFAULT_SHAPES, "BxHxWxCinxCout").parse_args()
  print_header(["B×H×W×Cin×Cout", "jax fwd (ms)", "torch fwd", "jax d_input", "torch d_input",
                "jax d_kernel", "torch d_kernel"])
  for spec in args.shapes.split(","):
    b, h, w_, c, o = (int(v) for v in spec.split("x"))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((b, h, w_, c)).astype(np.float32)
    w = rng.standard_normal((3, 3, c, o)).astype(np.float32)
    calls = max(1, args.calls // 5) if h * w_ * c >= 2 ** 22 else args.calls
    ours, peer = jax_times(x, w, calls, args.repeats), torch_times(x, w, calls, args.repeats)
    cells = " | ".join(f"{a:.2f} | {p:.2f}" for a, p in zip(ours, peer))
    print(f"| {spec} | {cells} |")


if __name__ == "__main__":
  main()
