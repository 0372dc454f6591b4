"""Attention kernels: our XLA path (`attention.softmax_attention`) vs `jax.nn.dot_product_attention`
(`implementation='xla'`) vs PyTorch's `F.scaled_dot_product_attention`, forward and
forward+backward.

  python benchmarks/attention.py                       # the tiny and 'small' UNet shapes
  python benchmarks/attention.py --shapes=2x4096x4096x8x40,2x4096x77x8x40   # SD-1.5, 64² latents

Shapes are ``BxLxSxNxH`` (batch, query length, key length, heads, head dim), float32 on the
default JAX device. Each case is timed after one warm-up (compile) call, median of
``--repeats`` windows of ``--calls`` calls; the largest gradient difference to
`jax.nn.dot_product_attention`'s autodiff is printed with the times. Prints markdown rows for
docs/benchmarks.md. On a shared CPU host pin both frameworks to one thread
(``OMP_NUM_THREADS=1 XLA_FLAGS="--xla_cpu_multi_thread_eigen=false
intra_op_parallelism_threads=1"``).
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from seamless_jax.models import attention

# tiny UNet (16² latents: self / cross), 'small' UNet at 32² latents (benchmarks/train_step.py)
DEFAULT_SHAPES = "8x256x256x2x16,8x256x77x2x16,2x1024x1024x8x8,2x1024x77x8x8"


def median_ms(fn, calls: int, repeats: int) -> float:
  """Median over ``repeats`` windows of the time of one ``fn()`` in milliseconds (after a warm-up)."""
  fn()
  windows = []
  for _ in range(repeats):
    start = time.perf_counter()
    for _ in range(calls):
      fn()
    windows.append((time.perf_counter() - start) / calls * 1e3)
  return statistics.median(windows)


def shapes_parser(doc: str, default_shapes: str, shape_format: str) -> argparse.ArgumentParser:
  """The flags of the micro-benchmarks here: ``--shapes`` (comma-separated ``shape_format``),
  ``--calls`` per timed window, ``--repeats`` windows."""
  parser = argparse.ArgumentParser(description=doc.splitlines()[0])
  parser.add_argument("--shapes", default=default_shapes, help=f"comma-separated {shape_format}")
  parser.add_argument("--calls", type=int, default=10)
  parser.add_argument("--repeats", type=int, default=5)
  return parser


def print_header(columns: list[str]) -> None:
  """The run's jax version and device, then a Markdown table header."""
  print(f"jax {jax.__version__}, device {jax.devices()[0].device_kind}")
  print("| " + " | ".join(columns) + " |")
  print("|" + "---|" * len(columns))


def jax_timings(fn, q, k, v, calls: int, repeats: int):
  """(forward ms, forward+backward ms, gradients) of ``fn(q, k, v)`` under jit."""
  forward = jax.jit(fn)
  grads = jax.jit(jax.grad(lambda *a: jnp.sum(fn(*a) ** 2), argnums=(0, 1, 2)))
  return (median_ms(lambda: forward(q, k, v).block_until_ready(), calls, repeats),
          median_ms(lambda: jax.block_until_ready(grads(q, k, v)), calls, repeats),
          grads(q, k, v))


def torch_timings(q, k, v, calls: int, repeats: int):
  """(forward ms, forward+backward ms) of ``F.scaled_dot_product_attention`` on (B, N, L, H)."""
  import torch  # pylint: disable=import-outside-toplevel
  q, k, v = (torch.from_numpy(np.array(x)).permute(0, 2, 1, 3).contiguous().requires_grad_(True)
             for x in (q, k, v))
  sdpa = torch.nn.functional.scaled_dot_product_attention

  def forward():
    with torch.no_grad():
      sdpa(q, k, v)

  def backward():
    torch.autograd.grad((sdpa(q, k, v) ** 2).sum(), (q, k, v))
  return median_ms(forward, calls, repeats), median_ms(backward, calls, repeats)


def main():
  parser = shapes_parser(__doc__, DEFAULT_SHAPES, "BxLxSxNxH")
  parser.add_argument("--no_torch", action="store_true")
  args = parser.parse_args()
  print_header(["B×L×S×N×H", "ours fwd (ms)", "jax.nn fwd", "torch fwd", "ours fwd+bwd",
                "jax.nn fwd+bwd", "torch fwd+bwd", "max abs grad diff"])
  for spec in args.shapes.split(","):
    b, l, s, n, h = (int(x) for x in spec.split("x"))
    rng = np.random.default_rng(0)
    q = jnp.asarray(rng.standard_normal((b, l, n, h)), jnp.float32)
    k, v = (jnp.asarray(rng.standard_normal((b, s, n, h)), jnp.float32) for _ in range(2))
    ours = jax_timings(attention.softmax_attention, q, k, v, args.calls, args.repeats)
    ref = jax_timings(lambda *a: jax.nn.dot_product_attention(*a, implementation="xla"),
                      q, k, v, args.calls, args.repeats)
    peer = (("n/a", "n/a") if args.no_torch
            else tuple(f"{t:.2f}" for t in torch_timings(q, k, v, args.calls, args.repeats)))
    diff = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(ours[2], ref[2]))
    print(f"| {spec} | {ours[0]:.2f} | {ref[0]:.2f} | {peer[0]} | {ours[1]:.2f} | {ref[1]:.2f} "
          f"| {peer[1]} | {diff:.1e} |")


if __name__ == "__main__":
  main()
