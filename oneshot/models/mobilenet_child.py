"""The standalone inverted-residual child network of the `mobilenet` space.

Built from the architecture values and the space skeleton alone (what `architecture.json` holds), so an
exported subnet runs without the supernet or any search code.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from oneshot.models.layers import Classifier, ConvBN
from oneshot.spaces.mobilenet import stage_channels


@dataclasses.dataclass(frozen=True)
class BlockPlan:
  cin: int
  cout: int
  hidden: int
  kernel: int
  stride: int
  residual: bool
  skip: bool


def plan(skeleton: Mapping[str, Any], values: Mapping[str, Any]) -> tuple[BlockPlan, ...]:
  """Block shapes of the child with architecture `values` (decision name -> value)."""
  blocks = []
  cin = int(skeleton["stem_filters"])
  for i, blk in enumerate(skeleton["blocks"]):
    cout = stage_channels(blk["filters"], values[f"stage{blk['stage']}/width"])
    e = int(values[f"block{i}/expansion"])
    skip = bool(values.get(f"block{i}/skip", False)) if blk["droppable"] else False
    blocks.append(BlockPlan(cin=cin, cout=cout, hidden=cin * e,
                            kernel=int(values[f"block{i}/kernel"]), stride=int(blk["stride"]),
                            residual=has_residual(blk), skip=skip))
    cin = cout
  return tuple(blocks)


def has_residual(block: Mapping[str, Any]) -> bool:
  """Whether a skeleton block adds its input to its output. Skeletons written before the `residual`
  field (older architecture.json files) tied it to `droppable`, which was the same for them."""
  return bool(block.get("residual", block["droppable"]))


class MobileNet(nn.Module):
  """Stem conv -> inverted-residual blocks -> (1x1 head) -> global pool -> classifier."""

  skeleton: Any          # the space skeleton (dict), hashable through flax's freezing
  values: Any            # decision name -> value
  num_classes: int
  image_channels: int
  depthwise_impl: str = "xla"

  def setup(self):
    sk = self.skeleton
    stem = int(sk["stem_filters"])
    self.stem = ConvBN((3, 3, self.image_channels, stem))
    self.blocks_plan = plan(sk, self.values)
    layers = {}
    for i, b in enumerate(self.blocks_plan):
      if b.skip:
        continue
      layers[f"block{i}_expand"] = ConvBN((1, 1, b.cin, b.hidden), name=f"block{i}_expand")
      layers[f"block{i}_depthwise"] = ConvBN((b.kernel, b.kernel, b.hidden),
                                             name=f"block{i}_depthwise")
      layers[f"block{i}_project"] = ConvBN((1, 1, b.hidden, b.cout), name=f"block{i}_project")
    self.layers = layers
    last = self.blocks_plan[-1].cout if self.blocks_plan else stem
    head = int(sk.get("head_filters", 0))
    if head:
      self.head = ConvBN((1, 1, last, head))
      last = head
    self.classifier = Classifier(last, self.num_classes)

  def __call__(self, x: jax.Array, train: bool = True) -> jax.Array:
    x = self.stem(x, int(self.skeleton.get("stem_stride", 1)), train)
    for i, b in enumerate(self.blocks_plan):
      if b.skip:
        continue
      h = self.layers[f"block{i}_expand"](x, 1, train)
      h = self.layers[f"block{i}_depthwise"](h, b.stride, train, self.depthwise_impl)
      h = self.layers[f"block{i}_project"](h, 1, train, relu=False)
      x = x + h if b.residual else h
    if int(self.skeleton.get("head_filters", 0)):
      x = self.head(x, 1, train)
    return self.classifier(jnp.mean(x, axis=(1, 2)))
