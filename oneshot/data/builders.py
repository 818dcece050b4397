"""The TFDS builders oneshot prepares itself, and opening any TFDS builder with one-line errors.

`Digits` (scikit-learn's 8x8 digits, no download) and `FashionMnistUint8` (the four IDX files of the
Debian package `dataset-fashion-mnist`, or `manual_dir`, falling back to TFDS's download) are stored as
raw uint8 array_record, so reading them needs no TensorFlow. `oneshot.data` reads what these open.
"""

from __future__ import annotations

import contextlib
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

from oneshot import storage
from oneshot.data import order
from oneshot.errors import UserError

DIGITS_SEED = 20240613  # fixes the digits split forever; changing it changes which examples are held out
DIGITS_SPLIT_SIZES = {"train": 1197, "validation": 300, "test": 300}



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


# Datasets this module prepares itself, by the name they are loaded as.
_LOCAL_BUILDERS = {"digits": Digits, "fashion_mnist": FashionMnistUint8}


def open_builder(name: str, data_dir: str | None,
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
  builders describe themselves in code, and other datasets must be prepared already (`open_builder`
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


def open_split(builder: tfds.core.DatasetBuilder, name: str, role: str, spec: str) -> Any:
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
  return storage.first_line(e).strip(" .")
