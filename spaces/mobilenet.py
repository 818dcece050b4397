"""TuNAS/ProxylessNAS-style inverted-residual space.

Per stage: an output width multiplier (a prefix mask over the stage's filters, as TuNAS, so every block of
the stage keeps matching residual widths). Per block: depthwise kernel size and expansion ratio; blocks
after the first of a stage may also be dropped (identity), which is how depth is searched. Stem width,
stages, blocks and strides come from the config, so a digits config is tiny and ImageNet is full size.
"""

from __future__ import annotations

import numbers
from typing import Any, Mapping, Sequence

from oneshot.errors import UserError
from oneshot.spaces.core import Decision, Space


def build(config: Mapping[str, Any]) -> Space:
  _check(config)
  stages = [tuple(int(v) for v in s) for s in config["stages"]]
  decisions = []
  blocks = []
  for s, (filters, num_blocks, stride) in enumerate(stages):
    decisions.append(Decision(f"stage{s}/width", tuple(config["width_multipliers"])))
    for b in range(num_blocks):
      i = len(blocks)
      droppable = b > 0 and config.get("allow_skip", True)
      # A kept block's kernel and expansion matter only while the block is not dropped.
      active_if = (f"block{i}/skip", (False,)) if droppable else None
      decisions.append(Decision(f"block{i}/kernel", tuple(config["kernel_sizes"]), active_if))
      decisions.append(Decision(f"block{i}/expansion", tuple(config["expansion_ratios"]), active_if))
      if droppable:
        decisions.append(Decision(f"block{i}/skip", (False, True)))
      # Every block after a stage's first has stride 1 and the stage's width in and out, so it keeps
      # its residual connection whether or not it may be dropped.
      blocks.append(dict(stage=s, filters=filters, stride=stride if b == 0 else 1,
                         droppable=droppable, residual=b > 0))
  skeleton = dict(stem_filters=int(config["stem_filters"]), stem_stride=int(config.get("stem_stride", 1)),
                  head_filters=int(config.get("head_filters", 0)), stages=stages, blocks=blocks,
                  kernel_sizes=tuple(config["kernel_sizes"]),
                  expansion_ratios=tuple(config["expansion_ratios"]),
                  width_multipliers=tuple(config["width_multipliers"]))
  return Space("mobilenet", tuple(decisions), skeleton)



def stage_channels(filters: int, multiplier: float) -> int:
  """Active filters of a stage at a width multiplier: the prefix kept by the TuNAS-style mask."""
  return max(1, int(round(filters * float(multiplier))))


def _check(config: Mapping[str, Any]) -> None:
  """Every skeleton field has the right shape before any layer is sized from it: a wrong value from a
  `--config.space.*` override fails here, in one line, not as a shape error deep inside Flax."""
  def is_int(v, low):
    return isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= low

  def fail(field, value, want, example):
    example = f"'{example}'" if " " in str(example) else example
    raise UserError(f"--config.space.{field}={value!r} is not {want}; e.g. "
                    f"--config.space.{field}={example}")

  def choices(field, ok, want, example):
    value = config.get(field)
    if not isinstance(value, Sequence) or isinstance(value, str) or not value or not all(
        ok(v) for v in value):
      fail(field, value, want, example)

  for field, low, example in (("stem_filters", 1, 16), ("stem_stride", 1, 1), ("head_filters", 0, 0)):
    value = config.get(field, low)
    if not is_int(value, low):
      fail(field, value, f"an integer >= {low}", example)
  stages = config.get("stages")
  if (not isinstance(stages, Sequence) or isinstance(stages, str) or not stages or not all(
      isinstance(s, Sequence) and not isinstance(s, str) and len(s) == 3 and all(is_int(v, 1) for v in s)
      for s in stages)):
    fail("stages", stages, "a non-empty list of (filters, blocks, stride) triples of positive integers",
         "((16, 2, 1), (24, 2, 2))")
  choices("kernel_sizes", lambda v: is_int(v, 1) and v % 2 == 1,
          "a non-empty list of odd positive kernel sizes", "(3, 5, 7)")
  choices("expansion_ratios", lambda v: is_int(v, 1), "a non-empty list of positive integers", "(3, 6)")
  choices("width_multipliers",
          lambda v: isinstance(v, numbers.Real) and not isinstance(v, bool) and 0 < v < float("inf"),
          "a non-empty list of positive numbers", "(0.5, 1.0)")
