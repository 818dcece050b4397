"""Supernet of a `module` space: your Flax module run on a traced DNA (see oneshot.nas).

`ModuleSupernet` has the two calls the search steps make on any supernet, `init(rng, x, dna)` and
`apply(variables, x, dna)` -> logits. The module runs in train mode, so its BatchNorm layers normalise
with batch statistics (the one-shot search convention); their running averages are computed and thrown
away, because one set of averages cannot serve every path (an export recalibrates its own).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from oneshot import nas
from oneshot.spaces.core import Space


class ModuleSupernet:
  """The module's variables hold every candidate of every choice; `apply` follows one DNA."""

  def __init__(self, space: Space, net: nn.Module, executor: str):
    self.space, self.net, self.executor = space, net, executor

  def init(self, rngs: Any, x: jax.Array, dna: jax.Array) -> dict:
    with nas.supernet_path(self.space.names, dna, self.executor):
      return dict(self.net.init(rngs, x, **nas.call_kwargs(self.net, True)))

  def apply(self, variables: dict, x: jax.Array, dna: jax.Array) -> jax.Array:
    with nas.supernet_path(self.space.names, dna, self.executor):
      logits, _ = self.net.apply(variables, x, **nas.call_kwargs(self.net, True),
                                 mutable=["batch_stats"])
    return logits


def child_model(space: Space, dna: Any) -> nn.Module:
  return nas.FixedArchitecture(net(space), space.to_values(dna))


def net(space: Space) -> nn.Module:
  sk = space.skeleton
  return nas.resolve(sk["module"], sk["kwargs"])


def child_variables(space: Space, variables: dict, dna: Any) -> dict:
  """The supernet's variables restricted to the child's own tree (its shapes, traced not compiled):
  the candidates the child does not choose are dropped."""
  child = child_model(space, dna)
  x = jax.ShapeDtypeStruct((1,) + tuple(space.skeleton["input_shape"]), jnp.float32)
  shapes = jax.eval_shape(lambda x: child.init(jax.random.PRNGKey(0), x), x)

  def select(tree: Any, shape: Any) -> Any:
    if isinstance(shape, dict):
      return {k: select(tree[k], v) for k, v in shape.items()}
    return tree

  return {c: select(variables[c], shapes[c]) for c in variables if c in shapes}
