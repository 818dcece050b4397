"""The space of your own Flax module: its `oneshot.nas.Choice` points, read from the module itself.

Config section (what `api.search(..., model=SmallCNN())` writes, or a config file sets by hand):
`space.name = "module"`, `space.module = "package.file:Class"`, `space.kwargs = {field: value}` and
`space.input_shape = (H, W, C)` (filled from the dataset when left out). The skeleton keeps those three,
so an export's architecture.json names the module it was cut from.
"""

from __future__ import annotations

from typing import Any, Mapping

from oneshot.errors import UserError
from oneshot.spaces.core import Space


def build(config: Mapping[str, Any]) -> Space:
  from oneshot import nas  # pylint: disable=import-outside-toplevel  # keeps flax out of plain spaces
  path, shape = config.get("module"), config.get("input_shape")
  if not isinstance(path, str) or ":" not in path:
    raise UserError(f"--config.space.module={path!r}: name your Flax module class as "
                    "'package.file:Class' (or pass model= to oneshot.api.search)")
  if not shape or not all(isinstance(d, int) and d > 0 for d in shape):
    raise UserError(f"--config.space.input_shape={shape!r}: give one example's shape, e.g. (28, 28, 1)")
  kwargs = config.get("kwargs")
  kwargs = None if kwargs is None else dict(kwargs)
  module = nas.resolve(path, kwargs)
  skeleton = {"module": path, "kwargs": kwargs, "input_shape": [int(d) for d in shape]}
  return Space("module", nas.decisions(module, shape), skeleton)
