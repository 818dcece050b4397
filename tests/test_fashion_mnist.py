"""fashion_mnist from local IDX files: the real parser on tiny files, fixed splits, one-line errors.

The tests write small gzipped IDX files (30 train + 10 test images of 28x28) and never touch the
network: every TFDS download is made to fail unless a test replaces it.
"""

from __future__ import annotations

import errno
import gzip
import os
import shutil
import socket
import struct

import numpy as np
import pytest
import tensorflow_datasets as tfds

from oneshot import data
from oneshot.data import builders
from oneshot.errors import UserError

NAMES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
         "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}
SIZES = {"train": 30, "test": 10}


def _images(split: str) -> np.ndarray:
  """Distinct, known pixels: image i of `split` is a ramp shifted by i (and by 100 for test)."""
  n, shift = SIZES[split], 0 if split == "train" else 100
  ramp = np.arange(28 * 28, dtype=np.int64).reshape(28, 28)
  return ((ramp[None] + 7 * (np.arange(n)[:, None, None] + shift)) % 256).astype(np.uint8)


def _labels(split: str) -> np.ndarray:
  n = SIZES[split]
  return ((np.arange(n) * (3 if split == "train" else 7)) % 10).astype(np.uint8)


def _idx(array: np.ndarray, magic: int | None = None) -> bytes:
  magic = 0x800 + array.ndim if magic is None else magic
  return struct.pack(f">I{array.ndim}I", magic, *array.shape) + array.tobytes()


def _write(folder, name: str, payload: bytes, compress: bool = True) -> None:
  os.makedirs(folder, exist_ok=True)
  if compress:
    with gzip.open(os.path.join(folder, name), "wb") as f:
      f.write(payload)
  else:
    with open(os.path.join(folder, name[:-3]), "wb") as f:
      f.write(payload)


def _write_all(folder, compress: bool = True) -> str:
  for split, (images, labels) in NAMES.items():
    _write(folder, images, _idx(_images(split)), compress)
    _write(folder, labels, _idx(_labels(split)), compress)
  return str(folder)


def _config(data_dir, manual_dir=None) -> dict:
  config = {"name": "fashion_mnist", "data_dir": str(data_dir), "train_split": "train[:20]",
            "validation_split": "train[20:]", "test_split": "test"}
  if manual_dir is not None:
    config["manual_dir"] = str(manual_dir)
  return config


@pytest.fixture(autouse=True)
def no_network(monkeypatch, tmp_path):
  """No socket connects and any TFDS download fails; the Debian default directory is an empty one."""
  def no_connect(*args, **kwargs):
    raise OSError(errno.ENETUNREACH, "Network is unreachable (blocked in tests)")
  def offline(*args, **kwargs):
    raise ConnectionError("network is unreachable (blocked in tests)")
  monkeypatch.setattr(socket, "create_connection", no_connect)
  for method in ("download", "download_and_extract"):
    monkeypatch.setattr(tfds.download.DownloadManager, method, offline)
  monkeypatch.setattr(builders.FashionMnistUint8, "DEFAULT_MANUAL_DIR", str(tmp_path / "no_debian"))


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
  """(data_dir, dataset) prepared once from tiny IDX files, with any download failing."""
  root = tmp_path_factory.mktemp("fashion")
  manual = _write_all(root / "idx")
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(tfds.download.DownloadManager, "download_and_extract",
               lambda *a, **k: pytest.fail("tried to download"))
    ds = data.load(_config(root / "tfds", manual))
  return str(root / "tfds"), ds


def test_metadata(prepared):
  _, ds = prepared
  assert ds.name == "fashion_mnist"
  assert ds.num_classes == 10
  assert ds.image_shape == (28, 28, 1)
  assert ds.split_sizes == {"train": 20, "validation": 10, "test": 10}


def test_pixels_and_labels_round_trip_in_stored_order(prepared):
  data_dir, ds = prepared
  stored = builders.FashionMnistUint8(data_dir=data_dir).as_data_source(split="train")
  assert len(stored) == 30
  example = stored[29]
  assert example["image"].dtype == np.uint8 and example["image"].shape == (28, 28, 1)
  expected = {"train": (_images("train")[:20], _labels("train")[:20]),
              "validation": (_images("train")[20:], _labels("train")[20:]),
              "test": (_images("test"), _labels("test"))}
  for role, (images, labels) in expected.items():
    source = ds._sources[role]  # pylint: disable=protected-access
    raw_images, raw_labels = source.read(np.arange(len(labels)))
    np.testing.assert_array_equal(raw_images, images[..., None])
    np.testing.assert_array_equal(raw_labels, labels)
    batches = list(ds.iterate(role, 8))
    got = np.concatenate([b["label"][b["mask"] == 1] for b in batches])
    np.testing.assert_array_equal(got, labels)
  batch = ds.batch("train", 0, 8, seed=0)
  assert batch["image"].shape == (8, 28, 28, 1) and batch["image"].dtype == np.float32


def test_second_load_reuses_the_prepared_data(prepared, tmp_path):
  data_dir, ds = prepared
  again = data.load(_config(data_dir, tmp_path / "empty"))  # no files, no network: must not prepare
  assert again.split_sizes == ds.split_sizes
  np.testing.assert_array_equal(again.batch("test", 0, 10, seed=1)["image"],
                                ds.batch("test", 0, 10, seed=1)["image"])


