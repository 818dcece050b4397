"""Figures a run leaves in its workdir (matplotlib, Agg: no display needed)."""

from __future__ import annotations

import io as io_lib
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position

from oneshot import storage  # pylint: disable=wrong-import-position
from oneshot.spaces.core import Space  # pylint: disable=wrong-import-position


def controller_plot(space: Space, history: Sequence[dict], path: str) -> None:
  """Per-decision choice probabilities over steps: one small panel per decision."""
  if not history:
    return
  steps = np.asarray([h["step"] for h in history])
  probs = np.asarray([h["probabilities"] for h in history])  # [T, D, K]
  n = space.num_decisions
  cols = min(6, n)
  rows = -(-n // cols)
  fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 1.9 * rows), squeeze=False,
                           sharex=True, sharey=True)
  for i, decision in enumerate(space.decisions):
    ax = axes[i // cols][i % cols]
    for c, choice in enumerate(decision.choices):
      ax.plot(steps, probs[:, i, c], label=str(choice), lw=1.2)
    ax.set_title(decision.name, fontsize=8)
    ax.set_ylim(0, 1)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=6, loc="upper left", frameon=False)
  for j in range(n, rows * cols):
    axes[j // cols][j % cols].axis("off")
  fig.supxlabel("step", fontsize=9)
  fig.supylabel("choice probability", fontsize=9)
  fig.tight_layout()
  save_figure(fig, path)


def save_figure(fig, path: str, dpi: int = 110) -> None:
  """Renders to memory, then writes atomically (`storage.write_bytes`): a killed run never leaves half a
  PNG, and a full disk is one line."""
  buffer = io_lib.BytesIO()
  fig.savefig(buffer, format="png", dpi=dpi)
  plt.close(fig)
  storage.write_bytes(path, buffer.getvalue())
