"""Search spaces: architectures and accelerators as decisions with choices (see spaces.core)."""

from __future__ import annotations

from typing import Any, Callable, Mapping

from oneshot.errors import UserError
from oneshot.spaces.core import DNA, Decision, Space


def _builders() -> dict[str, Callable[[Mapping[str, Any]], Space]]:
  # pylint: disable=import-outside-toplevel
  from oneshot.spaces import accelerator, mobilenet, module, nasbench201
  return {"mobilenet": mobilenet.build, "nasbench201": nasbench201.build,
          "accelerator": accelerator.build, "module": module.build}


def build(config: Mapping[str, Any]) -> Space:
  """The space named by `config['name']`, built from the rest of `config`."""
  builders = _builders()
  name = config.get("name")
  if name not in builders:
    raise UserError(f"unknown space {name!r}; set --config.space.name to one of "
                    f"{sorted(builders)}")
  return builders[name](config)


__all__ = ["DNA", "Decision", "Space", "build"]
