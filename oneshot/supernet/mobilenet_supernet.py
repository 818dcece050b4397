"""Supernet of the `mobilenet` space: one weight tree, any DNA, the DNA a traced int32 array.

Sharing scheme (TuNAS/OFA): every choice of a block reads a prefix slice of the block's largest
weights. Kernel size k uses the centre k x k of the largest depthwise kernel; expansion ratio e the
first cin*e hidden channels; stage width w the first round(filters*w) output filters. Slices, not
separate per-choice weights, because they keep the supernet as small as its largest child and let
every child inherit trained weights directly (export is a slice).

Executors decide how a traced choice becomes computation:
* `switch`: `lax.switch` over statically sliced branches (one per expansion; also per kernel size
  with XLA's grouped conv, while the CPU depthwise loop takes the kernel size as a traced trip count),
  `lax.cond` for dropped blocks; stage widths stay channel masks inside each branch. Only the chosen
  kernel/expansion runs.
* `switch_exact`: also branches on the input and output widths, so every branch has exactly the child's
  shapes, at a branch per (input width, output width) pair: more branches, so a longer compile than
  `switch`, for about the same step (`benchmarks/step_time.py`; docs/results.md).
* `mask`: the largest block always runs; the choice is a mask on kernel taps and channels. No control
  flow, fastest to compile, but pays the largest child every step.
Every branch is wrapped in `jax.checkpoint`: without it JAX's cond partial-eval zero-fills the residuals
of every other branch in the forward pass, work the child never does, which made switch gradients
several times slower than the child's on CPU (`benchmarks/step_time.py`).
"""

from __future__ import annotations

import functools
import itertools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from oneshot.models import ops
from oneshot.models.layers import Classifier, ConvBN
from oneshot.models import choices
from oneshot.spaces.core import Space
from oneshot.models.mobilenet_child import has_residual
from oneshot.spaces.mobilenet import stage_channels


