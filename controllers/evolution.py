"""Regularized evolution (AmoebaNet, Real et al. 2019): tournament selection with aging.

Each child is a single-decision mutation (`space.mutate`) of the best of S population members sampled at
random; the child replaces the *oldest* member, not the worst, so an architecture that scored well by luck
(a noisy supernet or validation batch) cannot stay forever. Until P rewards have come back, proposals are
uniform random valid DNAs (the initial population).

The state is fixed-shape arrays, so it checkpoints like the other controllers: the population as a ring
buffer ("dnas" [P, D], "rewards" [P], "birth" [P], -1 for an empty slot), "count" (rewards seen so far;
the next child goes to slot count % P, which is always the oldest), and the best DNA ever seen.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import numpy as np

from oneshot.controllers.base import Controller, State, distinct
from oneshot.controllers.uniform import numpy_rng
from oneshot.errors import UserError
from oneshot.spaces.core import DNA, Space


class EvolutionController(Controller):
  """Regularized evolution; config: population_size (P, default 20), tournament_size (S, default 5).

  P = 20 suits small budgets: the paper's P = 100 would spend a 100-query budget on the random initial
  population. S / P sets the selection pressure (S = P is greedy hill climbing from the current best;
  S = 1 is random mutation of the population); `oneshot tabular` uses S = 18 (measured there), the
  supernet search S = 5, where each reward is one noisy minibatch and strong selection would chase it.
  """

  name = "evolution"

  def __init__(self, space: Space, config: Mapping[str, Any] | None = None):
    super().__init__(space, config)
    self.population_size = int(self.config.get("population_size", 20))
    self.tournament_size = int(self.config.get("tournament_size", 5))
    if self.population_size < 1:
      raise UserError(f"evolution population_size is {self.population_size}; it must be >= 1")
    if not 1 <= self.tournament_size <= self.population_size:
      raise UserError(f"evolution tournament_size is {self.tournament_size}; it must be in "
                      f"1..population_size ({self.population_size})")

  def init(self, key: jax.Array) -> State:
    del key
    p, d = self.population_size, self.space.num_decisions
    return {"dnas": np.zeros((p, d), np.int32), "rewards": np.full((p,), -np.inf, np.float32),
            "birth": np.full((p,), -1, np.int32), "count": np.zeros((), np.int32),
            "best_dna": np.zeros((d,), np.int32), "best_reward": np.full((), -np.inf, np.float32)}

  def propose(self, state: State, key: jax.Array, num: int) -> np.ndarray:
    """Random DNAs while the population is not full (fewer than P rewards told), then `num` children
    of independent tournaments.

    The whole batch is random until then: the caller may feed back only some of its rows (the search
    proposes its training paths and its reward paths in one call and rewards only the latter), so a
    row's index says nothing about which population slot it will fill. Counting rows as slots filled
    the last empty slots with mutants of a partial population. A batch that straddles the end of the
    random phase may replace a few of the oldest random members with further random draws.
    """
    rng = numpy_rng(key)
    count = int(state["count"])
    members = np.flatnonzero(np.asarray(state["birth"]) >= 0)
    dnas, rewards = np.asarray(state["dnas"]), np.asarray(state["rewards"])
    out = np.zeros((num, self.space.num_decisions), np.int32)
    for i in range(num):
      if count < self.population_size or members.size == 0:
        out[i] = self.space.sample(rng)
        continue
      size = min(self.tournament_size, members.size)
      contestants = rng.choice(members, size=size, replace=False)
      parent = contestants[np.argmax(rewards[contestants])]
      out[i] = self.space.mutate(dnas[parent], rng)
    return out

  def feedback(self, state, dnas, rewards):
    new = {k: np.array(v) for k, v in state.items()}  # copies: the caller's state stays as it was
    dnas = np.asarray(dnas, np.int32).reshape(-1, self.space.num_decisions)
    rewards = np.asarray(rewards, np.float32).reshape(-1)
    rewards = np.where(np.isnan(rewards), -np.inf, rewards)  # a failed evaluation never wins
    for dna, reward in zip(dnas, rewards):
      count = int(new["count"])
      slot = count % self.population_size  # the oldest member once full (ring buffer = aging)
      new["dnas"][slot], new["rewards"][slot], new["birth"][slot] = dna, reward, count
      new["count"] = np.asarray(count + 1, np.int32)
      if count == 0 or reward > new["best_reward"]:
        new["best_dna"], new["best_reward"] = dna.copy(), np.asarray(reward, np.float32)
    live = new["birth"] >= 0
    return new, {"reward": float(rewards.mean()),
                 "population_mean": float(new["rewards"][live].mean()),
                 "best_reward": float(new["best_reward"])}

  def probabilities(self, state: State) -> np.ndarray:
    """Per-decision choice frequencies in the current population (uniform before the first reward)."""
    mask = self.space.choice_mask().astype(np.float64)
    live = np.asarray(state["birth"]) >= 0
    if not live.any():
      return mask / mask.sum(axis=1, keepdims=True)
    dnas = np.asarray(state["dnas"])[live]
    k = self.space.max_choices
    counts = np.stack([np.bincount(col, minlength=k)[:k] for col in dnas.T]).astype(np.float64)
    return counts / live.sum()

  def candidates(self, state: State, key: jax.Array, num: int) -> np.ndarray:
    """The best DNA ever rewarded, then the living population by reward: each reward was one noisy
    minibatch, so the answer is whichever of them rescores best (the best single reward ever seen is
    partly luck, the winner's curse). Uniform draws before the first reward."""
    if int(state["count"]) == 0:
      return distinct(self.space.sample(numpy_rng(key), max(1, num)), num, self.space)
    live = np.flatnonzero(np.asarray(state["birth"]) >= 0)
    order = live[np.argsort(-np.asarray(state["rewards"])[live], kind="stable")]
    return distinct([state["best_dna"]] + [state["dnas"][i] for i in order], num, self.space)

  def best(self, state: State) -> DNA | None:
    """The best DNA ever rewarded, kept in the state; None before the first reward.

    Not the argmax of `probabilities`: that combines each decision's majority choice into a DNA that may
    never have been evaluated, and evolution has no model saying it is good; and aging may already have
    removed the best member from the population. Real et al. report the best ever evaluated.
    """
    if int(state["count"]) == 0:
      return None
    return tuple(int(i) for i in np.asarray(state["best_dna"]))
