"""Uniform random search: the baseline every other controller must beat, and the warm-up sampler."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from controllers.base import Controller, State, decision_mask


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

  def probabilities(self, state: State) -> np.ndarray:
    mask = self.space.choice_mask()
    return mask / mask.sum(axis=1, keepdims=True)


@jax.jit
def _sample(key, logits, num_shape):
  return jax.random.categorical(key, logits, axis=-1, shape=num_shape.shape + logits.shape[:1])


def sample_factorized(key: jax.Array, logits: jax.Array, num: int) -> np.ndarray:
  """`num` DNAs from independent per-decision categoricals over padded `logits` [D, K]."""
  return np.asarray(_sample(key, logits, jnp.zeros((num,))), np.int32)