class MobileNetSupernet(nn.Module):
  """Holds the largest weights; `__call__(x, dna)` runs the path `dna` with batch-statistics BN."""

  space: Space
  num_classes: int
  image_channels: int
  executor: str = "mask"
  depthwise_impl: str = "xla"
  # "centre" (slices of one kmax kernel) | "transform" (OFA: the slices through learned per-layer kernel
  # transformation matrices) | "separate" (TuNAS: one kernel per size)
  depthwise_sharing: str = "centre"

  def setup(self):
    sk = self.space.skeleton
    self.kmax = max(sk["kernel_sizes"])
    self.emax = max(sk["expansion_ratios"])
    wmax = max(float(w) for w in sk["width_multipliers"])
    stem = int(sk["stem_filters"])
    self.stem = ConvBN((3, 3, self.image_channels, stem))
    layers, transforms = {}, {}
    cin = stem
    max_channels = []
    for i, blk in enumerate(sk["blocks"]):
      cout = stage_channels(blk["filters"], wmax)
      layers[f"block{i}_expand"] = ConvBN((1, 1, cin, cin * self.emax), name=f"block{i}_expand")
      if self.depthwise_sharing == "separate":
        for k in sk["kernel_sizes"]:
          layers[f"block{i}_depthwise_k{k}"] = ConvBN((k, k, cin * self.emax),
                                                      name=f"block{i}_depthwise_k{k}")
      else:
        layers[f"block{i}_depthwise"] = ConvBN((self.kmax, self.kmax, cin * self.emax),
                                               name=f"block{i}_depthwise")
      if self.depthwise_sharing == "transform":
        transforms[f"block{i}"] = KernelTransform(tuple(sk["kernel_sizes"]),
                                                  name=f"block{i}_transform")
      layers[f"block{i}_project"] = ConvBN((1, 1, cin * self.emax, cout), name=f"block{i}_project")
      max_channels.append((cin, cout))
      cin = cout
    self.layers = layers
    self.transforms = transforms
    self.max_channels = tuple(max_channels)
    head = int(sk.get("head_filters", 0))
    if head:
      self.head = ConvBN((1, 1, cin, head))
      cin = head
    self.classifier = Classifier(cin, self.num_classes)

  def _choice(self, dna: jax.Array, name: str) -> tuple[choices.Pick, tuple[Any, ...]]:
    """((index, weights, gate), the decision's choices): see oneshot.models.choices."""
    i = self.space.names.index(name)
    d = self.space.decisions[i]
    return choices.Pick(*choices.pick(dna, i, d.num_choices)), d.choices

  def __call__(self, x: jax.Array, dna: jax.Array) -> jax.Array:
    sk = self.space.skeleton
    x = self.stem(x, int(sk.get("stem_stride", 1)))
    # Read the weights here, outside any jax transform: flax sets submodules up lazily, and a setup
    # inside jax.checkpoint/lax.switch would leak tracers at init.
    weights = {name: _Weights(layer) for name, layer in self.layers.items()}
    weights.update({f"{name}_transform": t.matrices() for name, t in self.transforms.items()})
    # (input width choice, possible input widths): the stem is not searched.
    cin, cin_choices = choices.Pick(jnp.zeros((), jnp.int32), jnp.ones(1), None), (
        int(sk["stem_filters"]),)
    for i, blk in enumerate(sk["blocks"]):
      width, widths = self._choice(dna, f"stage{blk['stage']}/width")
      cout_choices = tuple(stage_channels(blk["filters"], w) for w in widths)
      expansion, ratios = self._choice(dna, f"block{i}/expansion")
      kernel, kernels = self._choice(dna, f"block{i}/kernel")
      gate = _product(width.gate, expansion.gate, kernel.gate)
      block = functools.partial(self._block, weights, i, blk, (cin, cin_choices),
                                (expansion, ratios), (kernel, kernels), (width, cout_choices))
      residual = has_residual(blk)
      if blk["droppable"]:  # droppable blocks are residual: dropping one leaves the identity
        skip, _ = self._choice(dna, f"block{i}/skip")
        if self.executor.startswith("switch"):
          x = lax.cond(skip.index == 1, lambda x: choices.gated(x, skip.gate),
                       jax.checkpoint(lambda x: choices.gated(x + choices.gated(block(x), gate),
                                                              skip.gate)), x)
        else:  # choice 0 keeps the block, choice 1 drops it (the identity)
          keep, drop = skip.weights[0].astype(x.dtype), skip.weights[1].astype(x.dtype)
          x = keep * (x + block(x)) + drop * x
      elif self.executor.startswith("switch"):
        x = x + choices.gated(block(x), gate) if residual else choices.gated(block(x), gate)
      else:
        x = x + block(x) if residual else block(x)
      cin, cin_choices = width, cout_choices
    if int(sk.get("head_filters", 0)):
      x = self.head(x)
    return self.classifier(jnp.mean(x, axis=(1, 2)))

  def _block(self, weights, i, blk, cin, expansion, kernel, cout, x):
    """One inverted-residual block; each argument pair is (traced choice index, static choices)."""
    expand, project = weights[f"block{i}_expand"], weights[f"block{i}_project"]
    stride = int(blk["stride"])
    cin_max, cout_max = self.max_channels[i]

    def depthwise_weights(k, hidden):
      """(kernel [k, k, hidden], BN scale, BN bias) of kernel size k: its own weights (separate), or
      the centre k x k of the largest kernel with the shared BN (centre)."""
      if self.depthwise_sharing == "separate":
        w = weights[f"block{i}_depthwise_k{k}"]
        return w.kernel[:, :, :hidden], w.scale[:hidden], w.bias[:hidden]
      w, off = weights[f"block{i}_depthwise"], (self.kmax - k) // 2
      if self.depthwise_sharing == "transform":
        kern = transform_kernel(w.kernel[:, :, :hidden], weights[f"block{i}_transform"], k)
        return kern, w.scale[:hidden], w.bias[:hidden]
      return w.kernel[off:off + k, off:off + k, :hidden], w.scale[:hidden], w.bias[:hidden]

    def chosen_depthwise_weights(hidden, select):
      """depthwise_weights of the kernel choice, kernels padded to kmax x kmax (the op reads their
      centre at the chosen size). `select` picks from the per-size (kernel, scale, bias) stacks: an
      index for the switch executors, a choice-weighted sum for `mask`."""
      if self.depthwise_sharing == "centre":
        w = weights[f"block{i}_depthwise"]
        return w.kernel[:, :, :hidden], w.scale[:hidden], w.bias[:hidden]
      pad = lambda w, k: jnp.pad(w, (((self.kmax - k) // 2,) * 2,) * 2 + ((0, 0),))
      parts = [depthwise_weights(k, hidden) for k in kernels]
      return tuple(select(jnp.stack([pad(p[0], k) if n == 0 else p[n]
                                     for k, p in zip(kernels, parts)])) for n in range(3))

    def run(x, c_in, e, k, c_out, k_mask=None, hidden_mask=None, out_mask=None, depthwise=None):
      """The block at static sizes: exactly the child's computation on prefix slices. k=None: the
      traced kernel choice, run by one depthwise op that reads the chosen size's centre taps."""
      hidden = c_in * e
      h = ops.conv2d(x[..., :c_in], expand.kernel[:, :, :c_in, :hidden])
      h = nn.relu(ops.batch_norm(h, expand.scale[:hidden], expand.bias[:hidden],
                                 mask=hidden_mask)[0])
      size = None if k is not None else jnp.asarray(kernels, jnp.int32)[kernel.index]
      kern, dw_scale, dw_bias = depthwise or (
          depthwise_weights(k, hidden) if k is not None else
          chosen_depthwise_weights(hidden, lambda stack: stack[kernel.index]))
      if k_mask is not None:
        kern = kern * k_mask[:, :, None]
      h = ops.depthwise_conv2d(h, kern, stride, self.depthwise_impl, size)
      h = nn.relu(ops.batch_norm(h, dw_scale, dw_bias, mask=hidden_mask)[0])
      h = ops.conv2d(h, project.kernel[:, :, :hidden, :c_out])
      h = ops.batch_norm(h, project.scale[:c_out], project.bias[:c_out], mask=out_mask)[0]
      return jnp.pad(h, ((0, 0),) * 3 + ((0, cout_max - c_out),))

    (cin, cin_choices), (expansion, ratios), (kernel, kernels), (width, cout_choices) = (
        cin, expansion, kernel, cout)
    cin_idx, e_idx, k_idx, w_idx = cin.index, expansion.index, kernel.index, width.index
    if self.executor == "mask":
      # Every mask is the choice-weighted sum of the candidates' masks: the chosen one's for an int
      # DNA, a differentiable mixture for choice weights (FBNetV2's masking).
      k_mask = sum(kernel.weights[j].astype(x.dtype) * ops.centre_mask(self.kmax, k).astype(x.dtype)
                   for j, k in enumerate(kernels))
      hidden = np.arange(cin_max * self.emax)
      hidden_mask = sum(cin.weights[a].astype(x.dtype) * expansion.weights[j].astype(x.dtype) *
                        (hidden < c * e).astype(x.dtype)
                        for a, c in enumerate(cin_choices) for j, e in enumerate(ratios))
      out_mask = sum(width.weights[j].astype(x.dtype) * (np.arange(cout_max) < c).astype(x.dtype)
                     for j, c in enumerate(cout_choices))
      depthwise = None
      if self.depthwise_sharing != "centre":  # the chosen kernel's weights, padded to kmax
        onehot = kernel.weights.astype(x.dtype)
        depthwise = chosen_depthwise_weights(cin_max * self.emax,
                                             lambda stack: jnp.tensordot(onehot, stack, 1))
      return run(x, cin_max, self.emax, self.kmax, cout_max, k_mask, hidden_mask, out_mask,
                 depthwise)
    # Kernel sizes are branches only for XLA's grouped conv; the CPU op runs the chosen size's taps in
    # a loop (a traced trip count), so one branch serves all sizes: a third of the program to compile,
    # at the same step time. Remat keeps XLA from zero-filling every branch's residuals.
    kernel_branches = (None,) if self.depthwise_impl == "shift" else kernels
    k_branch = 0 if kernel_branches == (None,) else k_idx
    if self.executor == "switch_exact":
      # Every shape-changing choice is a static branch: each runs exactly the child's shapes.
      combos = list(itertools.product(cin_choices, ratios, kernel_branches, cout_choices))
      branches = [jax.checkpoint(functools.partial(run, c_in=a, e=e, k=k, c_out=c))
                  for a, e, k, c in combos]
      index = (((cin_idx * len(ratios) + e_idx) * len(kernel_branches) + k_branch) *
               len(cout_choices) + w_idx)
      return lax.switch(index, branches, x)
    if self.executor != "switch":
      raise ValueError(f"unknown executor {self.executor!r}")
    # Expansions (and kernels, see above) become static branches; widths stay masks inside each
    # branch (branching on them too multiplies branches by 4 and XLA:CPU compile time by ~4 for a few
    # % of step time).
    cin_active = jnp.asarray(cin_choices)[cin_idx]
    out_mask = (jnp.arange(cout_max) < jnp.asarray(cout_choices)[w_idx]).astype(x.dtype)
    single = len(cin_choices) == 1 and len(cout_choices) == 1
    branches = []
    for e in ratios:
      for k in kernel_branches:
        hidden_mask = None if single else (jnp.arange(cin_max * e) < cin_active * e).astype(x.dtype)
        branches.append(jax.checkpoint(functools.partial(
            run, c_in=cin_max, e=e, k=k, c_out=cout_max, hidden_mask=hidden_mask,
            out_mask=None if single else out_mask)))
    index = e_idx * len(kernel_branches) + k_branch
    return lax.switch(index, branches, x)


def _product(*gates):
  present = [g for g in gates if g is not None]
  return functools.reduce(lambda a, b: a * b, present) if present else None


class KernelTransform(nn.Module):
  """Once-for-All's kernel transformation: kernel size k reads the centre of the next larger size's
  (transformed) kernel through a learned k^2 x k^2 matrix, one per layer and size, shared by the
  layer's channels and initialised to the identity (so it starts as the plain centre slice). It lets a
  3x3 kernel differ from the 3x3 centre of the 7x7 that the larger children need, for k^2 (81 + 625)
  extra weights per layer."""

  kernel_sizes: tuple[int, ...]

  def setup(self):
    ks = sorted(self.kernel_sizes)[:-1]  # the largest kernel is its own weights
    self.mats = {f"k{k}": self.param(f"k{k}", lambda _, n: jnp.eye(n, dtype=jnp.float32), k * k)
                 for k in ks}

  def matrices(self) -> dict[str, jax.Array]:
    return dict(self.mats)


def transform_kernel(kernel: Any, matrices: dict, k: int) -> Any:
  """The k x k depthwise kernel [k, k, C] that `KernelTransform` makes of the largest `kernel`."""
  sizes = sorted((int(name[1:]) for name in matrices), reverse=True)
  w = kernel
  for size in sizes:
    if size < k:
      break
    off = (w.shape[0] - size) // 2
    w = w[off:off + size, off:off + size]
    w = jnp.einsum("pc,pq->qc", w.reshape(size * size, -1), matrices[f"k{size}"]).reshape(
        size, size, -1)
  return w


class _Weights:
  def __init__(self, layer: ConvBN):
    self.kernel, self.scale, self.bias = layer.kernel, layer.scale, layer.bias


def child_variables(space: Space, variables: dict, dna) -> dict:
  """Slices the supernet's variables down to the child `dna` (the exported child's exact shapes)."""
  from oneshot.models.mobilenet_child import plan  # pylint: disable=import-outside-toplevel
  values = space.to_values(dna)
  blocks = plan(space.skeleton, values)
  out: dict = {}
  for collection, tree in variables.items():
    out[collection] = {}
    for name, leaves in tree.items():
      if name.startswith("block"):
        i = int(name[5:name.index("_")])
        b = blocks[i]
        if b.skip:
          continue
        kind = name.split("_", 1)[1]
        kmax = max(space.skeleton["kernel_sizes"])
        if kind == "transform":  # folded into the child's depthwise kernel below
          continue
        if kind == "depthwise" and f"block{i}_transform" in tree:
          out[collection][name] = dict(leaves, kernel=np.asarray(transform_kernel(
              leaves["kernel"][:, :, :b.hidden], tree[f"block{i}_transform"], b.kernel)),
              scale=leaves["scale"][:b.hidden], bias=leaves["bias"][:b.hidden])
          continue
        if kind.startswith("depthwise_k"):  # separate weights per kernel size: keep the child's
          if int(kind[len("depthwise_k"):]) != b.kernel:
            continue
          name, kind, kmax = f"block{i}_depthwise", "depthwise", b.kernel
        out[collection][name] = {leaf: _slice_block_leaf(kind, leaf, value, b, kmax)
                                 for leaf, value in leaves.items()}
      elif name == "head" or (name == "classifier" and not space.skeleton.get("head_filters")):
        # The layer that reads the last block's (width-searched) channels: slice its input rows.
        cin = blocks[-1].cout if blocks else int(space.skeleton["stem_filters"])
        out[collection][name] = {
            leaf: (value[:, :, :cin, :] if leaf == "kernel" and value.ndim == 4 else
                   value[:cin] if leaf == "kernel" else value)
            for leaf, value in leaves.items()}
      else:
        out[collection][name] = dict(leaves)
  return out


def _slice_block_leaf(kind, leaf, value, b, kmax):
  if kind == "expand":
    return value[:, :, :b.cin, :b.hidden] if leaf == "kernel" else value[:b.hidden]
  if kind == "depthwise":
    off = (kmax - b.kernel) // 2
    if leaf == "kernel":
      return value[off:off + b.kernel, off:off + b.kernel, :b.hidden]
    return value[:b.hidden]
  return value[:, :, :b.hidden, :b.cout] if leaf == "kernel" else value[:b.cout]
