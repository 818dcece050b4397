"""Supernets: one weight tree per space that runs any DNA, plus the executor choice per platform."""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax

from oneshot.errors import UserError
from oneshot.models import ops
from oneshot.spaces.core import Space

EXECUTORS = ("auto", "switch", "switch_exact", "mask")

# `auto` picks the executor with the best compile time plus step time for searches of a few thousand
# steps: switch compiles far faster than switch_exact for about the same step, and mask pays for every
# candidate in each step. benchmarks/step_time.py measures supernet / child step and compile per
# executor (results in docs/results.md). On TPU/GPU conditionals are cheap and switch runs only the
# chosen path (TuNAS's own TPU code masks); measure there with the same script before changing this.
AUTO_EXECUTOR = {"cpu": "switch", "gpu": "switch", "cuda": "switch", "rocm": "switch", "tpu": "switch"}


def resolve_executor(name: str, platform: str | None = None) -> str:
  if name not in EXECUTORS:
    raise UserError(f"unknown executor {name!r}; set --config.supernet.executor to one of "
                    f"{list(EXECUTORS)}")
  if name != "auto":
    return name
  return AUTO_EXECUTOR.get(platform or jax.default_backend(), "switch")


def resolve_depthwise(name: str, platform: str | None = None) -> str:
  if name == "auto":
    return "shift" if (platform or jax.default_backend()) == "cpu" else "xla"
  if name not in ("shift", "xla"):
    raise UserError(f"unknown depthwise implementation {name!r}; set "
                    "--config.supernet.depthwise to one of ['auto', 'shift', 'xla']")
  return name


def _modules(space_name: str) -> tuple[type, Callable, type]:
  # pylint: disable=import-outside-toplevel
  if space_name == "mobilenet":
    from oneshot.models.mobilenet_child import MobileNet
    from oneshot.supernet.mobilenet_supernet import MobileNetSupernet, child_variables
    return MobileNetSupernet, child_variables, MobileNet
  if space_name == "nasbench201":
    from oneshot.models.nasbench201_child import NasBench201
    from oneshot.supernet.nasbench201_supernet import NasBench201Supernet, child_variables
    return NasBench201Supernet, child_variables, NasBench201
  raise UserError(f"space {space_name!r} has no supernet; use mobilenet or nasbench201")


DEPTHWISE_SHARING = ("centre", "transform", "separate")


def build(space: Space, num_classes: int, image_channels: int, executor: str = "auto",
          depthwise: str = "auto", depthwise_sharing: str = "centre") -> Any:
  """The supernet of `space`. `depthwise_sharing` (mobilenet): kernel sizes share the centre of one
  largest depthwise kernel, the same through Once-for-All's learned kernel transformation, or each
  has its own kernel and BatchNorm (TuNAS)."""
  executor = resolve_executor(executor)
  if space.name == "module":  # your own Flax module: choices are flax.linen.switch or a masked sum
    from oneshot.supernet import module_supernet  # pylint: disable=import-outside-toplevel
    return module_supernet.ModuleSupernet(space, module_supernet.net(space),
                                 "mask" if executor == "mask" else "switch")
  supernet_cls, _, _ = _modules(space.name)
  if depthwise_sharing not in DEPTHWISE_SHARING:
    raise UserError(f"unknown depthwise sharing {depthwise_sharing!r}; set "
                    f"--config.supernet.depthwise_sharing to one of {list(DEPTHWISE_SHARING)}")
  if executor == "switch_exact" and space.name != "mobilenet":
    executor = "switch"  # no width decisions: switch is already exact
  if space.name != "mobilenet":
    return supernet_cls(space, num_classes, image_channels, executor, resolve_depthwise(depthwise))
  return supernet_cls(space, num_classes, image_channels, executor, resolve_depthwise(depthwise),
                      depthwise_sharing)


def child_variables(space: Space, variables: dict, dna: Any) -> dict:
  """The supernet's variables sliced to the child `dna`: exactly the child model's tree."""
  if space.name == "module":
    from oneshot.supernet import module_supernet  # pylint: disable=import-outside-toplevel
    return module_supernet.child_variables(space, variables, space.validate(dna))
  return _modules(space.name)[1](space, variables, space.validate(dna))


def child_model(space: Space, dna: Any, num_classes: int, image_channels: int,
                depthwise: str = "auto") -> nn.Module:
  """The standalone child network of `dna` (no supernet code on its forward path)."""
  if space.name == "module":
    from oneshot.supernet import module_supernet  # pylint: disable=import-outside-toplevel
    return module_supernet.child_model(space, dna)
  cls = _modules(space.name)[2]
  kwargs = dict(skeleton=dict(space.skeleton), values=space.to_values(dna),
                num_classes=num_classes, image_channels=image_channels)
  if space.name == "mobilenet":
    kwargs["depthwise_impl"] = resolve_depthwise(depthwise)
  return cls(**kwargs)


__all__ = ["build", "child_model", "child_variables", "resolve_executor", "ops"]
