"""Choosing the answer: cheap scores for many candidates, an expensive rescore of the best few.

One rule for every controller. Li & Talwalkar's Random Search with Weight Sharing (RSWS) scores many
random architectures cheaply (a validation minibatch through the trained supernet), then rescores only
the top k on the whole validation split, because the cheap score is noisy and its ranking at the top is
what matters (the paper: 1000 candidates, top 10). ENAS samples several architectures from its trained
policy and keeps the best on validation; evolution's best single-minibatch reward is partly luck (the
winner's curse). So each controller only says which candidates it would consider
(`Controller.candidates`) and `select` picks among them.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from oneshot.controllers.uniform import distinct_samples
from oneshot.errors import UserError
from oneshot.spaces.core import DNA, Space


def select(space: Space, candidates: np.ndarray, score_fn: Callable[[np.ndarray], np.ndarray],
           top_k: int = 10, rescore_fn: Callable[[DNA], float] | None = None
           ) -> tuple[DNA, list[dict[str, Any]]]:
  """(best DNA, table): cheap `score_fn` on every candidate, `rescore_fn` on the top `top_k`.

  `score_fn(dnas [n, D] int32) -> rewards [n]` is called once on all candidates (batch inside it as
  the device needs); `rescore_fn(dna) -> float` once per finalist. Without `rescore_fn` the cheap score
  decides. The best rescore wins; ties go to the better cheap score. The table has one row per
  candidate, best cheap score first: dna, string, score, rescore (None where not rescored).
  """
  candidates = np.asarray(candidates, np.int32).reshape(-1, space.num_decisions)
  if len(candidates) < 1:
    raise UserError("no candidates to select from; set --config.select.num_candidates >= 1")
  if top_k < 1:
    raise UserError(f"select top_k is {top_k}; it must be >= 1")
  scores = np.asarray(score_fn(candidates), np.float64).reshape(-1)
  if scores.shape[0] != len(candidates):
    raise UserError(f"score_fn returned {scores.shape[0]} rewards for {len(candidates)} "
                    "architectures; it must return one reward per row")
  scores = np.where(np.isnan(scores), -np.inf, scores)  # a failed evaluation ranks last
  order = np.argsort(-scores, kind="stable")
  finalists = [int(i) for i in order[:top_k]]
  rescored = {i: (float(rescore_fn(tuple(int(c) for c in candidates[i]))) if rescore_fn is not None
                  else float(scores[i])) for i in finalists}
  best_index = max(finalists, key=lambda i: (rescored[i], -finalists.index(i)))
  table = [{"dna": [int(c) for c in candidates[i]], "string": space.format(candidates[i]),
            "score": float(scores[i]), "rescore": rescored.get(int(i))} for i in order]
  return tuple(int(c) for c in candidates[best_index]), table


def rsws_select(space: Space, score_fn: Callable[[np.ndarray], np.ndarray], num_candidates: int = 1000,
                top_k: int = 10, rescore_fn: Callable[[DNA], float] | None = None,
                seed: int = 0) -> tuple[DNA, list[dict[str, Any]]]:
  """`select` over `num_candidates` distinct random DNAs: Li & Talwalkar's procedure as one call."""
  if num_candidates < 1:
    raise UserError(f"rsws num_candidates is {num_candidates}; it must be >= 1")
  if not 1 <= top_k <= num_candidates:
    raise UserError(f"rsws top_k is {top_k}; it must be in 1..num_candidates ({num_candidates})")
  dnas = distinct_samples(space, num_candidates, np.random.default_rng(seed))
  return select(space, dnas, score_fn, top_k, rescore_fn)
