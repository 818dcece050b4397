"""Your own data: a dataset from in-memory numpy arrays, for the Python API.

`Arrays(train=(images, labels), validation=(images, labels), test=...)` goes to `api.search(...,
data=arrays)` (and `api.export`). It becomes a `data.Dataset` like any TFDS dataset, so batches are the
same pure function of (seed, split, step) and a resumed search is exact. The workdir records the arrays'
content fingerprint as the dataset name (`arrays-<sha256 prefix>`): resuming or exporting with other
arrays is refused, and a CLI command on such a workdir says to pass the arrays from Python.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
from typing import Iterator

import numpy as np

from oneshot import data
from oneshot.errors import UserError

PREFIX = data.IN_MEMORY_ARRAYS_PREFIX


@dataclasses.dataclass(frozen=True, eq=False)
class Arrays:
  """Images [n, H, W] or [n, H, W, C] (uint8 0..255, or float) and integer labels [n] per split.

  The search trains on `train` and rewards/selects on `validation`; `test` is for `oneshot train`-style
  evaluation only. `num_classes` defaults to the largest label + 1 over all splits.
  """
  train: tuple[np.ndarray, np.ndarray]
  validation: tuple[np.ndarray, np.ndarray]
  test: tuple[np.ndarray, np.ndarray] | None = None
  num_classes: int | None = None

  def splits(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    named = {"train": self.train, "validation": self.validation, "test": self.test}
    out = {}
    for role, pair in named.items():
      if pair is None:
        continue
      if not isinstance(pair, (tuple, list)) or len(pair) != 2:
        raise UserError(f"Arrays.{role} must be a pair (images, labels); got {type(pair).__name__}")
      images, labels = np.asarray(pair[0]), np.asarray(pair[1])
      images = images[..., None] if images.ndim == 3 else images
      if images.ndim != 4 or labels.ndim != 1 or len(images) != len(labels) or not len(labels):
        raise UserError(f"Arrays.{role}: images {images.shape} and labels {labels.shape} must be "
                        "[n, H, W(, C)] and [n] with the same n > 0")
      if not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0:
        raise UserError(f"Arrays.{role}: labels must be integers >= 0 (class indices); got "
                        f"{labels.dtype} with minimum {labels.min()}")
      out[role] = (images, labels.astype(np.int32))
    shapes = {role: images.shape[1:] for role, (images, _) in out.items()}
    if len(set(shapes.values())) > 1:
      raise UserError(f"Arrays: every split needs the same image shape; got {shapes}")
    return out

  def fingerprint(self, splits: dict[str, tuple[np.ndarray, np.ndarray]] | None = None) -> str:
    """sha256 of every split's shapes, dtypes and bytes: the identity a workdir records. `splits`:
    this object's `splits()`, when the caller already has them."""
    digest = hashlib.sha256()
    for role, (images, labels) in (splits or self.splits()).items():
      for array in (images, labels):
        digest.update(f"{role}{array.shape}{array.dtype}".encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    digest.update(str(self.num_classes).encode())
    return digest.hexdigest()

  def dataset(self) -> data.Dataset:
    splits = self.splits()
    top = max(int(labels.max()) for _, labels in splits.values()) + 1
    num_classes = int(self.num_classes or top)
    if num_classes < top:
      raise UserError(f"Arrays: a label is {top - 1} but num_classes={num_classes}; raise num_classes "
                      "or leave it None")
    return data.in_memory_dataset(PREFIX + self.fingerprint(splits)[:16], splits, num_classes)


@contextlib.contextmanager
def serving(arrays: Arrays | None) -> Iterator[dict | None]:
  """While inside, `data.load` answers the arrays' dataset name with them; yields the `dataset`
  config section to use (None, and nothing served, when `arrays` is None)."""
  if arrays is None:
    yield None
    return
  dataset = arrays.dataset()
  data.IN_MEMORY[dataset.name] = dataset
  try:
    yield {"name": dataset.name, "train_split": "train", "validation_split": "validation",
           "test_split": "test" if "test" in dataset.split_sizes else ""}
  finally:
    data.IN_MEMORY.pop(dataset.name, None)
