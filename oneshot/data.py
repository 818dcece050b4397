"""Image classification data from TFDS, read by random access so the batch order is a pure function.

Every dataset is read through `builder.as_data_source()` (array_record files), which needs no TensorFlow.
`Dataset.batch(split, step, ...)` computes global batch `step` of an endless stream whose epochs are
hash-based permutations of (seed, split, epoch): resuming from a checkpoint at step k reproduces exactly
the batches an uninterrupted run would have seen, and each process slices the same global batch, so
multi-host runs agree without communicating. The default dataset, scikit-learn's digits, is a local TFDS
builder (`digits`) that prepares itself in well under a second, so tests and the first run need no network.
`fashion_mnist` is prepared from the four IDX files of the Debian package `dataset-fashion-mnist` (or
`manual_dir`), falling back to TFDS's download, and stored as raw uint8 arrays (`FashionMnistUint8`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import gzip
import logging
import math
import os
import socket
import struct
import sys
import urllib.parse
import urllib.request
import zlib
from typing import Any, Iterator
from unittest import mock

import numpy as np
import tensorflow_datasets as tfds
from tensorflow_datasets.image_classification import mnist as tfds_mnist

from oneshot import augment
from oneshot import order
from oneshot import pipeline
from oneshot.errors import UserError

ROLES = ("train", "validation", "test")
DIGITS_SEED = 20240613  # fixes the digits split forever; changing it changes which examples are held out
DIGITS_SPLIT_SIZES = {"train": 1197, "validation": 300, "test": 300}
_CACHE_AUTO_BYTES = 256 * 2**20  # splits up to this (as uint8) are decoded once and kept in memory
_STATS_SAMPLE = 2048
# Per-channel (mean, std) after scaling to [0, 1], for datasets where sampling the train split is slow.
_KNOWN_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "imagenet2012": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}


class Digits(tfds.core.GeneratorBasedBuilder):
  """scikit-learn's 8x8 digits (1797 images, values 0..16) as a TFDS dataset with fixed splits.

  The data ships inside scikit-learn, so preparing needs no download. Pixels stay uint8 in 0..16
  (`PIXEL_MAX`) as a plain Tensor feature: Image features need TensorFlow to encode. The split is a
  hash permutation of the sklearn indices under `DIGITS_SEED`, independent of numpy and TFDS versions,
  and records are stored in that order (`disable_shuffling`); `index` is the sklearn row, for audits.
  """

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release: train 1197 / validation 300 / test 300."}
  PIXEL_MAX = 16

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> None:
    """No checksums file to find; TFDS's lookup needs `importlib_resources`, which may be absent."""
    return None

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description="Optical recognition of handwritten digits (UCI), as bundled with scikit-learn.",
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Tensor(shape=(8, 8, 1), dtype=np.uint8),
            "label": tfds.features.ClassLabel(num_classes=10),
            "index": tfds.features.Tensor(shape=(), dtype=np.int64),
        }),
        supervised_keys=("image", "label"),
        homepage="https://archive.ics.uci.edu/dataset/80",
        disable_shuffling=True,
    )

  def _split_generators(self, dl_manager: Any) -> dict[str, Any]:
    del dl_manager  # nothing to download
    from sklearn.datasets import load_digits  # pylint: disable=import-outside-toplevel
    digits = load_digits()
    images, labels = digits.images.astype(np.uint8)[..., None], digits.target
    shuffled = order.permutation(len(labels), DIGITS_SEED)
    bounds = np.cumsum([0] + list(DIGITS_SPLIT_SIZES.values()))
    assert bounds[-1] == len(labels), "the split sizes must cover the 1797 digits"
    return {name: self._generate_examples(images, labels, shuffled[lo:hi])
            for name, lo, hi in zip(DIGITS_SPLIT_SIZES, bounds[:-1], bounds[1:])}

  def _generate_examples(self, images: np.ndarray, labels: np.ndarray,
                         indices: np.ndarray) -> Iterator[tuple[int, dict[str, Any]]]:
    for i in indices:
      yield int(i), {"image": images[i], "label": int(labels[i]), "index": int(i)}


