"""Uniform random search: the baseline every other controller must beat, and the warm-up sampler."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from oneshot.controllers.base import Controller, State, decision_mask
from oneshot.spaces.core import Space


class RandomController(Controller):
  """Each decision uniform and independent (the one-shot 'uniform path' of Li & Talwalkar)."""

  name = "random"

  def init(self, key: jax.Array) -> State:
    del key
    return {"step": np.zeros((), np.int32)}

  def propose(self, state: State, key: jax.Array, num: int) -> np.ndarray:
    del state
    return sample_factorized(key, jnp.asarray(decision_mask(self.space)), num)

  def feedback(self, state, dnas, rewards):
    return {"step": np.asarray(state["step"] + 1, np.int32)}, {"reward": float(np.mean(rewards))}

  def candidates(self, state: State, key: jax.Array, num: int) -> np.ndarray:
    """`num` distinct uniform draws (Li & Talwalkar): a uniform policy has no mode worth a slot; its
    `best` (the argmax of uniform probabilities) would always be the all-zeros DNA."""
    del state
    return distinct_samples(self.space, num, numpy_rng(key))

  def probabilities(self, state: State) -> np.ndarray:
    mask = self.space.choice_mask()
    return mask / mask.sum(axis=1, keepdims=True)


@jax.jit
def _sample(key, logits, num_shape):
  return jax.random.categorical(key, logits, axis=-1, shape=num_shape.shape + logits.shape[:1])


def sample_factorized(key: jax.Array, logits: jax.Array, num: int) -> np.ndarray:
  """`num` DNAs from independent per-decision categoricals over padded `logits` [D, K]."""
  return np.asarray(_sample(key, logits, jnp.zeros((num,))), np.int32)


def numpy_rng(key: jax.Array) -> np.random.Generator:
  """A numpy generator seeded by a JAX key: host-side sampling stays reproducible from the same key."""
  data = np.asarray(jax.random.key_data(key) if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key)
                    else key)
  return np.random.default_rng(data.astype(np.uint64).reshape(-1).tolist())


def distinct_samples(space: Space, num: int, rng: np.random.Generator) -> np.ndarray:
  """`num` valid uniform DNAs [num, D], distinct networks (canonical DNAs, see `Space.canonical`)
  where 20 * num draws find that many (a small space repeats some rather than fail)."""
  seen: dict[tuple, None] = {}
  for _ in range(20 * num):
    seen.setdefault(tuple(int(c) for c in space.canonical(space.sample(rng))), None)
    if len(seen) == num:
      break
  out = list(seen)
  while len(out) < num:
    out.append(tuple(int(c) for c in space.sample(rng)))
  return np.asarray(out, np.int32)
