"""Numerical building blocks shared by the standalone child models and the supernet.

Both sides call these same functions, so a supernet path and its exported child compute the same
numbers (tested to 1e-5). The one op with two implementations is the depthwise convolution:

* `xla`: `lax.conv_general_dilated(feature_group_count=C)`, the right choice on TPU/GPU.
* `shift`: on XLA:CPU the grouped convolution is ~20x slower than it should be (17.5 ms forward for
  7x7 on 64x8x8x96), and autodiff of a shifted multiply-add formulation leaves a ~25 ms weight gradient
  made of 49 strided reductions. `shift` computes the forward pass and the input gradient as a loop
  over the k*k shifted multiply-adds and the weight gradient as one batched GEMM over channels
  followed by a gather of the k*k diagonals (`benchmarks/depthwise_ops.py` measures all three;
  `auto` picks per platform).
"""

from __future__ import annotations

import contextlib
import functools
from typing import Iterator

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

BN_EPSILON = 1e-5
BN_MOMENTUM = 0.9


def default_depthwise_impl() -> str:
  return "shift" if jax.default_backend() == "cpu" else "xla"


def conv2d(x: jax.Array, kernel: jax.Array, stride: int = 1) -> jax.Array:
  """NHWC x HWIO convolution with symmetric k//2 padding (same as the depthwise op's)."""
  k = kernel.shape[0]
  if k == 1 and stride == 1:
    return jnp.einsum("bhwc,cd->bhwd", x, kernel[0, 0])
  p = k // 2
  return lax.conv_general_dilated(x, kernel, (stride, stride), ((p, p), (p, p)),
                                  dimension_numbers=("NHWC", "HWIO", "NHWC"))


def depthwise_conv2d(x: jax.Array, kernel: jax.Array, stride: int = 1, impl: str = "xla",
                     size: int | jax.Array | None = None) -> jax.Array:
  """Depthwise convolution with the centre `size` x `size` taps of `kernel` [k, k, C] (all k x k when
  `size` is None), symmetric size//2 padding, then stride.

  `size` may be a traced int: a supernet block then compiles one depthwise op for all its kernel
  sizes instead of one branch per size (with `shift`, the loop runs only the chosen size's taps).
  """
  if impl == "xla":
    k = kernel.shape[0]
    if size is not None:  # taps outside the centre are zeroed: the same sum, at k x k cost
      kernel = kernel * centre_mask(k, size)[:, :, None]
    p = k // 2
    return lax.conv_general_dilated(x, kernel[:, :, None, :], (stride, stride), ((p, p), (p, p)),
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                    feature_group_count=x.shape[-1])
  if impl != "shift":
    raise ValueError(f"unknown depthwise impl {impl!r}")
  size = jnp.asarray(kernel.shape[0] if size is None else size, jnp.int32)
  out = _depthwise_shift(x, kernel, size)
  return out[:, ::stride, ::stride, :] if stride > 1 else out


def centre_mask(k: int, size: int | jax.Array) -> jax.Array:
  """[k, k] float32 mask of the centre size x size taps of a k x k kernel (size may be traced)."""
  r = np.abs(np.arange(k) - k // 2)
  return (jnp.asarray(np.maximum(r[:, None], r[None, :])) <= size // 2).astype(jnp.float32)


def _shift_forward(x, kernel, size=None):
  """Sum over the centre size x size taps of x shifted by the tap times the tap's weights.

  A loop over the taps rather than k*k unrolled multiply-adds: the same adds in the same order, but
  one loop body in the program instead of k*k ops per depthwise layer (the supernet's train step has
  ~100 of them: XLA:CPU compiled it in 14 s instead of 38 s, at the same step time), and the trip
  count may be traced.
  """
  kernel = jnp.asarray(kernel)  # may be numpy (an exported child's): indexed by the traced tap
  k = kernel.shape[0]
  size = k if size is None else size
  p, off = k // 2, (k - size) // 2
  xp = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))

  def tap(t, out):
    i, j = off + t // size, off + t % size
    return out + lax.dynamic_slice(xp, (0, i, j, 0), x.shape) * kernel[i, j]

  return lax.fori_loop(0, size * size, tap, jnp.zeros(x.shape, jnp.result_type(x, kernel)))