class FashionMnistUint8(tfds_mnist.FashionMNIST):
  """Fashion-MNIST from local IDX files, stored as raw uint8 tensors; loaded as name `fashion_mnist`.

  A thin subclass of TFDS's registered FashionMNIST builder (same URLs, checksums, description, class
  names) changing only what stops that builder working here: its Image feature needs TensorFlow to
  encode PNGs and its IDX reader uses `tf.io.gfile`, and TensorFlow is not a dependency. Images are a
  plain uint8 Tensor feature, as in `Digits`, which also makes the in-memory cache a copy rather than
  70,000 PNG decodes. Source files come from TFDS's manual dir (`DownloadConfig(manual_dir=...)`;
  `load` passes --config.dataset.manual_dir or `DEFAULT_MANUAL_DIR`, where the Debian package
  `dataset-fashion-mnist` installs them); if any is missing there, TFDS downloads them as usual, after
  one TCP connect to the host (or proxy) so that an offline machine gets its one-line error at once
  rather than after TFDS's minutes of retries.
  Headers are checked (magic, 28x28, counts) and records keep the files' order (`disable_shuffling`),
  so 'train[:50000]' is a fixed split. A separate name keeps it apart from a TFDS-built
  `fashion_mnist` (PNG) in the same data_dir.
  """

  name = "fashion_mnist_uint8"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release: train 60000 / test 10000, images as uint8 tensors."}
  DEFAULT_MANUAL_DIR = "/usr/share/datasets/fashion-mnist"
  DEBIAN_PACKAGE = "dataset-fashion-mnist"
  FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
           "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      f"`apt-get install {DEBIAN_PACKAGE}` puts the four IDX files in {DEFAULT_MANUAL_DIR}; or put "
      "train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz and "
      "t10k-labels-idx1-ubyte.gz (gzipped or not) in the manual_dir.")

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> None:
    """No checksums file next to this module (see `url_infos`); as for `Digits`."""
    return None

  @tfds.core.utils.classproperty
  @classmethod
  @functools.lru_cache(maxsize=None)
  def url_infos(cls) -> dict[str, Any] | None:
    """TFDS's own checksums for the upstream URLs, used when the files are downloaded."""
    path = tfds.core.utils.tfds_path() / "url_checksums" / "fashion_mnist.txt"
    return tfds.core.download.checksums.load_url_infos(path) if path.exists() else None

  def _info(self) -> tfds.core.DatasetInfo:
    upstream = super()._info()
    return tfds.core.DatasetInfo(
        builder=self,
        description=upstream.description + " Images stored as raw uint8 arrays.",
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Tensor(shape=tfds_mnist.MNIST_IMAGE_SHAPE, dtype=np.uint8),
            "label": tfds.features.ClassLabel(names=upstream.features["label"].names),
        }),
        supervised_keys=("image", "label"),
        homepage=upstream.homepage,
        citation=upstream.citation,
        disable_shuffling=True,
    )

  def _split_generators(self, dl_manager: Any) -> dict[str, Any]:
    paths = self._local_files(dl_manager)
    if paths is None:
      names = [name for pair in self.FILES.values() for name in pair]
      # TFDS retries failed connections with backoff for minutes; offline, fail at once instead.
      cause = _unreachable(self.URL)
      if cause is None:
        try:
          got = dl_manager.download_and_extract({n: self.URL + n for n in names})
        except Exception as e:  # pylint: disable=broad-except  # network, proxy, checksum: all end here
          cause = f"{type(e).__name__}: {_first_line(e)}"
          cause = cause if len(cause) <= 120 else cause[:117] + "..."
      if cause is not None:
        looked = getattr(dl_manager, "_manual_dir", None) or self.DEFAULT_MANUAL_DIR
        raise UserError(
            f"fashion_mnist: the four IDX files are not in {looked} and downloading them failed "
            f"({cause}); install them with `apt-get install {self.DEBIAN_PACKAGE}` (into "
            f"{self.DEFAULT_MANUAL_DIR}) or set --config.dataset.manual_dir to a directory holding "
            "them") from None
      paths = {split: tuple(got[n] for n in pair) for split, pair in self.FILES.items()}
    arrays = {split: _read_idx_pair(*pair) for split, pair in paths.items()}
    return {split: self._generate_examples(*arrays[split]) for split in self.FILES}

  def _local_files(self, dl_manager: Any) -> dict[str, tuple[str, str]] | None:
    """{split: (images, labels)} paths in the manual dir (.gz or unpacked), or None if any is absent."""
    try:
      folder = os.fspath(dl_manager.manual_dir)
    except AssertionError:  # no such directory, or empty
      return None
    found = {}
    for split, pair in self.FILES.items():
      paths = []
      for gz in pair:
        path = next((p for p in (os.path.join(folder, gz), os.path.join(folder, gz[:-3]))
                     if os.path.isfile(p)), None)
        if path is None:
          return None
        paths.append(path)
      found[split] = tuple(paths)
    return found

  def _generate_examples(self, images: np.ndarray,  # pylint: disable=arguments-differ
                         labels: np.ndarray) -> Iterator[tuple[int, dict[str, Any]]]:
    for i, (image, label) in enumerate(zip(images, labels)):
      yield i, {"image": image[..., None], "label": int(label)}


