"""TuNAS/ProxylessNAS-style inverted-residual space.

Per stage: an output width multiplier (a prefix mask over the stage's filters, as TuNAS, so every block of
the stage keeps matching residual widths). Per block: depthwise kernel size and expansion ratio; blocks
after the first of a stage may also be dropped (identity), which is how depth is searched. Stem width,
stages, blocks and strides come from the config, so a digits config is tiny and ImageNet is full size.
"""

from __future__ import annotations

from typing import Any, Mapping

from spaces.core import Decision, Space


def build(config: Mapping[str, Any]) -> Space:
  stages = [tuple(int(v) for v in s) for s in config["stages"]]
  decisions = []
  blocks = []
  for s, (filters, num_blocks, stride) in enumerate(stages):
    decisions.append(Decision(f"stage{s}/width", tuple(config["width_multipliers"])))
    for b in range(num_blocks):
      i = len(blocks)
      decisions.append(Decision(f"block{i}/kernel", tuple(config["kernel_sizes"])))
      decisions.append(Decision(f"block{i}/expansion", tuple(config["expansion_ratios"])))
      droppable = b > 0 and config.get("allow_skip", True)
      if droppable:
        decisions.append(Decision(f"block{i}/skip", (False, True)))
      blocks.append(dict(stage=s, filters=filters, stride=stride if b == 0 else 1,
                         droppable=droppable))
  skeleton = dict(stem_filters=int(config["stem_filters"]), stem_stride=int(config.get("stem_stride", 1)),
                  head_filters=int(config.get("head_filters", 0)), stages=stages, blocks=blocks,
                  kernel_sizes=tuple(config["kernel_sizes"]),
                  expansion_ratios=tuple(config["expansion_ratios"]),
                  width_multipliers=tuple(config["width_multipliers"]))
  return Space("mobilenet", tuple(decisions), skeleton)



def stage_channels(filters: int, multiplier: float) -> int:
  """Active filters of a stage at a width multiplier: the prefix kept by the TuNAS-style mask."""
  return max(1, int(round(filters * float(multiplier))))
