"""Supernet of the `nasbench201` space: one weight tree, any cell, the DNA a traced int32 array.

Sharing scheme (the standard NAS-Bench-201 weight-sharing supernet, as in RSWS/ENAS/DARTS on the
benchmark): every edge of every cell owns one set of weights per parametrised op (nor_conv_1x1,
nor_conv_3x3); the unsearched stem, ResNet reduction blocks, final BN and classifier are shared by all
paths. Separate per-op weights, not slices, because the ops differ in kind, not size. The modules carry
the child's names (`cell{k}_edge{dst}{src}_{op}`), so exporting a child is a selection of keys.

Executors decide how a traced op index becomes computation, per edge:
* `switch`: `lax.switch` over the 5 ops, each branch rematerialised (jax.checkpoint) so XLA:CPU does not
  allocate and zero-fill every branch's residuals; only the chosen op runs. On CPU the branch convs use
  `conv2d_gemm_grad` (same forward, GEMM weight gradient): autodiff'd convs inside a conditional are
  an order of magnitude slower there than at top level.
* `mask`: all 5 ops run and a one-hot weighted sum selects one (exact: the others are multiplied by 0).
  No control flow, at the cost of running both convolutions on every edge, so small cells, whose chosen
  ops are cheap, pay the most relative to their child.
BatchNorm always uses batch statistics, the search-time convention of one-shot NAS.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from oneshot.models import ops
from oneshot.models import choices
from oneshot.models.layers import Classifier, ConvBN
from oneshot.models.nasbench201_child import (CONV_OPS, NUM_STAGES, BatchNorm, ResNetBlock, cell_stages,
                                        edge_name, op_layer_name, stage_channels)
from oneshot.spaces.core import Space
from oneshot.spaces.nasbench201 import EDGES, OPS


class NasBench201Supernet(nn.Module):
  """Holds every edge's per-op weights; `__call__(x, dna)` runs the cell `dna` in every cell."""

  space: Space
  num_classes: int
  image_channels: int
  executor: str = "switch"
  depthwise_impl: str = "xla"   # unused (no depthwise ops); kept for one constructor across spaces

  def setup(self):
    sk = self.space.skeleton
    channels = stage_channels(sk)
    self.stem = ConvBN((3, 3, self.image_channels, channels[0]))
    layers = {}
    for k, s in enumerate(cell_stages(sk)):
      c = channels[s]
      for dst, src in EDGES:
        for op, size in CONV_OPS.items():
          name = op_layer_name(k, dst, src, op)
          layers[name] = ConvBN((size, size, c, c), name=name)
    self.layers = layers
    self.reduce = [ResNetBlock(channels[s - 1], channels[s], name=f"reduce{s}")
                   for s in range(1, NUM_STAGES)]
    self.lastact = BatchNorm(channels[-1])
    self.classifier = Classifier(channels[-1], self.num_classes)

  def __call__(self, x: jax.Array, dna: jax.Array) -> jax.Array:
    if self.executor not in ("switch", "mask"):
      raise ValueError(f"unknown executor {self.executor!r}")
    edge_index = {(dst, src): self.space.names.index(edge_name(dst, src)) for dst, src in EDGES}
    x = self.stem(x, 1, relu=False)
    stage = 0
    for k, s in enumerate(cell_stages(self.space.skeleton)):
      if s != stage:
        x = self.reduce[s - 1](x)
        stage = s
      nodes = [x]
      for dst in (1, 2, 3):
        total = None
        for src in range(dst):
          y = self._edge(k, dst, src, choices.pick(dna, edge_index[(dst, src)], len(OPS)),
                         nodes[src])
          total = y if total is None else total + y
        nodes.append(total)
      x = nodes[3]
    x = nn.relu(self.lastact(x))
    return self.classifier(jnp.mean(x, axis=(1, 2)))

  def _edge(self, k: int, dst: int, src: int, choice: tuple, x: jax.Array) -> jax.Array:
    """One edge of cell k applied to node `src`; `choice` = (op index into OPS, op weights, gate) as
    `choices.pick` reads it from an int DNA or from choice weights."""
    index, op_weights, gate = choice
    # Read the weights here, outside any branch, so no parameter is created inside a trace.
    weights = {op: self._conv_weights(op_layer_name(k, dst, src, op)) for op in CONV_OPS}
    # At init nothing is differentiated; an eager lax.switch would compile once per edge (minutes).
    if self.executor == "switch" and not self.is_initializing():
      conv = conv2d_gemm_grad if jax.default_backend() == "cpu" else ops.conv2d
      branches = [jax.checkpoint(_op_fn(op, weights.get(op), conv)) for op in OPS]
      return choices.gated(lax.switch(index, branches, x), gate)
    branches = [_op_fn(op, weights.get(op)) for op in OPS]
    return sum(op_weights[i].astype(x.dtype) * b(x) for i, b in enumerate(branches))

  def _conv_weights(self, name: str) -> tuple[jax.Array, jax.Array, jax.Array]:
    layer = self.layers[name]
    return layer.kernel, layer.scale, layer.bias