def _unreachable(url: str, timeout: float = 5.0) -> str | None:
  """None if a TCP connection to `url`'s host (or the proxy the environment names) opens, else why not."""
  target, what = urllib.parse.urlsplit(url), ""
  proxy = urllib.request.getproxies().get(target.scheme)
  if proxy and not urllib.request.proxy_bypass(target.hostname or ""):
    target, what = urllib.parse.urlsplit(proxy if "://" in proxy else "http://" + proxy), "proxy "
  host = target.hostname or ""
  port = target.port or (443 if target.scheme == "https" else 80)
  try:
    socket.create_connection((host, port), timeout=timeout).close()
  except OSError as e:
    return f"cannot reach {what}{host}:{port}: {e.strerror or _first_line(e)}"
  return None


def _read_idx_pair(images_path: Any, labels_path: Any) -> tuple[np.ndarray, np.ndarray]:
  """uint8 images [n, 28, 28] and labels [n] from IDX files, checked; one-line UserError if malformed."""
  images = _read_idx(images_path, (None, 28, 28))
  labels = _read_idx(labels_path, (None,))
  if len(images) != len(labels):
    raise UserError(f"fashion_mnist: {images_path} has {len(images)} images but {labels_path} has "
                    f"{len(labels)} labels; the files do not belong together, replace them")
  if len(labels) and labels.max() >= 10:
    raise UserError(f"fashion_mnist: {labels_path} has label {labels.max()}, not one of 0..9; "
                    "replace the file")
  return images, labels


def _read_idx(path: Any, shape: tuple[int | None, ...]) -> np.ndarray:
  """An unsigned-byte IDX array (gzipped or not) whose dims match `shape` (None: any length)."""
  path = os.fspath(path)
  fix = (f"replace it (e.g. `apt-get install --reinstall {FashionMnistUint8.DEBIAN_PACKAGE}`) or "
         "point --config.dataset.manual_dir at good copies")
  try:
    with open(path, "rb") as f:
      raw = f.read()
    if raw[:2] == b"\x1f\x8b":
      raw = gzip.decompress(raw)
  except (OSError, EOFError, zlib.error) as e:
    raise UserError(f"fashion_mnist: cannot read {path} ({_first_line(e)}); {fix}") from None
  ndim = len(shape)
  magic = int.from_bytes(raw[:4], "big") if len(raw) >= 4 else None
  if magic != 0x800 + ndim:
    got = "a short file" if magic is None else f"magic {magic:#010x}"
    raise UserError(f"fashion_mnist: {path} is not an IDX file of {ndim}-d unsigned bytes ({got}, "
                    f"expected {0x800 + ndim:#010x}); {fix}")
  header = 4 + 4 * ndim
  dims = struct.unpack(f">{ndim}I", raw[4:header]) if len(raw) >= header else ()
  if len(dims) != ndim or any(want is not None and got != want for got, want in zip(dims, shape)):
    raise UserError(f"fashion_mnist: {path} has dims {dims}, expected {shape} (None: any); {fix}")
  if len(raw) - header != math.prod(dims):
    raise UserError(f"fashion_mnist: {path} has {len(raw) - header} data bytes, its header says "
                    f"{math.prod(dims)} (truncated or corrupt); {fix}")
  return np.frombuffer(raw, np.uint8, offset=header).reshape(dims)


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
    if source.pipeline is not None:  # read from disk and/or augmented: grain (oneshot/pipeline.py)
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

  def _source(self, split: str) -> _Source:
    if split not in self._sources:
      raise UserError(f"dataset {self.name!r} has no {split!r} split here; use one of "
                      f"{sorted(self._sources)} (set --config.dataset.{split}_split to add it)"
                      if split in ROLES else
                      f"unknown split {split!r}; use one of {sorted(self._sources)}")
    return self._sources[split]

  def _normalise(self, images: np.ndarray) -> np.ndarray:
    return ((images.astype(np.float32) - self._mean) * self._inv_std).astype(np.float32)


