"""Numerical building blocks shared by the standalone child models and the supernet.

Both sides call these same functions, so a supernet path and its exported child compute the same
numbers (tested to 1e-5). The one op with two implementations is the depthwise convolution:

* `xla`: `lax.conv_general_dilated(feature_group_count=C)`, the right choice on TPU/GPU.
* `shift`: on XLA:CPU the grouped convolution is an order of magnitude slower than its arithmetic
  warrants, and autodiff of a shifted multiply-add formulation leaves a weight gradient made of k*k
  strided reductions. `shift` computes the forward pass and the input gradient as a loop
  over the k*k shifted multiply-adds and the weight gradient as a loop of one reduction per tap, both
  at the strided output positions only and over cache-sized blocks of images
  (`benchmarks/depthwise_ops.py` measures all three, results in docs/results.md; `auto` picks per
  platform).
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
  return _depthwise_shift(x, kernel, size, stride)


def centre_mask(k: int, size: int | jax.Array) -> jax.Array:
  """[k, k] float32 mask of the centre size x size taps of a k x k kernel (size may be traced)."""
  r = np.abs(np.arange(k) - k // 2)
  return (jnp.asarray(np.maximum(r[:, None], r[None, :])) <= size // 2).astype(jnp.float32)


# Activations of more than _CACHE_FLOATS floats (4 MiB, about a core's L2 cache) are swept in blocks
# of whole images of about _BLOCK_FLOATS, so that the k*k passes over a block hit the cache instead of
# memory; unblocked, the weight gradient of large activations ran several times slower
# (`benchmarks/depthwise_ops.py`).
_CACHE_FLOATS = 1 << 20
_BLOCK_FLOATS = 1 << 17


def _images_per_block(shape: tuple[int, ...]) -> int:
  b, per_image = shape[0], int(np.prod(shape[1:]))
  if b * per_image <= _CACHE_FLOATS:
    return b
  n = max(1, min(b, _BLOCK_FLOATS // per_image))
  while b % n:
    n -= 1
  return n


def _over_blocks(fn, b: int, n: int, init):
  """fn(first image, carry) -> carry over the b // n blocks of n images (one call when n == b)."""
  if n == b:
    return fn(0, init)
  return lax.fori_loop(0, b // n, lambda block, carry: fn(block * n, carry), init)


def _tap_loop(x, k: int, size, stride: int, block_fn, init):
  """Runs block_fn(tap_patch, first image, carry) -> carry over blocks of images.

  tap_patch(t) is the input under tap t of the centre size x size taps of a k x k kernel, at the
  output positions only (stride applied), for the block's images; it also returns the tap's (i, j).
  """
  b, h, w, c = x.shape
  p, off = k // 2, (k - size) // 2
  xp = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
  n = _images_per_block(x.shape)
  ho, wo = -(-h // stride), -(-w // stride)
  window = (n, (ho - 1) * stride + 1, (wo - 1) * stride + 1, c)

  def block(start, carry):
    def tap_patch(t):
      i, j = off + t // size, off + t % size
      return lax.dynamic_slice(xp, (start, i, j, 0), window)[:, ::stride, ::stride], i, j
    return block_fn(tap_patch, start, n, carry)

  return _over_blocks(block, b, n, init)


def _shift_forward(x, kernel, size=None, stride: int = 1):
  """Sum over the centre size x size taps of x shifted by the tap times the tap's weights, computed
  at the strided output positions only.

  A loop over the taps rather than k*k unrolled multiply-adds: the same adds in the same order, but
  one loop body in the program instead of k*k ops per depthwise layer (a supernet's train step has
  about a hundred such layers, so unrolled taps were most of what XLA:CPU compiled), at the same step
  time, and the trip count may be traced.
  """
  kernel = jnp.asarray(kernel)  # may be numpy (an exported child's): indexed by the traced tap
  k = kernel.shape[0]
  size = k if size is None else size
  b, h, w, c = x.shape
  ho, wo = -(-h // stride), -(-w // stride)
  dtype = jnp.result_type(x, kernel)

  def block(tap_patch, start, n, out):
    def tap(t, acc):
      patch, i, j = tap_patch(t)
      return acc + patch * kernel[i, j]
    acc = lax.fori_loop(0, size * size, tap, jnp.zeros((n, ho, wo, c), dtype))
    return acc if n == b else lax.dynamic_update_slice(out, acc, (start, 0, 0, 0))

  return _tap_loop(x, k, size, stride, block, jnp.zeros((b, ho, wo, c), dtype))


# Below this many output elements, an unstrided weight gradient is one batched GEMM instead of the
# tap loop, whose iterations then cost more than their work; above it the loop wins, and always on
# strided layers (the loop visits the output positions only). The threshold sits where forward + both
# gradients, summed over kernel sizes 3, 5, 7, cost the same both ways (`benchmarks/depthwise_ops.py`).
_GEMM_BELOW = 1 << 19


@functools.lru_cache(maxsize=None)
def _diagonal_indices(k: int, h: int, w: int):
  """Index pairs (padded input position, output position) whose products sum to each kernel tap of
  an unstrided layer (the GEMM path; strided layers take the tap loop)."""
  wp = w + k - 1
  ii, jj, hh, ww = np.meshgrid(np.arange(k), np.arange(k), np.arange(h), np.arange(w),
                               indexing="ij")
  src = ((hh + ii) * wp + (ww + jj)).reshape(k * k, h * w)
  dst = (hh * w + ww).reshape(k * k, h * w)
  return src, dst


def _kernel_grad(x, g, k: int, size, stride: int):
  """dk[i, j] = sum over images and output positions of (input under tap (i, j)) * g, for the
  centre size x size taps (the others were not used: zero).

  One reduction per tap and block of images. On small activations, all (padded position, output
  position) products per channel in one batched GEMM contracting the batch, then the sums of the
  k*k diagonals: ~8x the needed multiplies on 14x14 (and every kernel size at 7x7 cost), but no
  loop, which wins where the loop's iterations cost more than their work."""
  b, h, w, c = x.shape
  if stride == 1 and g.size < _GEMM_BELOW:
    p = k // 2
    xp = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
    pairs = jnp.einsum("bpc,bqc->cpq", xp.reshape(b, -1, c), g.reshape(b, -1, c))
    src, dst = _diagonal_indices(k, h, w)
    return pairs[:, src, dst].sum(-1).T.reshape(k, k, c) * centre_mask(k, size)[:, :, None]

  def block(tap_patch, start, n, dk):
    g_block = lax.dynamic_slice_in_dim(g, start, n, 0)
    def tap(t, dk):
      patch, i, j = tap_patch(t)
      total = lax.dynamic_slice(dk, (i, j, 0), (1, 1, c)) + (patch * g_block).sum((0, 1, 2))
      return lax.dynamic_update_slice(dk, total, (i, j, 0))
    return lax.fori_loop(0, size * size, tap, dk)

  return _tap_loop(x, k, size, stride, block, jnp.zeros((k, k, c), g.dtype))


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _depthwise_shift(x, kernel, size, stride):
  return _shift_forward(x, kernel, size, stride)


def _depthwise_shift_fwd(x, kernel, size, stride):
  return _shift_forward(x, kernel, size, stride), (x, kernel, size)


def _depthwise_shift_bwd(stride, res, g):
  x, kernel, size = res
  # Input gradient: correlation of g (back at the input's resolution, zeros between strided outputs)
  # with the flipped kernel, whose centre is the flipped centre: again shifted multiply-adds.
  if stride > 1:
    g_full = jnp.zeros(x.shape, g.dtype).at[:, ::stride, ::stride].set(g)
  else:
    g_full = g
  dx = _shift_forward(g_full, kernel[::-1, ::-1], size)
  dk = _kernel_grad(x, g, kernel.shape[0], size, stride)
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