@jax.custom_vjp
def _depthwise_shift(x, kernel, size):
  return _shift_forward(x, kernel, size)


def _depthwise_shift_fwd(x, kernel, size):
  return _shift_forward(x, kernel, size), (x, kernel, size)


@functools.lru_cache(maxsize=None)
def _diagonal_indices(k: int, h: int, w: int):
  """Index pairs (padded position, output position) whose products sum to each kernel tap."""
  p = k // 2
  wp = w + 2 * p
  ii, jj, hh, ww = np.meshgrid(np.arange(k), np.arange(k), np.arange(h), np.arange(w),
                               indexing="ij")
  src = ((hh + ii) * wp + (ww + jj)).reshape(k * k, h * w)
  dst = (hh * w + ww).reshape(k * k, h * w)
  return src, dst


def _depthwise_shift_bwd(res, g):
  x, kernel, size = res
  k = kernel.shape[0]
  p = k // 2
  b, h, w, c = x.shape
  # Input gradient: correlation of g with the flipped kernel (whose centre is the flipped centre),
  # again as shifted multiply-adds.
  dx = _shift_forward(g, kernel[::-1, ::-1], size)
  # Weight gradient: all (padded position, output position) products per channel in one batched
  # GEMM contracting the batch, then sum the k*k diagonals. XLA:CPU runs this ~15x faster than
  # 49 separate multiply-reduce passes. Taps outside the centre `size` were not used: zero.
  xp = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
  pairs = jnp.einsum("bpc,bqc->cpq", xp.reshape(b, -1, c), g.reshape(b, -1, c))
  src, dst = _diagonal_indices(k, h, w)
  dk = pairs[:, src, dst].sum(-1).T.reshape(k, k, c) * centre_mask(k, size)[:, :, None]
  return dx.astype(x.dtype), dk.astype(kernel.dtype), None


_depthwise_shift.defvjp(_depthwise_shift_fwd, _depthwise_shift_bwd)


_BN_AXIS: list[str | None] = [None]


@contextlib.contextmanager
def batch_stats_axis(axis_name: str | None) -> Iterator[None]:
  """While tracing inside it, batch statistics are averaged over mesh axis `axis_name` (sync BN).

  Off by default: TuNAS normalises each core's shard with its own path's statistics. On, a step whose
  devices all run one path equals the single-device step on the whole batch exactly.
  """
  _BN_AXIS.append(axis_name)
  try:
    yield
  finally:
    _BN_AXIS.pop()


def batch_norm(x: jax.Array, scale: jax.Array, bias: jax.Array,
               mean: jax.Array | None = None, var: jax.Array | None = None,
               mask: jax.Array | None = None) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Normalises with the given statistics, or with the batch's when `mean` is None.

  Returns (y, batch_mean, batch_var) so callers can update running averages. Masked-off channels
  (zeros from a prefix mask) normalise to 0 and stay 0 after `mask`.
  """
  if mean is None:
    axes = tuple(range(x.ndim - 1))
    mean = x.mean(axes)
    if _BN_AXIS[-1] is not None:
      mean = lax.pmean(mean, _BN_AXIS[-1])
    var = jnp.square(x - mean).mean(axes)
    if _BN_AXIS[-1] is not None:
      var = lax.pmean(var, _BN_AXIS[-1])
  y = (x - mean) * lax.rsqrt(var + BN_EPSILON) * scale + bias
  if mask is not None:
    y = y * mask
  return y, mean, var


def avg_pool3x3(x: jax.Array) -> jax.Array:
  """3x3 stride-1 average pool, counting only real pixels at the border (NAS-Bench-201)."""
  window = (1, 3, 3, 1)
  pad = ((0, 0), (1, 1), (1, 1), (0, 0))
  total = lax.reduce_window(x, 0.0, lax.add, window, (1, 1, 1, 1), pad)
  count = lax.reduce_window(jnp.ones_like(x[:1, :, :, :1]), 0.0, lax.add, window, (1, 1, 1, 1), pad)
  return total / count


def avg_pool2x2(x: jax.Array) -> jax.Array:
  b, h, w, c = x.shape
  x = x[:, :h // 2 * 2, :w // 2 * 2]
  return x.reshape(b, h // 2, 2, w // 2, 2, c).mean((2, 4))