# Datasets held in memory by name (`oneshot.arrays.serving`): `load` answers these names with them.
IN_MEMORY: dict[str, Dataset] = {}
IN_MEMORY_ARRAYS_PREFIX = "arrays-"  # the names `oneshot.arrays` gives them


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
  /usr/share/datasets/fashion-mnist), augment (the train split's, `oneshot/augment.py`), workers and
  prefetch (grain's worker processes and batches read ahead). Splits held in memory and not augmented
  are a numpy gather per batch (digits, Fashion-MNIST); the others go through grain
  (`oneshot/pipeline.py`). `digits` and `fashion_mnist` are prepared on first use.
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
  builder = _open_builder(name, data_dir, manual_dir)
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
    source = _open_split(builder, name, role, str(spec))
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


# Datasets this module prepares itself, by the name they are loaded as.
_LOCAL_BUILDERS = {"digits": Digits, "fashion_mnist": FashionMnistUint8}


def _open_builder(name: str, data_dir: str | None,
                  manual_dir: str | None = None) -> tfds.core.DatasetBuilder:
  """The TFDS builder, prepared (local builders prepare themselves); errors become one-line UserErrors."""
  where = data_dir or tfds.core.constants.DATA_DIR
  if name in _LOCAL_BUILDERS:
    cls = _LOCAL_BUILDERS[name]
    with _quiet_absl(), _no_info_from_bucket():
      builder = cls(data_dir=data_dir, file_format="array_record")
      prepared = builder.is_prepared()
    if not prepared:
      _prepare(builder, manual_dir or getattr(cls, "DEFAULT_MANUAL_DIR", None))
      builder = cls(data_dir=data_dir, file_format="array_record")
    return builder
  try:
    with _quiet_absl(), _no_info_from_bucket():  # unprepared is refused below: no GCS info needed
      builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError:
    raise UserError(f"unknown dataset {name!r}: not a TFDS dataset; set --config.dataset.name to a "
                    "TFDS name such as digits, cifar10") from None
  except Exception as e:  # pylint: disable=broad-except  # tfds raises many types; all are config
    raise UserError(f"cannot open dataset {name!r} in {where}: {_first_line(e)}; check "
                    "--config.dataset.name and --config.dataset.data_dir") from None
  with _quiet_absl():
    prepared = builder.is_prepared()
  if not prepared:
    raise UserError(f"dataset {name!r} is not prepared in {where}; prepare it with `tfds build "
                    f"{name} --data_dir {where} --file_format array_record` on a machine with network "
                    "access (this machine may be offline), or set --config.dataset.data_dir")
  fmt = getattr(builder.info.file_format, "value", builder.info.file_format)
  if fmt not in ("array_record", "parquet"):
    raise UserError(f"dataset {name!r} in {where} is stored as {fmt}, which needs TensorFlow to read; "
                    f"rebuild it with `tfds build {name} --data_dir {where} --file_format array_record`")
  return builder


@contextlib.contextmanager
def _no_info_from_bucket() -> Iterator[None]:
  """Constructing a builder whose data is not prepared yet makes TFDS look for its DatasetInfo on GCS
  (`DatasetInfo.initialize_from_bucket`), which first creates a `/tmp/tmp*tfds` folder and, offline
  or when GCS has nothing, returns without removing it: one stray folder per first load. The local
  builders describe themselves in code, and other datasets must be prepared already (`_open_builder`
  refuses them otherwise), so the probe is skipped (TFDS has no switch for it).
  """
  with mock.patch.object(tfds.core.dataset_info.DatasetInfo, "initialize_from_bucket",
                         lambda self: None):
    yield


@contextlib.contextmanager
def _quiet_absl() -> Iterator[None]:
  """Drops TFDS's "Variant folder ... has no dataset_info.json" warning: not-prepared is handled here."""
  def keep(record: logging.LogRecord) -> bool:
    return "has no dataset_info.json" not in record.getMessage()
  logger = logging.getLogger("absl")
  logger.addFilter(keep)
  try:
    yield
  finally:
    logger.removeFilter(keep)


def _prepare(builder: tfds.core.DatasetBuilder, manual_dir: str | None = None) -> None:
  """download_and_prepare with TFDS's progress bars off and its stdout chatter sent to stderr.

  stdout may carry JSON for other tools. TFDS writes into an `incomplete.*` directory renamed on
  success, so a failed prepare leaves nothing that looks prepared; folders created on the way (the
  dataset's parent folders, TFDS's download folders) are removed again after a failure if empty. No
  GCS probe (network): these builders write array_record, which TFDS never fetches from GCS anyway.
  Concurrent processes may race to prepare the same data_dir; the loser's final rename fails, which
  is fine as long as the winner's copy is complete.
  """
  root = os.fspath(builder.data_dir_root)
  folders = [root, os.path.join(root, "downloads"), os.path.join(root, "downloads", "extracted")]
  rel = os.path.relpath(os.fspath(builder.data_dir), root).split(os.sep)
  folders += [os.path.join(root, *rel[:i]) for i in range(1, len(rel))]  # name/[config/]; not version
  created = sorted((d for d in folders if not os.path.isdir(d)), key=len)
  config = tfds.download.DownloadConfig(manual_dir=manual_dir, try_download_gcs=False)
  bars = getattr(tfds.core.utils.tqdm_utils, "_active", True)
  tfds.display_progress_bar(False)
  try:
    with contextlib.redirect_stdout(sys.stderr), _quiet_absl():
      builder.download_and_prepare(download_config=config)
  except OSError:
    with _no_info_from_bucket():
      prepared = type(builder)(data_dir=builder.data_dir_root, file_format="array_record").is_prepared()
    if not prepared:
      _remove_empty(created)
      raise
  except BaseException:
    _remove_empty(created)
    raise
  finally:
    tfds.display_progress_bar(bars)


def _remove_empty(folders: list[str]) -> None:
  for d in reversed(folders):  # deepest first; only if still empty
    with contextlib.suppress(OSError):
      os.rmdir(d)


def _open_split(builder: tfds.core.DatasetBuilder, name: str, role: str, spec: str) -> Any:
  try:
    return builder.as_data_source(split=spec)
  except (ValueError, KeyError) as e:
    splits = ", ".join(sorted(builder.info.splits.keys()))
    raise UserError(f"dataset {name!r} cannot read split {spec!r} ({_first_line(e)}); set "
                    f"--config.dataset.{role}_split to one of {splits} or a slice such as "
                    "'train[:90%]'") from None
  except NotImplementedError as e:
    raise UserError(f"dataset {name!r} cannot be read without TensorFlow ({_first_line(e)}); rebuild "
                    f"it with `tfds build {name} --file_format array_record`") from None


def _first_line(e: BaseException) -> str:
  lines = str(e).strip().splitlines()
  return lines[0].strip(" .") if lines else type(e).__name__
