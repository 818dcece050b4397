"""Cloud TPU accelerator types: which GENERATION-SIZE names exist, and each generation's runtime.

Kept apart from `launch.tpu` (the gcloud plan) because it is reference data with its own sources; the
launcher checks `--accelerator-type` against it before anything is created or paid for.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from oneshot.errors import UserError

# TPU generation (as spelled in accelerator types) -> default runtime version.
DEFAULT_RUNTIME = {
    "v2": "tpu-ubuntu2204-base",
    "v3": "tpu-ubuntu2204-base",
    "v4": "tpu-ubuntu2204-base",
    "v5litepod": "v2-alpha-tpuv5-lite",
    "v5p": "v2-alpha-tpuv5",
    "v6e": "v2-alpha-tpuv6e",
}


class Cubes(NamedTuple):
  """Sizes of a 3D-torus generation: a few slices smaller than one cube, then any number of cubes."""
  below: tuple[int, ...]
  cube: int
  largest: int


# Accelerator types Cloud TPU offers: GENERATION-SIZE, SIZE counting TensorCores for v2, v3, v4, v5p (2
# per chip) and chips for v5litepod, v6e. From cloud.google.com/tpu/docs as of 2025. Exact lists:
# v2, v3 (the TPU types tables of /tpu/docs/v2 and /regions-zones); v5litepod, v6e (the slice shapes
# 1x1 ... 16x16 of /tpu/docs/v5e and /v6e). v4, v5p follow a rule, as in the docs: 2x2x1, 2x2x2, 2x2x4,
# 2x4x4 below one 4x4x4 cube, then whole cubes of 128 TensorCores ("A, B, C are either all <= 4 or all
# integer multiples of 4", /types-topologies; "v5p-8, v5p-16, v5p-32, v5p-64, v5p-128 (one full cube),
# ..., v5p-12288", /supported-tpu-configurations). The rule is less certain than the lists: the docs
# show only common cube counts and no largest v4 slice (capped here at the 4096-chip v4 Pod), so gcloud
# may still refuse a rare size; it stays the final check. This table is here to catch typos (v4-33).
ACCELERATOR_SIZES: dict[str, tuple[int, ...] | Cubes] = {
    "v2": (8, 32, 128, 256, 512),
    "v3": (8, 32, 64, 128, 256, 512, 1024, 2048),
    "v4": Cubes(below=(8, 16, 32, 64), cube=128, largest=8192),
    "v5litepod": (1, 4, 8, 16, 32, 64, 128, 256),
    "v5p": Cubes(below=(8, 16, 32, 64), cube=128, largest=12288),
    "v6e": (1, 4, 8, 16, 32, 64, 128, 256),
}

def parse_accelerator(text: str) -> tuple[str, int]:
  """(generation, size) of an accelerator type Cloud TPU offers; size > 8 means several hosts for every
  generation. Any other type is refused here, before a create command fails on it (or, queued, waits)."""
  generation, _, size_text = text.rpartition("-") if "-" in text else (text, "", "")
  size = int(size_text) if re.fullmatch(r"[1-9][0-9]*", size_text) else None
  if generation == "v5e":  # the product's name; accelerator types spell it v5litepod
    fix = _closest("v5litepod", size)
    raise UserError(f"accelerator type {text!r} is spelled v5litepod-{fix} on Cloud TPU; use "
                    f"--accelerator-type=v5litepod-{fix}" if fix == size else
                    f"accelerator type {text!r}: v5e is spelled v5litepod on Cloud TPU and comes as "
                    f"{_describe('v5litepod')}; use e.g. --accelerator-type=v5litepod-{fix}")
  if generation not in ACCELERATOR_SIZES:
    raise UserError(f"bad accelerator type {text!r}; use GENERATION-SIZE with generation one "
                    f"of {', '.join(ACCELERATOR_SIZES)}, e.g. --accelerator-type=v4-32, v5litepod-16, "
                    "v5p-8")
  if size not in _sizes(generation):
    raise UserError(f"accelerator type {text!r} does not exist on Cloud TPU; {generation} comes as "
                    f"{_describe(generation)}; use e.g. --accelerator-type={generation}-"
                    f"{_closest(generation, size)}")
  return generation, size


def _sizes(generation: str) -> tuple[int, ...]:
  s = ACCELERATOR_SIZES[generation]
  return s.below + tuple(range(s.cube, s.largest + 1, s.cube)) if isinstance(s, Cubes) else s


def _describe(generation: str) -> str:
  s = ACCELERATOR_SIZES[generation]
  names = [f"{generation}-{n}" for n in (s.below if isinstance(s, Cubes) else s)]
  last = (f"{generation}-N for N a multiple of {s.cube} up to {s.largest}" if isinstance(s, Cubes)
          else names.pop())
  return ", ".join(names) + " or " + last


def _closest(generation: str, size: int | None) -> int:
  """The offered size nearest to `size` (the smaller one on a tie), for the message's example."""
  sizes = _sizes(generation)
  return sizes[0] if size is None else min(sizes, key=lambda n: (abs(n - size), n))
