"""How a supernet reads one decision of its path, for integer DNAs and for relaxed ones.

A path is either an int32 DNA [D] (sampling controllers, uniform warm-up, evaluation) or choice weights
[D, K] (gradient-based controllers, `controllers.gradient`): DARTS's softmax mixture, or GDAS's and
ProxylessNAS's straight-through one-hot gates. Every supernet reads a decision through `pick`, so all of
them run both kinds of path with one code path per executor:

* `switch` runs candidate `index` only and scales its output by `gate` (1.0 in value for the
  straight-through gates, so the forward pass is the sampled child's; the gradient reaches the logits
  through it, as GDAS's reference code does). A soft mixture cannot be switched: DARTS needs `mask`.
* `mask` sums every candidate's output weighted by `weights` (one-hot for an int DNA: exactly the child).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class Pick(NamedTuple):
  index: jax.Array                 # the candidate that runs under `switch`
  weights: jax.Array               # [num_choices]: one-hot for an int DNA
  gate: jax.Array | None           # the weight `switch` scales by; None for an int DNA


def relaxed(dna: jax.Array) -> bool:
  """Whether `dna` is choice weights [D, K] rather than choice indices [D]."""
  return jnp.ndim(dna) == 2


def pick(dna: jax.Array, i: int, num_choices: int) -> tuple[jax.Array, jax.Array, jax.Array | None]:
  """(index, weights [num_choices], gate) of decision `i`. `gate` is None for an int DNA (nothing to
  scale); for choice weights it is the weight of the largest choice, which `index` names."""
  if relaxed(dna):
    weights = dna[i, :num_choices]
    index = jnp.argmax(weights).astype(jnp.int32)
    return index, weights, weights[index]
  index = jnp.asarray(dna, jnp.int32)[i]
  return index, jax.nn.one_hot(index, num_choices), None


def gated(x: jax.Array, gate: jax.Array | None) -> jax.Array:
  return x if gate is None else x * gate.astype(x.dtype)
