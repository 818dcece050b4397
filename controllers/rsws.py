"""Random Search with Weight Sharing (Li & Talwalkar 2019): the evaluation step after the supernet.

With shared weights trained under uniform paths, the search itself is just ranking random architectures:
score many candidates cheaply (one validation batch each through the supernet), then rescore only the top
k on something expensive (the whole validation split), because the cheap score is noisy and its ranking
at the top is what matters. The paper scored 1000 candidates and rescored the top 10.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from oneshot.errors import UserError
from spaces.core import DNA, Space


def rsws_select(space: Space, score_fn: Callable[[np.ndarray], np.ndarray], num_candidates: int = 1000,
                top_k: int = 10, rescore_fn: Callable[[DNA], float] | None = None,
                seed: int = 0) -> tuple[DNA, list[dict[str, Any]]]:
  """(best DNA, table) after scoring `num_candidates` random DNAs and rescoring the top `top_k`.

  `score_fn(dnas [n, D] int32) -> rewards [n]` is called once on all candidates (batch inside it as the
  device needs); `rescore_fn(dna) -> float` once per finalist. Without `rescore_fn` the cheap score
  decides. Candidates are distinct where the space has enough points: a duplicate would waste a finalist
  slot. The table has one row per candidate, best cheap score first: dna, string, score, rescore (None
  for candidates that were not rescored).
  """
  if num_candidates < 1:
    raise UserError(f"rsws num_candidates is {num_candidates}; it must be >= 1")
  if not 1 <= top_k <= num_candidates:
    raise UserError(f"rsws top_k is {top_k}; it must be in 1..num_candidates ({num_candidates})")
  dnas = _distinct_samples(space, num_candidates, np.random.default_rng(seed))
  scores = np.asarray(score_fn(dnas), np.float64).reshape(-1)
  if scores.shape[0] != len(dnas):
    raise UserError(f"rsws score_fn returned {scores.shape[0]} rewards for {len(dnas)} "
                    "architectures; it must return one reward per row")
  scores = np.where(np.isnan(scores), -np.inf, scores)  # a failed evaluation ranks last
  order = np.argsort(-scores, kind="stable")
  finalists = order[:top_k]
  rescored = {}
  for i in finalists:
    dna = tuple(int(c) for c in dnas[i])
    rescored[int(i)] = float(rescore_fn(dna)) if rescore_fn is not None else float(scores[i])
  best_index = max(rescored, key=lambda i: (rescored[i], -list(finalists).index(i)))
  table = [{"dna": [int(c) for c in dnas[i]], "string": space.format(dnas[i]),
            "score": float(scores[i]), "rescore": rescored.get(int(i))} for i in order]
  return tuple(int(c) for c in dnas[best_index]), table


def _distinct_samples(space: Space, num: int, rng: np.random.Generator) -> np.ndarray:
  """`num` valid DNAs, distinct where 20 * num draws find that many (a small space repeats some)."""
  seen: dict[DNA, None] = {}
  for _ in range(20 * num):
    seen.setdefault(tuple(int(c) for c in space.sample(rng)), None)
    if len(seen) == num:
      break
  out = list(seen)
  while len(out) < num:  # a tiny constrained space: repeat rather than fail
    out.append(tuple(int(c) for c in space.sample(rng)))
  return np.asarray(out, np.int32)
