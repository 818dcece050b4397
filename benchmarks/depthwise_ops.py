"""Why the CPU depthwise op is what it is: forward and gradient times of each formulation.

Prints, for a 7x7 depthwise conv on 64x8x8x96 (a layer of benchmarks/peer_nni.py's space), the median time of XLA's
grouped convolution, the shifted multiply-add with plain autodiff, and oneshot's `shift` op (custom VJP:
shifted forward/input gradient, per-tap or batched-GEMM weight gradient), plus the ratio to XLA. Run:
`python benchmarks/depthwise_ops.py`.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from oneshot.models import ops

B, H, C, K = 64, 8, 96, 7


def _median_ms(f, *args, n=30):
  f = jax.jit(f)
  jax.block_until_ready(f(*args))
  times = []
  for _ in range(n):
    t0 = time.perf_counter()
    jax.block_until_ready(f(*args))
    times.append(time.perf_counter() - t0)
  return float(np.median(times)) * 1e3


def main() -> None:
  x = jax.random.normal(jax.random.PRNGKey(0), (B, H, H, C))
  w = jax.random.normal(jax.random.PRNGKey(1), (K, K, C))
  autodiff_shift = lambda x, w: ops._shift_forward(x, w)  # pylint: disable=protected-access
  variants = {"xla grouped conv": lambda x, w: ops.depthwise_conv2d(x, w, 1, "xla"),
              "shift + autodiff": autodiff_shift,
              "shift + custom VJP (oneshot)": lambda x, w: ops.depthwise_conv2d(x, w, 1, "shift")}
  print(f"backend {jax.default_backend()}, {K}x{K} depthwise on {B}x{H}x{H}x{C}")
  base = None
  for name, f in variants.items():
    fwd = _median_ms(f, x, w)
    grad = _median_ms(jax.grad(lambda x, w, f=f: jnp.sum(f(x, w) ** 2), argnums=(0, 1)), x, w)
    base = base or (fwd, grad)
    print(f"{name:<30} forward {fwd:7.2f} ms ({base[0] / fwd:5.1f}x faster than xla) | "
          f"forward+backward {grad:7.2f} ms ({base[1] / grad:5.1f}x)")


if __name__ == "__main__":
  main()