def test_unpacked_files_and_the_default_directory(monkeypatch, tmp_path):
  debian = _write_all(tmp_path / "debian", compress=False)
  monkeypatch.setattr(builders.FashionMnistUint8, "DEFAULT_MANUAL_DIR", debian)
  ds = data.load(_config(tmp_path / "tfds"))  # manual_dir unset: the default directory
  assert ds.split_sizes == {"train": 20, "validation": 10, "test": 10}


def test_downloaded_files_are_used_when_there_are_no_local_ones(monkeypatch, tmp_path):
  """The network path, with TFDS's download replaced by local (already extracted) copies."""
  unpacked = _write_all(tmp_path / "extracted", compress=False)
  asked = []

  def download_and_extract(self, urls):
    asked.extend(urls.values())
    return {key: os.path.join(unpacked, os.path.basename(url)[:-3]) for key, url in urls.items()}
  monkeypatch.setattr(tfds.download.DownloadManager, "download_and_extract", download_and_extract)
  monkeypatch.setattr(builders, "_unreachable", lambda url: None)  # as if online
  ds = data.load(_config(tmp_path / "tfds"))
  assert ds.split_sizes == {"train": 20, "validation": 10, "test": 10}
  assert sorted(os.path.basename(u) for u in asked) == sorted(n for p in NAMES.values() for n in p)
  assert all(u.startswith(builders.FashionMnistUint8.URL) for u in asked)


def _one_line(err: pytest.ExceptionInfo) -> str:
  message = str(err.value)
  assert "\n" not in message
  assert err.value.__context__ is None or err.value.__suppress_context__  # no chained traceback
  return message


def _nothing_prepared(data_dir) -> None:
  assert not os.path.exists(data_dir) or not os.listdir(data_dir), os.listdir(data_dir)
  with builders._no_info_from_bucket():  # pylint: disable=protected-access  # no stray /tmp folder
    assert not builders.FashionMnistUint8(data_dir=str(data_dir)).is_prepared()


@pytest.mark.parametrize("manual, failure", [(None, "unreachable"), ("empty", "unreachable"),
                                             ("empty", "download")])
def test_missing_files_without_network_is_one_line(monkeypatch, tmp_path, manual, failure):
  looked = builders.FashionMnistUint8.DEFAULT_MANUAL_DIR if manual is None else str(tmp_path / manual)
  if manual:
    os.makedirs(looked)
  if failure == "unreachable":  # offline: the one connect fails, TFDS's slow retries never start
    monkeypatch.setattr(tfds.download.DownloadManager, "download_and_extract",
                        lambda *a, **k: pytest.fail("tried to download while unreachable"))
  else:  # the host answers but the download fails (proxy, checksum, ...)
    monkeypatch.setattr(builders, "_unreachable", lambda url: None)
  with pytest.raises(UserError) as err:
    data.load(_config(tmp_path / "tfds", looked if manual else None))
  message = _one_line(err)
  assert "apt-get install dataset-fashion-mnist" in message
  assert looked in message and "--config.dataset.manual_dir" in message
  assert ("cannot reach fashion-mnist" if failure == "unreachable" else "ConnectionError") in message
  _nothing_prepared(tmp_path / "tfds")
  ds = data.load(_config(tmp_path / "tfds", _write_all(tmp_path / "later")))  # nothing in the way
  assert ds.split_sizes["test"] == 10


@pytest.mark.parametrize("damage, words", [
    ("magic", "magic 0x00000801"),
    ("dims", "dims"),
    ("truncated", "truncated"),
    ("gzip", "cannot read"),
    ("count", "do not belong together"),
])
def test_malformed_files_are_one_line_errors(tmp_path, damage, words):
  manual = _write_all(tmp_path / "idx")
  images = _images("train")
  payload = {"magic": _idx(images, magic=0x801),
             "dims": _idx(images[:, :27]),
             "truncated": _idx(images)[:-5],
             "count": _idx(images[:29])}.get(damage)
  if damage == "gzip":
    with open(os.path.join(manual, NAMES["train"][0]), "wb") as f:
      f.write(b"\x1f\x8b not really gzip")
  else:
    _write(manual, NAMES["train"][0], payload)
  with pytest.raises(UserError) as err:
    data.load(_config(tmp_path / "tfds", manual))
  message = _one_line(err)
  assert words in message and "fashion_mnist" in message
  if damage != "count":
    assert NAMES["train"][0] in message
  _nothing_prepared(tmp_path / "tfds")


def test_real_debian_labels_if_installed():
  """The installed test labels parse: 10,000 labels, 1,000 per class (the big image files are skipped)."""
  folder = "/usr/share/datasets/fashion-mnist"
  if not os.path.isdir(folder):
    pytest.skip("dataset-fashion-mnist is not installed")
  read_idx = builders._read_idx  # pylint: disable=protected-access
  labels = read_idx(os.path.join(folder, NAMES["test"][1]), (None,))
  assert labels.shape == (10000,) and np.bincount(labels).tolist() == [1000] * 10


def test_a_failed_prepare_keeps_an_existing_data_dir(tmp_path):
  (tmp_path / "tfds").mkdir()
  (tmp_path / "tfds" / "other").write_text("keep")
  with pytest.raises(UserError):
    data.load(_config(tmp_path / "tfds", tmp_path / "none"))
  assert sorted(os.listdir(tmp_path / "tfds")) == ["other"]
  shutil.rmtree(tmp_path / "tfds")