def _op_fn(op: str, weights: Any, conv=ops.conv2d):
  """A pure function of the node for one op: the child's numerics (conv + batch-statistics BN)."""
  if op in CONV_OPS:
    kernel, scale, bias = weights
    return lambda x: ops.batch_norm(conv(nn.relu(x), kernel), scale, bias)[0]
  if op == "none":
    return jnp.zeros_like
  if op == "skip_connect":
    return lambda x: x
  if op == "avg_pool_3x3":
    return ops.avg_pool3x3
  raise ValueError(f"unknown NAS-Bench-201 op {op!r}")


@jax.custom_vjp
def conv2d_gemm_grad(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """ops.conv2d (stride 1) with the same forward pass, and a weight gradient computed as one GEMM.

  Inside a `lax.switch` branch XLA:CPU runs the autodiff'd convolution's weight gradient (and, less
  so, its input gradient) an order of magnitude slower than at top level, which made the switch
  executor many times slower than the child; a GEMM runs at the same speed in a branch. The forward
  pass is unchanged, so logits still equal the child's; the input gradient is the usual convolution
  with the flipped kernel, the weight gradient an im2col GEMM (equal up to float rounding).
  """
  return ops.conv2d(x, kernel)


def _conv_fwd(x, kernel):
  return ops.conv2d(x, kernel), (x, kernel)


def _conv_bwd(res, g):
  x, kernel = res
  k = kernel.shape[0]
  p = k // 2
  b, h, w, _ = x.shape
  dx = ops.conv2d(g, jnp.swapaxes(kernel[::-1, ::-1], 2, 3))
  xp = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
  cols = jnp.concatenate([xp[:, i:i + h, j:j + w] for i in range(k) for j in range(k)], -1)
  dk = jnp.einsum("nk,nd->kd", cols.reshape(b * h * w, -1), g.reshape(b * h * w, -1))
  return dx.astype(x.dtype), dk.reshape(kernel.shape).astype(kernel.dtype)


conv2d_gemm_grad.defvjp(_conv_fwd, _conv_bwd)


def child_variables(space: Space, variables: dict, dna) -> dict:
  """Selects the supernet's variables (every collection) for the child `dna`: the shared modules plus,
  per cell edge, the weights of the op the child uses; the other ops' weights are dropped."""
  values = space.to_values(dna)
  unused = set()
  for k in range(len(cell_stages(space.skeleton))):
    for dst, src in EDGES:
      for op in CONV_OPS:
        if values[edge_name(dst, src)] != op:
          unused.add(op_layer_name(k, dst, src, op))
  return {collection: {name: leaves for name, leaves in tree.items() if name not in unused}
          for collection, tree in variables.items()}
