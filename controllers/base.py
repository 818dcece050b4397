"""The one ask/tell interface every search algorithm implements.

A controller is a set of pure functions over an explicit state pytree (arrays only), so the same object
drives the supernet search (state checkpointed with the weights by orbax), the hardware outer loop, and a
plain reward function such as a tabular benchmark. `AskTell` wraps the pure functions for interactive use:
`propose(rng) -> DNA`, `feedback(dna, reward)`.
"""

from __future__ import annotations

import abc
from typing import Any, Callable, Mapping

import jax
import numpy as np

from oneshot.spaces.core import DNA, Space

State = Any  # a pytree of arrays


class Controller(abc.ABC):
  """Proposes DNAs of `space` and learns from their rewards; higher reward is better."""

  name: str = "controller"

  def __init__(self, space: Space, config: Mapping[str, Any] | None = None):
    self.space = space
    self.config = dict(config or {})

  @abc.abstractmethod
  def init(self, key: jax.Array) -> State:
    """Fresh state; `key` seeds anything random in it."""

  @abc.abstractmethod
  def propose(self, state: State, key: jax.Array, num: int) -> np.ndarray:
    """`num` DNAs as an int32 array [num, num_decisions]. Pure: the state is not changed."""

  @abc.abstractmethod
  def feedback(self, state: State, dnas: np.ndarray, rewards: np.ndarray) -> tuple[State, dict]:
    """Learns from rewards of `dnas` (one per row); returns the new state and scalar metrics."""

  @abc.abstractmethod
  def probabilities(self, state: State) -> np.ndarray:
    """[num_decisions, max_choices] marginal choice probabilities (0 in padded slots)."""

  def best(self, state: State) -> DNA | None:
    """The controller's own answer: the per-decision most likely choice (TuNAS exports the argmax).

    Controllers without a policy mode (random search, evolution) answer their best-rewarded DNA, or
    None before any reward: callers must handle None."""
    return tuple(int(i) for i in np.argmax(self.probabilities(state), axis=1))

  def candidates(self, state: State, key: jax.Array, num: int) -> np.ndarray:
    """Up to `num` distinct DNAs [n, D] worth rescoring for the final answer, the controller's own
    choice (`best`) first, then samples of its policy. The search scores all of them the same way
    and keeps the best (`controllers.rsws.select`): a policy's mode alone is one draw of a noisy
    estimate, and sampling several from a trained policy is what ENAS does."""
    own = self.best(state)
    rows = ([tuple(own)] if own is not None else []) + [tuple(int(c) for c in r)
                                                        for r in self.propose(state, key, max(1, num))]
    return distinct(rows, num, self.space)

  def entropy(self, state: State) -> float:
    """Sum over decisions of the marginal entropy, in nats."""
    return marginal_entropy(self.probabilities(state))


def marginal_entropy(probabilities: np.ndarray) -> float:
  """Sum over decisions of the entropy of [num_decisions, max_choices] marginals, in nats."""
  p = np.asarray(probabilities)
  return float(-(p * np.log(np.where(p > 0, p, 1.0))).sum())


def distinct(rows, num: int, space: Space) -> np.ndarray:
  """The first `num` distinct networks among `rows`, in order, as canonical int32 DNAs [n, D]
  (`Space.canonical`: two DNAs that differ only in a dropped block's choices are one network)."""
  canonical = space.canonical(np.asarray(rows, np.int32).reshape(-1, space.num_decisions))
  kept = list(dict.fromkeys(tuple(int(c) for c in r) for r in canonical))[:max(1, num)]
  return np.asarray(kept, np.int32)


def decision_mask(space: Space) -> np.ndarray:
  """Additive mask: 0 for real choices, -inf for the padded slots of shorter decisions."""
  return np.where(space.choice_mask(), 0.0, -np.inf).astype(np.float32)


class AskTell:
  """Stateful convenience around a controller: what a user calls from a notebook or a script."""

  def __init__(self, controller: Controller, seed: int = 0):
    self.controller = controller
    self._key = jax.random.PRNGKey(seed)
    self._key, init_key = jax.random.split(self._key)
    self.state = controller.init(init_key)

  def propose(self, rng: jax.Array | None = None) -> DNA:
    if rng is None:
      self._key, rng = jax.random.split(self._key)
    return tuple(int(i) for i in self.controller.propose(self.state, rng, 1)[0])

  def feedback(self, dna: Any, reward: float) -> dict:
    dna = np.asarray(self.controller.space.validate(dna), np.int32)[None]
    self.state, metrics = self.controller.feedback(self.state, dna,
                                                   np.asarray([reward], np.float32))
    return metrics


def search(controller: Controller, reward_fn: Callable[[DNA], float], budget: int,
           seed: int = 0) -> list[tuple[DNA, float]]:
  """Runs `budget` reward queries one at a time; returns the (dna, reward) trajectory in order."""
  tuner = AskTell(controller, seed)
  trajectory = []
  for _ in range(budget):
    dna = tuner.propose()
    reward = float(reward_fn(dna))
    tuner.feedback(dna, reward)
    trajectory.append((dna, reward))
  return trajectory
