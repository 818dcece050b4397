"""Uniform random search: the baseline every other controller must beat, and the warm-up sampler."""

from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from oneshot.controllers.base import Controller, State, decision_mask
from oneshot.spaces.core import DNA, Space


class RandomController(Controller):
  """Each decision uniform and independent (the one-shot 'uniform path' of Li & Talwalkar)."""

  name = "random"

  def init(self, key: jax.Array) -> State:
    del key
    return {"step": np.zeros((), np.int32),
            "best_dna": np.zeros((self.space.num_decisions,), np.int32),
            "best_reward": np.full((), -np.inf, np.float32)}

  def propose(self, state: State, key: jax.Array, num: int) -> np.ndarray:
    del state
    return sample_factorized(key, jnp.asarray(decision_mask(self.space)), num)

  def feedback(self, state, dnas, rewards):
    """Counts the step and keeps the best-rewarded DNA told so far (a NaN reward never wins): the
    policy itself never changes."""
    dnas = np.asarray(dnas, np.int32).reshape(-1, self.space.num_decisions)
    rewards = np.asarray(rewards, np.float32).reshape(-1)
    rewards = np.where(np.isnan(rewards), -np.inf, rewards)
    best_dna = np.array(state["best_dna"], np.int32)
    best_reward = np.asarray(state["best_reward"], np.float32)
    if rewards.size and rewards.max() > best_reward:
      best_dna, best_reward = dnas[int(np.argmax(rewards))].copy(), rewards.max()
    new = {"step": np.asarray(state["step"] + 1, np.int32), "best_dna": best_dna,
           "best_reward": np.asarray(best_reward, np.float32)}
    return new, {"reward": float(np.mean(rewards))}

  def best(self, state: State) -> DNA | None:
    """The best-rewarded DNA told so far, or None before any finite reward.

    Not the argmax of `probabilities`: a uniform policy has no mode, and that argmax is always the
    all-zeros DNA, which nothing said was good. Random search's answer is the best it evaluated."""
    if not np.isfinite(np.asarray(state["best_reward"])):
      return None
    return tuple(int(i) for i in np.asarray(state["best_dna"]))

  def candidates(self, state: State, key: jax.Array, num: int) -> np.ndarray:
    """`num` distinct uniform draws (Li & Talwalkar): each reward was one noisy minibatch, so the
    answer is chosen among fresh random architectures by the rescoring rule, as RSWS does."""
    del state
    return distinct_samples(self.space, num, numpy_rng(key))

  def probabilities(self, state: State) -> np.ndarray:
    mask = self.space.choice_mask()
    return mask / mask.sum(axis=1, keepdims=True)


# `train.warmup_sampler`'s values, read by the config check; `search_loop.warmup_sampler` builds the sampler
# (RandomController, FairSampler, SandwichSampler).
WARMUP_SAMPLERS = ("uniform", "fair", "sandwich")


class SandwichSampler(RandomController):
  """BigNAS's sandwich rule for the uniform warm-up: of every four consecutive path slots (devices
  first, then steps) the first trains the largest network, the second the smallest, the other two
  uniform draws. The largest network then gets a quarter of the updates instead of almost none, and
  every smaller child shares weights trained to serve it (BigNAS: better-ranked big children).

  With four or more devices the four paths share one averaged update, as in BigNAS; with fewer they
  rotate over consecutive steps. `size([N, D] DNAs) -> [N]` orders networks (the layer table's weight
  count for the built-in spaces, `oneshot.hardware.workload.weight_counts`)."""

  name = "sandwich"

  def __init__(self, space: Space, size: Callable[[np.ndarray], np.ndarray]):
    super().__init__(space)
    self.largest = extreme(space, size, largest=True)
    self.smallest = extreme(space, size, largest=False)

  def propose(self, state: State, key: jax.Array, num: int) -> np.ndarray:
    """`num` paths for step `state['step']`."""
    paths = np.array(super().propose(state, key, num))
    slot = (int(state["step"]) * num + np.arange(num)) % 4
    paths[slot == 0] = self.largest
    paths[slot == 1] = self.smallest
    return paths


class FairSampler(RandomController):
  """FairNAS's strict fairness for the uniform warm-up (Chu et al., 2021): consecutive path slots
  (devices first, then steps) come in groups of m, and within a group every decision takes each of
  its c choices exactly m / c times, in a random order per decision (m: the least common multiple of
  the choice counts). Uniform sampling trains every choice equally only in expectation; over a
  short warm-up some kernel or width choices fall behind by chance and the supernet then under-rates
  the children that use them. Here no choice is ever more than one group behind another.

  FairNAS sums the m paths' gradients into one update on one batch; here that happens when the
  device count is a multiple of m (the paths' gradients are averaged over the mesh), otherwise the
  group spans consecutive steps. The order comes from (`seed`, group) alone, so a resumed search
  proposes the same paths. Constraints are not applied, as in the uniform warm-up."""

  name = "fair"

  def __init__(self, space: Space, seed: int):
    super().__init__(space)
    counts = [int(c) for c in space.num_choices]
    group = math.lcm(*counts)
    # Balance that needs a longer group than 4x the largest choice count would mostly repeat a
    # fixed pattern across many steps; fall back to groups of max_choices with a random remainder.
    self.group_size = group if group <= 4 * space.max_choices else space.max_choices
    self.seed = int(seed)

  def propose(self, state: State, key: jax.Array, num: int) -> np.ndarray:
    """`num` paths for step `state['step']`."""
    del key
    slots = int(state["step"]) * num + np.arange(num)
    return np.stack([self.group(s // self.group_size)[s % self.group_size] for s in slots])

  def group(self, index: int) -> np.ndarray:
    """The [m, D] paths of group `index`: each column a shuffled balanced sequence of its choices."""
    rng = np.random.default_rng((self.seed, int(index)))
    m = self.group_size
    columns = []
    for c in self.space.num_choices:
      c = int(c)
      column = np.concatenate([np.tile(np.arange(c), m // c), rng.permutation(c)[:m % c]])
      columns.append(rng.permutation(column))
    return np.stack(columns, axis=1).astype(np.int32)


def extreme(space: Space, size: Callable[[np.ndarray], np.ndarray], largest: bool) -> np.ndarray:
  """The DNA that maximises (or minimises) `size`, by coordinate ascent from the all-zeros DNA: each
  pass sets every decision to its best choice given the others, until a pass changes nothing. Exact
  when size is monotone in each decision separately (the built-in spaces' weight counts are)."""
  sign = 1 if largest else -1
  dna = np.zeros(space.num_decisions, np.int32)
  for _ in range(10):
    before = dna.copy()
    for d, count in enumerate(space.num_choices):
      rows = np.repeat(dna[None], count, axis=0)
      rows[:, d] = np.arange(count)
      dna = rows[int(np.argmax(sign * np.asarray(size(rows))))]
    if np.array_equal(dna, before):
      break
  return space.canonical(dna[None])[0]


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
