"""Figures a run leaves in its workdir (matplotlib, Agg: no display needed)."""

from __future__ import annotations

import io as io_lib
import os
import tempfile
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position

from oneshot.errors import UserError  # pylint: disable=wrong-import-position
from spaces.core import Space  # pylint: disable=wrong-import-position


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
  _save(fig, path)


def _save(fig, path: str) -> None:
  """Renders to memory, then writes atomically: a killed run never leaves half a PNG."""
  buffer = io_lib.BytesIO()
  fig.savefig(buffer, format="png", dpi=110)
  plt.close(fig)
  directory = os.path.dirname(os.path.abspath(path))
  tmp = None
  try:
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".png")
    with os.fdopen(fd, "wb") as f:
      f.write(buffer.getvalue())
    os.replace(tmp, path)
  except OSError as e:  # disk full or read-only: one line, and no partial temporary file left behind
    if tmp is not None and os.path.exists(tmp):
      os.remove(tmp)
    raise UserError(f"cannot write {path}: {e.strerror}; check that the directory is writable and "
                    "the disk is not full") from None
