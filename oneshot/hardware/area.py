"""Silicon area of an accelerator configuration (45 nm): the cost model's area and the accelerator
space's area budget are this one formula.

A module of its own, below both `oneshot.hardware.cost_model` and `oneshot.spaces.accelerator`, because
the space's constraint needs the formula while the cost model needs the space to decode its points.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

# Horowitz 2014 areas: 8b mult 282 um^2, 32b add 137 um^2; plus 48 flip-flop bits (weight, passing
# activation, partial sum) at 4.522 um^2 each (Nangate 45 nm Open Cell Library DFF_X1).
PE_AREA_MM2 = (282.0 + 137.0 + 48 * 4.522) * 1e-6
# 45 nm 6T cell 0.346 um^2 (Mistry et al., IEDM 2007) at ~50% array efficiency (CACTI-like periphery).
SRAM_MM2_PER_KB = 8192 * 0.346 / 0.5 * 1e-6


def area_mm2(rows: ArrayLike, cols: ArrayLike, ifmap_sram_kb: ArrayLike, filter_sram_kb: ArrayLike,
             ofmap_sram_kb: ArrayLike) -> np.ndarray:
  """Silicon area of the array plus its three SRAMs (vectorised; also the space's area constraint)."""
  pes = np.asarray(rows, np.float64) * np.asarray(cols, np.float64)
  kb = (np.asarray(ifmap_sram_kb, np.float64) + np.asarray(filter_sram_kb, np.float64)
        + np.asarray(ofmap_sram_kb, np.float64))
  return pes * PE_AREA_MM2 + kb * SRAM_MM2_PER_KB
