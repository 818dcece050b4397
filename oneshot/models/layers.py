"""Parameter holders shared by children and supernets: one naming scheme, so slicing a supernet's
variables into a child's is a per-leaf prefix slice and nothing else."""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from oneshot.models import ops


class ConvBN(nn.Module):
  """A convolution kernel plus its BatchNorm (scale, bias; running mean/var in `batch_stats`).

  `shape` is (k, k, cin, cout) for a dense conv or (k, k, c) for a depthwise one. A supernet declares
  the largest shape and slices; a child declares its exact shape.
  """

  shape: Sequence[int]

  def setup(self):
    fan_in = 1
    for d in self.shape[:-1]:
      fan_in *= d
    init = nn.initializers.variance_scaling(2.0, "fan_in", "truncated_normal")
    self.kernel = self.param("kernel", lambda k, s: init(k, s) if len(s) == 4 else
                             jax.random.truncated_normal(k, -2, 2, s) * (2.0 / fan_in) ** 0.5,
                             tuple(self.shape))
    channels = self.shape[-1]
    self.scale = self.param("scale", nn.initializers.ones, (channels,))
    self.bias = self.param("bias", nn.initializers.zeros, (channels,))
    self.mean = self.variable("batch_stats", "mean", jnp.zeros, (channels,))
    self.var = self.variable("batch_stats", "var", jnp.ones, (channels,))

  def __call__(self, x: jax.Array, stride: int = 1, train: bool = True,
               depthwise_impl: str = "xla", relu: bool = True) -> jax.Array:
    """Conv -> BN (-> ReLU), the child's full-size path."""
    if len(self.shape) == 3:
      y = ops.depthwise_conv2d(x, self.kernel, stride, depthwise_impl)
    else:
      y = ops.conv2d(x, self.kernel, stride)
    y = self.normalize(y, train)
    return nn.relu(y) if relu else y

  def normalize(self, y: jax.Array, train: bool) -> jax.Array:
    return normalize(self, y, train)


def normalize(module: nn.Module, y: jax.Array, train: bool) -> jax.Array:
  """BatchNorm with `module`'s scale/bias and running mean/var: batch statistics when training (and
  running averages updated where `batch_stats` is mutable), running averages otherwise."""
  if not train:
    return ops.batch_norm(y, module.scale, module.bias, module.mean.value, module.var.value)[0]
  y, mean, var = ops.batch_norm(y, module.scale, module.bias)
  if not module.is_initializing() and module.is_mutable_collection("batch_stats"):
    m = ops.BN_MOMENTUM
    module.mean.value = m * module.mean.value + (1 - m) * mean
    module.var.value = m * module.var.value + (1 - m) * var
  return y


class BatchNorm(nn.Module):
  """BatchNorm alone, with ConvBN's leaf names (e.g. NAS-Bench-201's final BN before ReLU)."""

  channels: int

  def setup(self):
    self.scale = self.param("scale", nn.initializers.ones, (self.channels,))
    self.bias = self.param("bias", nn.initializers.zeros, (self.channels,))
    self.mean = self.variable("batch_stats", "mean", jnp.zeros, (self.channels,))
    self.var = self.variable("batch_stats", "var", jnp.ones, (self.channels,))

  def __call__(self, x: jax.Array, train: bool = True) -> jax.Array:
    return normalize(self, x, train)


class Classifier(nn.Module):
  features_in: int
  num_classes: int

  def setup(self):
    self.kernel = self.param("kernel", nn.initializers.lecun_normal(),
                             (self.features_in, self.num_classes))
    self.bias = self.param("bias", nn.initializers.zeros, (self.num_classes,))

  def __call__(self, x: jax.Array) -> jax.Array:
    return x @ self.kernel + self.bias
