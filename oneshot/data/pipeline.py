"""The grain input pipeline for splits read from disk or augmented: decode and augment in worker
processes, prefetch ahead of the training loop, keep the batch order a pure function of the step.

For one split, process `p` of `P`, local batch size `L = B / P` and seed `s`, the pipeline is a grain
`MapDataset` whose element `k` is that process's part of global batch `k`:

  range(endless)                  stream positions i = 0, 1, ...
    .map(Read)                    position i -> stored record `order.records(n, s, split, i)`
    .random_map(Example)          decode, resize, augment; the generator is seeded from (s, i)
    .batch(L)[p::P]               global batch k = positions [kB, (k+1)B); process p takes its slice
    [k0:]                         start at step k0 (a fresh start, or a resume from a checkpoint)
    .to_iter_dataset(ReadOptions) `prefetch` batches ahead, each read on its own thread
    .mp_prefetch(workers)         worker w computes batches k0+w, k0+w+W, ...; grain interleaves them
                                  back in order, so any worker count gives the same batches

The order is `oneshot/data/order.py`'s, which the in-memory gather also uses, rather than grain's
IndexSampler or `shuffle`: so caching a split never changes its batches, global batches do not depend
on the number of processes (they slice it, disjoint), and neighbouring seeds do not share epochs (grain
seeds epoch e with seed + e). Every stage is indexed, so the iterator's checkpointable state is the
step itself, which the search checkpoint already holds: resuming at step k rebuilds the pipeline at
`[k:]`; nothing else needs saving, and SIGKILL + resume reads the same batches as an uninterrupted run.
"""

from __future__ import annotations

import atexit
import collections
import hashlib
import importlib
import sys
import weakref
from typing import TYPE_CHECKING, Any

import numpy as np

from oneshot.data import order
from oneshot.data.augment import Example

if TYPE_CHECKING:
  import grain.python as grain

# Imported on first use: importing grain imports jax, which the digits path and the CLI's checks skip.
_grain = None

_MAX_STREAMS = 4  # open iterators per split: train + recalibration batch sizes, a few resumes


class Split:
  """Batches of one split through grain, served by `batch(step, ...)` from a running iterator."""

  def __init__(self, source: Any, name: str, example: Example, *, workers: int = 0,
               prefetch: int = 2):
    self.source, self.name, self.example = source, name, example
    self.workers, self.prefetch = int(workers), max(1, int(prefetch))
    # (local batch, seed, process, processes) -> [next step, iterator]; least recently used first.
    self._streams: collections.OrderedDict[tuple, list] = collections.OrderedDict()
    _OPEN.add(self)

  def batches(self, local: int, seed: int, process_index: int = 0,
              process_count: int = 1) -> grain.MapDataset:
    """The MapDataset whose element k is this process's {'image', 'label'} part of global batch k."""
    grain = _import_grain()
    ds = grain.MapDataset.range(sys.maxsize).map(Read(self.source, seed, self.name))
    if self.example.kind == "none":
      ds = ds.map(self.example)
    else:
      ds = ds.random_map(self.example, seed=_seed(seed, self.name, "augment"))
    return ds.batch(local, drop_remainder=True)[process_index::process_count]

  def iterator(self, step: int, local: int, seed: int, process_index: int = 0,
               process_count: int = 1) -> grain.DatasetIterator:
    """An iterator over this process's batches from global step `step` on, with workers and prefetch."""
    grain = _import_grain()
    ds = self.batches(local, seed, process_index, process_count)[step:]
    ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=self.prefetch,
                                              prefetch_buffer_size=self.prefetch))
    if self.workers:
      # grain 0.2.18 reads an absl flag in mp_prefetch and fails if flags were never parsed (as in any
      # program without absl.app; google/grain#1355, fixed after 0.2.18): defaults are what we want.
      from absl import flags  # pylint: disable=import-outside-toplevel
      if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()
      ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=self.workers,
                                                       per_worker_buffer_size=self.prefetch))
    return iter(ds)

  def batch(self, step: int, local: int, seed: int, process_index: int = 0,
            process_count: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 images [local, H, W, C], int32 labels [local]) of global batch `step`, this process's part.

    Consecutive steps come from one running iterator (prefetched in the background); any other step
    (the first call, a resume, a jump) starts a new iterator there. Either way the batch is element
    `step` of `batches(...)`.
    """
    key = (local, seed, process_index, process_count)
    stream = self._streams.pop(key, None)
    if stream is None or stream[0] != step:
      if stream is not None:
        _close(stream[1])
      stream = [step, self.iterator(step, local, seed, process_index, process_count)]
    self._streams[key] = stream
    while len(self._streams) > _MAX_STREAMS:
      _close(self._streams.popitem(last=False)[1][1])
    out = next(stream[1])
    stream[0] += 1
    return out["image"], out["label"]

  def close(self) -> None:
    """Stops every iterator's threads and worker processes."""
    while self._streams:
      _close(self._streams.popitem()[1][1])

  def __del__(self) -> None:
    self.close()


class Read:
  """Stream position -> the stored record there (`order.records`); picklable for worker processes."""

  def __init__(self, source: Any, seed: int, split: str):
    self.source, self.seed, self.split, self.size = source, int(seed), split, len(source)

  def __call__(self, position: int) -> Any:
    return self.source[int(order.records(self.size, self.seed, self.split, position))]


_OPEN: weakref.WeakSet[Split] = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
  """Stops worker processes while the interpreter is whole: left to garbage collection at exit, grain's
  iterators print tracebacks to stderr as modules are torn down."""
  for split in list(_OPEN):
    split.close()


def _import_grain() -> Any:
  global _grain  # pylint: disable=global-statement
  if _grain is None:
    _grain = importlib.import_module("grain.python")
  return _grain


def _seed(seed: int, split: str, purpose: str) -> int:
  """A 32-bit grain seed from (seed, split, purpose), fixed across versions and platforms."""
  digest = hashlib.blake2b(f"{int(seed)}/{split}/{purpose}".encode(), digest_size=4).digest()
  return int.from_bytes(digest, "little")


def _close(iterator: Any) -> None:
  close = getattr(iterator, "close", None)
  if close is not None:
    close()
