"""The standalone NAS-Bench-201 child network (the benchmark's `TinyNetwork` with an `InferCell`).

Built from the architecture values and the space skeleton alone (what `architecture.json` holds), so an
exported cell runs without the supernet or any search code. Macro skeleton, as in the benchmark:

  stem conv3x3 + BN -> N cells at C -> ResNet block (stride 2) -> N cells at 2C -> ResNet block
  -> N cells at 4C -> BN -> ReLU -> global average pool -> classifier.

Every cell shares the one searched architecture: node0 is the cell input, node_j = sum_{i<j}
op_{j<-i}(node_i), the output is node3. Like the benchmark's InferCell, a child declares weights for every
parametrised edge it names (even an edge whose output node no edge reads), so parameter counts match the
benchmark's tables; 'none', 'skip_connect' and 'avg_pool_3x3' have no weights.

Parameter names (shared with the supernet, so exporting is a selection of its variables):
`stem`, `cell{k}_edge{dst}{src}_{op}` (k counts cells over all stages), `reduce{s}` (s = 1, 2; holding
`a`, `b`, `shortcut`), `lastact`, `classifier`.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from oneshot.models import ops
from oneshot.models.layers import BatchNorm, Classifier, ConvBN
from oneshot.spaces.nasbench201 import EDGES

CONV_OPS = {"nor_conv_1x1": 1, "nor_conv_3x3": 3}   # op -> kernel size; the only ops with weights
NUM_STAGES = 3


def edge_name(dst: int, src: int) -> str:
  """The decision name of an edge in the space (`edge(1<-0)`)."""
  return f"edge({dst}<-{src})"


def op_layer_name(cell: int, dst: int, src: int, op: str) -> str:
  """Module name of one edge op's weights; the op is part of the name so the supernet can hold one
  set per op and a child's tree is a subset of its keys."""
  return f"cell{cell}_edge{dst}{src}_{op}"


def stage_channels(skeleton: Mapping[str, Any]) -> tuple[int, ...]:
  c = int(skeleton["channels"])
  return tuple(c * 2 ** s for s in range(NUM_STAGES))


def cell_stages(skeleton: Mapping[str, Any]) -> tuple[int, ...]:
  """Stage index of each cell, cells numbered 0..3N-1 across stages."""
  n = int(skeleton["cells_per_stage"])
  return tuple(s for s in range(NUM_STAGES) for _ in range(n))


def apply_op(op: str, x: jax.Array, conv: Any = None) -> jax.Array:
  """One edge op on a cell node; `conv` is the ConvBN module for the conv ops (ReLU -> conv -> BN)."""
  if op == "none":
    return jnp.zeros_like(x)
  if op == "skip_connect":
    return x
  if op == "avg_pool_3x3":
    return ops.avg_pool3x3(x)
  if op in CONV_OPS:
    return conv(nn.relu(x), relu=False)
  raise ValueError(f"unknown NAS-Bench-201 op {op!r}")


class Conv(nn.Module):
  """A bias-free convolution kernel (the ResNet block's 1x1 shortcut has no BatchNorm)."""

  shape: Sequence[int]

  def setup(self):
    init = nn.initializers.variance_scaling(2.0, "fan_in", "truncated_normal")
    self.kernel = self.param("kernel", init, tuple(self.shape))

  def __call__(self, x: jax.Array, stride: int = 1) -> jax.Array:
    return ops.conv2d(x, self.kernel, stride)


class ResNetBlock(nn.Module):
  """NAS-Bench-201's ResNetBasicblock between stages: ReLU-conv3x3/2-BN, ReLU-conv3x3-BN, plus a
  shortcut avgpool 2x2 -> conv1x1. Unsearched, so the supernet uses this very module."""

  cin: int
  cout: int

  def setup(self):
    self.a = ConvBN((3, 3, self.cin, self.cout))
    self.b = ConvBN((3, 3, self.cout, self.cout))
    self.shortcut = Conv((1, 1, self.cin, self.cout))

  def __call__(self, x: jax.Array, train: bool = True) -> jax.Array:
    h = self.a(nn.relu(x), 2, train, relu=False)
    h = self.b(nn.relu(h), 1, train, relu=False)
    return self.shortcut(ops.avg_pool2x2(x)) + h


class NasBench201(nn.Module):
  """The child network of one NAS-Bench-201 cell architecture."""

  skeleton: Any          # the space skeleton (dict): channels, cells_per_stage
  values: Any            # decision name ('edge(1<-0)', ...) -> op string
  num_classes: int
  image_channels: int

  def setup(self):
    channels = stage_channels(self.skeleton)
    self.stem = ConvBN((3, 3, self.image_channels, channels[0]))
    layers = {}
    for k, s in enumerate(cell_stages(self.skeleton)):
      c = channels[s]
      for dst, src in EDGES:
        op = self.values[edge_name(dst, src)]
        if op in CONV_OPS:
          name = op_layer_name(k, dst, src, op)
          layers[name] = ConvBN((CONV_OPS[op], CONV_OPS[op], c, c), name=name)
    self.layers = layers
    self.reduce = [ResNetBlock(channels[s - 1], channels[s], name=f"reduce{s}")
                   for s in range(1, NUM_STAGES)]
    self.lastact = BatchNorm(channels[-1])
    self.classifier = Classifier(channels[-1], self.num_classes)

  def __call__(self, x: jax.Array, train: bool = True) -> jax.Array:
    x = self.stem(x, 1, train, relu=False)
    stage = 0
    for k, s in enumerate(cell_stages(self.skeleton)):
      if s != stage:
        x = self.reduce[s - 1](x, train)
        stage = s
      x = self._cell(k, x, train)
    x = nn.relu(self.lastact(x, train))
    return self.classifier(jnp.mean(x, axis=(1, 2)))

  def _cell(self, k: int, x: jax.Array, train: bool) -> jax.Array:
    nodes = [x]
    for dst in (1, 2, 3):
      total = None
      for src in range(dst):
        op = self.values[edge_name(dst, src)]
        if op == "none":
          continue
        conv = self.layers.get(op_layer_name(k, dst, src, op))
        if conv is not None:
          conv = lambda h, conv=conv, **kw: conv(h, 1, train, **kw)
        y = apply_op(op, nodes[src], conv)
        total = y if total is None else total + y
      nodes.append(jnp.zeros_like(x) if total is None else total)
    return nodes[3]
