"""Image classification data from TFDS, read by random access so the batch order is a pure function.

Every dataset is read through `builder.as_data_source()` (array_record files), which needs no TensorFlow.
`Dataset.batch(split, step, ...)` computes global batch `step` of an endless stream whose epochs are
hash-based permutations of (seed, split, epoch): resuming from a checkpoint at step k reproduces exactly
the batches an uninterrupted run would have seen, and each process slices the same global batch, so
multi-host runs agree without communicating. The default dataset, scikit-learn's digits, is a local TFDS
builder (`digits`) that prepares itself in well under a second, so tests and the first run need no
network; `fashion_mnist` is prepared from local IDX files (`oneshot.data.builders`).
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, Iterator

import numpy as np

from oneshot.data import augment
from oneshot.data import builders
from oneshot.data import order
from oneshot.data import pipeline
from oneshot.errors import UserError

ROLES = ("train", "validation", "test")
_CACHE_AUTO_BYTES = 256 * 2**20  # splits up to this (as uint8) are decoded once and kept in memory
_STATS_SAMPLE = 2048
# Per-channel (mean, std) after scaling to [0, 1], for datasets where sampling the train split is slow.
_KNOWN_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "imagenet2012": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}




@dataclasses.dataclass
class Dataset:
  """A loaded dataset; `split` arguments are the roles 'train', 'validation', 'test'."""

  name: str
  num_classes: int
  image_shape: tuple[int, int, int]  # H, W, C
  split_sizes: dict[str, int]
  _sources: dict[str, _Source] = dataclasses.field(default_factory=dict, repr=False, compare=False)
  _mean: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(1, np.float32), repr=False,
                                        compare=False)
  _inv_std: np.ndarray = dataclasses.field(default_factory=lambda: np.ones(1, np.float32), repr=False,
                                           compare=False)

  def batch(self, split: str, step: int, batch_size: int, seed: int, *, process_index: int = 0,
            process_count: int = 1) -> dict[str, np.ndarray]:
    """Global batch `step` of an endless, epoch-reshuffled stream of `split`; this process's slice.

    The order is a pure function of (seed, split, step), so a resumed run is exact. Global batches run
    on across epoch boundaries (position p is example perm(epoch=p // n)[p % n]), so every example is
    seen once per epoch whatever the batch size. Returns process `process_index`'s contiguous
    1/process_count slice: {'image': float32 [b, H, W, C] normalised, 'label': int32 [b]}.
    """
    step, batch_size, seed = int(step), int(batch_size), int(seed)
    source = self._source(split)
    local = _local_size(batch_size, process_index, process_count)
    if step < 0:
      raise UserError(f"batch step must be >= 0, got {step}")
    if source.pipeline is not None:  # read from disk and/or augmented: grain (oneshot/data/pipeline.py)
      images, labels = source.pipeline.batch(step, local, seed, process_index, process_count)
      return {"image": self._normalise(images), "label": labels}
    start = step * batch_size + process_index * local
    positions = np.arange(start, start + local, dtype=np.int64)
    images, labels = source.read(order.records(source.size, seed, split, positions))
    return {"image": self._normalise(images), "label": labels}

  def iterate(self, split: str, batch_size: int, *, process_index: int = 0,
              process_count: int = 1) -> Iterator[dict[str, np.ndarray]]:
    """One pass over `split` in stored order, for evaluation; every process yields the same count.

    The last global batch is padded to `batch_size` by wrapping around: global position p >= n reads
    example p % n (the split's first examples again), the same rule on every process. Padding rows are
    real images, not zeros, because the models normalise with batch statistics in evaluation too and
    BatchNorm's mean/variance ignore the mask: zero rows would skew the statistics of the real rows.
    Every batch carries 'mask' float32 [b] (1 for real rows, 0 for padding; padding rows keep their
    real labels) so metrics can be summed over real rows only.
    """
    source = self._source(split)
    local = _local_size(batch_size, process_index, process_count)
    for step in range(math.ceil(source.size / batch_size)):
      start = step * batch_size + process_index * local
      positions = np.arange(start, start + local, dtype=np.int64)
      images, labels = source.read(positions % source.size)
      mask = (positions < source.size).astype(np.float32)
      yield {"image": self._normalise(images), "label": labels, "mask": mask}

  def close(self) -> None:
    """Stops the grain pipelines' threads and worker processes now (they also stop at exit); a later
    `batch` starts them again. For programs that load datasets repeatedly, e.g. benchmarks."""
    for source in self._sources.values():
      if source.pipeline is not None:
        source.pipeline.close()

  def raw_images(self, split: str, indices: np.ndarray) -> np.ndarray:
    """The stored pixels of `split`'s examples `indices`, before normalisation: what a deployed
    model is fed (an export records their dtype)."""
    return self._source(split).read(np.asarray(indices))[0]

  def normalisation(self) -> tuple[np.ndarray, np.ndarray]:
    """(offset, multiplier): every batch is (raw pixels - offset) * multiplier in float32, so an
    export that records these two reproduces the training input exactly."""
    return self._mean, self._inv_std

  def _source(self, split: str) -> _Source:
    if split not in self._sources:
      raise UserError(f"dataset {self.name!r} has no {split!r} split here; use one of "
                      f"{sorted(self._sources)} (set --config.dataset.{split}_split to add it)"
                      if split in ROLES else
                      f"unknown split {split!r}; use one of {sorted(self._sources)}")
    return self._sources[split]

  def _normalise(self, images: np.ndarray) -> np.ndarray:
    return ((images.astype(np.float32) - self._mean) * self._inv_std).astype(np.float32)


# Datasets held in memory by name (`oneshot.data.arrays.serving`): `load` answers these names with them.
IN_MEMORY: dict[str, Dataset] = {}
IN_MEMORY_ARRAYS_PREFIX = "arrays-"  # the names `oneshot.data.arrays` gives them


def in_memory_dataset(name: str, splits: dict[str, tuple[np.ndarray, np.ndarray]],
                      num_classes: int) -> Dataset:
  """A Dataset over numpy splits {role: (images uint8/float [n, H, W, C], labels int32 [n])}, normalised
  with the per-channel statistics of a fixed train sample, like any dataset without known constants."""
  sources = {}
  for role, (images, labels) in splits.items():
    sources[role] = _Source(None, len(labels), "image", "label", None)
    sources[role]._images, sources[role]._labels = images, labels  # already decoded
  images = splits["train"][0]
  scale = 255.0 if images.dtype == np.uint8 else 1.0
  mean, std = _stats(name, sources["train"], scale)
  return Dataset(name=name, num_classes=int(num_classes), image_shape=tuple(images.shape[1:]),
                 split_sizes={role: s.size for role, s in sources.items()}, _sources=sources,
                 _mean=(mean * scale).astype(np.float32),
                 _inv_std=(1.0 / (std * scale)).astype(np.float32))


def load(config: Any) -> Dataset:
  """Opens the dataset named by the `dataset` config section (a ConfigDict or a mapping).

  Fields: name (TFDS name), data_dir (None: TFDS default), train_split / validation_split /
  test_split (TFDS split specs, slicing allowed, e.g. 'train[:45000]'; empty: role absent),
  cache_in_memory (None: cache splits smaller than 256 MiB), image_size (only for datasets whose images
  vary in size: resize the shorter side and centre-crop), manual_dir (fashion_mnist's IDX files; empty:
  /usr/share/datasets/fashion-mnist), augment (the train split's, `oneshot/data/augment.py`), workers and
  prefetch (grain's worker processes and batches read ahead). Splits held in memory and not augmented
  are a numpy gather per batch (digits, Fashion-MNIST); the others go through grain
  (`oneshot/data/pipeline.py`). `digits` and `fashion_mnist` are prepared on first use.
  """
  name = _field(config, "name", None)
  if not name:
    raise UserError("no dataset name; set --config.dataset.name to a TFDS name such as digits, cifar10")
  name = str(name)
  if name in IN_MEMORY:
    return IN_MEMORY[name]
  if name.startswith(IN_MEMORY_ARRAYS_PREFIX):
    raise UserError(f"dataset {name!r} was numpy arrays handed to the Python API; pass the same arrays "
                    "again, from Python: oneshot.api.search/export(..., data=Arrays(...))")
  data_dir = _field(config, "data_dir", None) or None
  data_dir = os.path.expanduser(os.fspath(data_dir)) if data_dir else None
  manual_dir = _field(config, "manual_dir", None) or None
  manual_dir = os.path.expanduser(os.fspath(manual_dir)) if manual_dir else None
  builder = builders.open_builder(name, data_dir, manual_dir)
  info = builder.info
  image_key, label_key = info.supervised_keys or ("image", "label")
  features = info.features
  if image_key not in features or label_key not in features:
    raise UserError(f"dataset {name!r} has no ({image_key!r}, {label_key!r}) features; it is not an "
                    "image classification dataset, pick another --config.dataset.name")
  num_classes = getattr(features[label_key], "num_classes", None)
  if not num_classes:
    raise UserError(f"dataset {name!r}: label feature {label_key!r} is not a class label; pick an "
                    "image classification dataset")
  shape = tuple(features[image_key].shape)
  shape = shape + (1,) if len(shape) == 2 else shape
  image_size = _field(config, "image_size", None)
  if image_size:
    shape = (int(image_size), int(image_size), shape[2])
  elif None in shape:
    raise UserError(f"dataset {name!r} has images of varying size {shape}; set "
                    "--config.dataset.image_size (e.g. 224) to resize and centre-crop them")
  cache = _field(config, "cache_in_memory", None)
  kind, workers, prefetch = _pipeline_fields(config)
  sources = {}
  for role in ROLES:
    spec = _field(config, f"{role}_split", role)
    if not spec:
      continue
    source = builders.open_split(builder, name, role, str(spec))
    resize = int(image_size) if image_size else None
    sources[role] = _Source(source, len(source), image_key, label_key, resize)
    small = len(source) * math.prod(shape) <= _CACHE_AUTO_BYTES
    role_kind = kind if role == "train" else "none"  # rewards and accuracies: images as they are
    if role_kind == "none" and (small if cache is None else bool(cache)):
      sources[role].cache()  # a numpy gather per batch: faster than any pipeline at this size
    else:
      sources[role].pipeline = pipeline.Split(
          source, role, augment.Example(role_kind, image_key, label_key, resize), workers=workers,
          prefetch=prefetch)
  if "train" not in sources:
    raise UserError("no train split; set --config.dataset.train_split (e.g. 'train')")
  scale = float(getattr(builder, "PIXEL_MAX", 255.0 if features[image_key].np_dtype == np.uint8
                        else 1.0))
  mean, std = _stats(name, sources["train"], scale)
  return Dataset(name=name, num_classes=int(num_classes), image_shape=shape,
                 split_sizes={role: s.size for role, s in sources.items()}, _sources=sources,
                 _mean=(mean * scale).astype(np.float32),
                 _inv_std=(1.0 / (std * scale)).astype(np.float32))


def _local_size(batch_size: int, process_index: int, process_count: int) -> int:
  if batch_size <= 0:
    raise UserError(f"batch size must be positive, got {batch_size}")
  if process_count < 1 or not 0 <= process_index < process_count:
    raise UserError(f"process {process_index} of {process_count} is not a valid process index")
  if batch_size % process_count:
    raise UserError(f"global batch size {batch_size} is not divisible by the {process_count} "
                    f"processes; use a multiple of {process_count}")
  return batch_size // process_count


class _Source:
  """One split: random access to uint8 (or float) images [k, H, W, C] and int32 labels by index."""

  def __init__(self, source: Any, size: int, image_key: str, label_key: str, resize: int | None):
    self.source, self.size, self.resize = source, size, resize
    self.image_key, self.label_key = image_key, label_key
    self.pipeline: pipeline.Split | None = None  # set: `Dataset.batch` reads through grain
    self._images: np.ndarray | None = None
    self._labels: np.ndarray | None = None

  def cache(self, chunk: int = 4096) -> None:
    """Decodes the whole split once; later reads are a numpy gather."""
    parts = [self._decode(np.arange(i, min(i + chunk, self.size))) for i in range(0, self.size, chunk)]
    self._images = np.concatenate([p[0] for p in parts])
    self._labels = np.concatenate([p[1] for p in parts])

  def read(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if self._images is not None:
      return self._images[indices], self._labels[indices]
    return self._decode(indices)

  def _decode(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    examples = self.source.__getitems__([int(i) for i in indices]) if len(indices) else []
    images = [augment.as_hwc(ex[self.image_key], self.resize) for ex in examples]
    labels = np.array([ex[self.label_key] for ex in examples], np.int32)
    return (np.stack(images) if images else np.zeros((0, 1, 1, 1), np.uint8)), labels


def _stats(name: str, train: _Source, scale: float) -> tuple[np.ndarray, np.ndarray]:
  """Per-channel mean/std in [0, 1] units: known constants, else a fixed strided train sample."""
  if name in _KNOWN_STATS:
    mean, std = _KNOWN_STATS[name]
    return np.array(mean), np.array(std)
  count = min(train.size, _STATS_SAMPLE)
  indices = np.linspace(0, train.size - 1, count).astype(np.int64)
  images = train.read(indices)[0].astype(np.float64) / scale
  axes = tuple(range(images.ndim - 1))
  return images.mean(axis=axes), np.maximum(images.std(axis=axes), 1e-3)


def _pipeline_fields(config: Any) -> tuple[str, int, int]:
  """(augment, workers, prefetch) from the dataset config, checked: one-line UserErrors."""
  kind = augment.check(str(_field(config, "augment", "none") or "none"))
  values = []
  for key, low in (("workers", 0), ("prefetch", 1)):
    value = _field(config, key, low)
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
      raise UserError(f"--config.dataset.{key} must be an integer >= {low}, got {value!r}")
    values.append(int(value))
  return kind, values[0], values[1]


def _field(config: Any, key: str, default: Any) -> Any:
  if hasattr(config, "get"):
    return config.get(key, default)
  return getattr(config, key, default)


