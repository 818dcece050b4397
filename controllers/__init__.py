"""Search algorithms behind one ask/tell interface (see controllers.base)."""

from __future__ import annotations

from typing import Any, Mapping

from oneshot.controllers.base import AskTell, Controller, search
from oneshot.errors import UserError
from oneshot.spaces.core import Space


def registry() -> dict[str, type[Controller]]:
  """Name -> controller class. Imported lazily so `import controllers` stays cheap."""
  # pylint: disable=import-outside-toplevel
  from oneshot.controllers.enas import EnasController
  from oneshot.controllers.evolution import EvolutionController
  from oneshot.controllers.gradient import DartsController, GdasController, ProxylessController
  from oneshot.controllers.uniform import RandomController
  from oneshot.controllers.tunas import TunasController
  found: dict[str, type[Controller]] = {"random": RandomController, "tunas": TunasController,
                                        "enas": EnasController, "evolution": EvolutionController,
                                        "darts": DartsController, "gdas": GdasController,
                                        "proxyless": ProxylessController}
  return found


def reward_based() -> list[str]:
  """Names of the controllers that learn from rewards alone (ask/tell): the gradient-based ones need a
  supernet to differentiate through, so `oneshot tabular` and `oneshot cosearch` cannot run them."""
  return sorted(name for name, cls in registry().items() if not getattr(cls, "gradient", False))


def require_reward_based(name: str, where: str) -> None:
  if name in registry() and name not in reward_based():
    raise UserError(f"controller {name!r} learns from supernet gradients, which {where} does not "
                    f"have; use one of {reward_based()}")


def build(name: str, space: Space, config: Mapping[str, Any] | None = None) -> Controller:
  """Controller `name` over `space`; hyperparameters that are None fall back to its own defaults."""
  classes = registry()
  if name not in classes:
    raise UserError(f"unknown controller {name!r}; set --config.controller.name to one of "
                    f"{sorted(classes)}")
  return classes[name](space, {k: v for k, v in dict(config or {}).items() if v is not None})


__all__ = ["AskTell", "Controller", "build", "registry", "require_reward_based", "reward_based",
           "search"]
