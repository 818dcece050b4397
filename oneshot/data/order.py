"""The order in which training reads a split: an endless stream of hash-permuted epochs.

Position p of split `split`'s stream under seed s is record `permutation(n, s, crc32(split), e)[p % n]`
with e = p // n, a pure function of (n, seed, split, p): global batch k of size B is positions
[kB, (k+1)B), so a run resumed at step k reads exactly what an uninterrupted run would, every example
is seen once per epoch whatever the batch size, and the stream does not depend on how many processes
slice each batch. Both readers use it, the in-memory gather (`data.Dataset.batch`) and grain
(`pipeline.Split`), so whether a split is cached never changes the batches.
"""

from __future__ import annotations

import functools
import zlib

import numpy as np


def permutation(n: int, *keys: int) -> np.ndarray:
  """A permutation of range(n) fixed by `keys` alone: indices sorted by a bijective 64-bit hash.

  Unlike `np.random` streams this cannot change with a numpy upgrade, so splits and resumed data
  orders stay exact across environments; as the hash is a bijection there are no ties.
  """
  h = np.zeros(1, np.uint64)
  for key in keys:
    h = _mix(h ^ np.uint64(int(key) % 2**64))
  return np.argsort(_mix(np.arange(n, dtype=np.uint64) ^ h), kind="stable")


def records(n: int, seed: int, split: str, positions: np.ndarray) -> np.ndarray:
  """The record index (in 0..n-1) at each stream position of `split` under `seed`."""
  positions = np.asarray(positions, np.int64)
  epochs, offsets = np.divmod(positions, n)
  out = np.empty(positions.shape, np.int64)
  salt = zlib.crc32(split.encode())
  for epoch in np.unique(epochs):
    rows = epochs == epoch
    out[rows] = _epoch_order(n, int(seed) % 2**64, salt, int(epoch))[offsets[rows]]
  return out


def _mix(x: np.ndarray) -> np.ndarray:
  """splitmix64's finaliser: a bijection on uint64 with good avalanche (array ops wrap silently)."""
  x = x + np.uint64(0x9E3779B97F4A7C15)
  x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
  x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
  return x ^ (x >> np.uint64(31))


@functools.lru_cache(maxsize=4)  # batches straddle at most two epochs
def _epoch_order(n: int, seed: int, salt: int, epoch: int) -> np.ndarray:
  order = permutation(n, seed, salt, epoch)
  order.flags.writeable = False
  return order
