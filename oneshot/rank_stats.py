"""Statistics of rankings, shared by `oneshot rank`'s two reports (sampled children trained here, and a
ground-truth band table): Kendall's tau, its paired-bootstrap uncertainty, and percentiles.

scipy computes the statistics (scikit-learn already depends on it); what is here is the conventions:
None instead of NaN when a side is constant, ties counted half in a percentile, and a fixed bootstrap
seed so that the same report gives the same figures.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from scipy import stats


def _finite(value: float) -> float | None:
  return float(value) if value is not None and np.isfinite(value) else None


def kendall(x: Sequence[float], y: Sequence[float]) -> float | None:
  """Kendall's tau-b; None when either side is constant or there are fewer than 3 points."""
  x, y = np.asarray(x, float), np.asarray(y, float)
  if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
    return None
  return _finite(stats.kendalltau(x, y).statistic)


def correlations(scores: Sequence[float], truth: Sequence[float], k: int) -> dict[str, Any]:
  """Kendall's tau-b and Spearman's rho (ties handled, None when a side is constant) and the overlap
  of the two top-k sets (ties broken by sample order)."""
  x, y = np.asarray(scores, float), np.asarray(truth, float)
  constant = np.ptp(x) == 0 or np.ptp(y) == 0
  tau = None if constant else _finite(stats.kendalltau(x, y).statistic)
  rho = None if constant else _finite(stats.spearmanr(x, y).statistic)
  top = lambda s: set(np.argsort(-s, kind="stable")[:k].tolist())
  return {"kendall_tau": tau, "spearman": rho, "top_k": k, "top_k_overlap": len(top(x) & top(y)) / k}


def tau_uncertainty(scores: Sequence[float], baseline: Sequence[float], truth: Sequence[float],
                    resamples: int = 1000) -> dict[str, Any]:
  """How sure a tau figure is: a paired bootstrap over the architectures gives the standard error of
  tau(scores, truth) and a 90% interval for its margin over tau(baseline, truth).

  With ~20 architectures the standard error is ~0.15, as large as most gaps between rankers, so a
  margin whose interval holds 0 shows neither ranker better. Keys: standard_error, margin,
  margin_interval_90 (all None with fewer than 3 points or a constant side)."""

  def tau(x, y):
    value = stats.kendalltau(x, y).statistic
    return float(value) if np.isfinite(value) else 0.0  # a resample with constant scores

  data = tuple(np.asarray(v, float) for v in (scores, baseline, truth))
  if len(data[0]) < 3 or min(np.ptp(v) for v in data) == 0:
    return {"standard_error": None, "margin": None, "margin_interval_90": None}
  boot = lambda stat, arrays: stats.bootstrap(
      arrays, stat, paired=True, vectorized=False, n_resamples=resamples, confidence_level=0.9,
      method="percentile", rng=np.random.default_rng(0))
  margin = boot(lambda s, b, t: tau(s, t) - tau(b, t), data)
  return {"standard_error": float(boot(tau, (data[0], data[2])).standard_error),
          "margin": tau(data[0], data[2]) - tau(data[1], data[2]),
          "margin_interval_90": [float(margin.confidence_interval.low),
                                 float(margin.confidence_interval.high)]}


def percentile(value: float, others: Sequence[float]) -> float | None:
  """Percent of `others` below `value` (ties count half); 100 = better than all. None without others."""
  if not len(others):
    return None
  others = np.asarray(others, float)
  return float(100.0 * ((others < value).sum() + 0.5 * (others == value).sum()) / len(others))
