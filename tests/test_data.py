"""The data pipeline: digits splits, exact resumable batch order, process slicing, padded evaluation."""

from __future__ import annotations

import collections
import os
import tempfile

import numpy as np
import pytest
from sklearn.datasets import load_digits

from oneshot import data
from oneshot.data import builders, order
from oneshot.errors import UserError


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> str:
  return str(tmp_path_factory.mktemp("tfds"))


@pytest.fixture(scope="module")
def digits(data_dir) -> data.Dataset:
  return data.load({"name": "digits", "data_dir": data_dir})


def _rows(images: np.ndarray, labels: np.ndarray) -> collections.Counter:
  return collections.Counter((img.tobytes(), int(lab)) for img, lab in zip(images, labels))


def _stored(data_dir: str, split: str) -> list[dict]:
  source = builders.Digits(data_dir=data_dir).as_data_source(split=split)
  return source.__getitems__(list(range(len(source))))


def test_metadata(digits):
  assert digits.name == "digits"
  assert digits.num_classes == 10
  assert digits.image_shape == (8, 8, 1)
  assert digits.split_sizes == {"train": 1197, "validation": 300, "test": 300}


def test_splits_are_disjoint_cover_all_and_match_sklearn(digits, data_dir):
  sk = load_digits()
  seen = []
  for split in ("train", "validation", "test"):
    for ex in _stored(data_dir, split):
      i = int(ex["index"])
      np.testing.assert_array_equal(ex["image"][..., 0], sk.images[i])
      assert ex["label"] == sk.target[i]
      seen.append(i)
  assert sorted(seen) == list(range(1797))  # disjoint (no repeats) and complete


def test_split_is_a_pure_function_of_the_fixed_seed():
  shuffled = order.permutation(1797, builders.DIGITS_SEED)
  assert sorted(shuffled) == list(range(1797))
  np.testing.assert_array_equal(shuffled, order.permutation(1797, builders.DIGITS_SEED))
  assert not np.array_equal(shuffled, order.permutation(1797, builders.DIGITS_SEED + 1))


def test_preparing_leaves_no_stray_folder_in_the_temp_dir(tmp_path, monkeypatch):
  scratch = tmp_path / "scratch"
  scratch.mkdir()
  monkeypatch.setattr(tempfile, "tempdir", str(scratch))
  data.load({"name": "digits", "data_dir": str(tmp_path / "data")})
  assert os.listdir(scratch) == []


def test_preparing_prints_nothing_on_stdout(tmp_path, capfd):
  data.load({"name": "digits", "data_dir": str(tmp_path)})
  assert capfd.readouterr().out == ""


def test_batch_is_normalised_and_typed(digits):
  batch = digits.batch("train", 0, 32, seed=0)
  assert set(batch) == {"image", "label"}
  assert batch["image"].shape == (32, 8, 8, 1) and batch["image"].dtype == np.float32
  assert batch["label"].shape == (32,) and batch["label"].dtype == np.int32
  epoch = np.concatenate([digits.batch("train", s, 399, seed=0)["image"] for s in range(3)])
  assert abs(epoch.mean()) < 1e-4 and abs(epoch.std() - 1) < 1e-3  # stats are from the train split


def test_batch_is_deterministic_and_depends_on_seed(digits, data_dir):
  a = digits.batch("train", 7, 64, seed=3)
  fresh = data.load({"name": "digits", "data_dir": data_dir})  # as after a restart: resume is exact
  b = fresh.batch("train", 7, 64, seed=3)
  np.testing.assert_array_equal(a["image"], b["image"])
  np.testing.assert_array_equal(a["label"], b["label"])
  c = digits.batch("train", 7, 64, seed=4)
  assert not np.array_equal(a["image"], c["image"])
  d = digits.batch("train", 8, 64, seed=3)
  assert not np.array_equal(a["image"], d["image"])


@pytest.mark.parametrize("batch_size", [171, 100])  # divides 1197, and does not
def test_each_epoch_is_a_permutation_of_the_split(digits, batch_size):
  n = digits.split_sizes["train"]
  steps = -(-2 * n // batch_size)
  batches = [digits.batch("train", s, batch_size, seed=1) for s in range(steps)]
  images = np.concatenate([b["image"] for b in batches])
  labels = np.concatenate([b["label"] for b in batches])
  everything = _rows(*_eval_pass(digits, "train", 256))
  assert _rows(images[:n], labels[:n]) == everything
  assert _rows(images[n:2 * n], labels[n:2 * n]) == everything
  assert not np.array_equal(images[:n], images[n:2 * n])  # reshuffled per epoch


@pytest.mark.parametrize("process_count", [2, 4])
@pytest.mark.parametrize("step", [0, 11])  # step 11 of 100 crosses the first epoch boundary
def test_process_slices_concatenate_to_the_global_batch(digits, process_count, step):
  whole = digits.batch("train", step, 100 if process_count == 2 else 96, seed=5)
  size = len(whole["label"])
  parts = [digits.batch("train", step, size, seed=5, process_index=i, process_count=process_count)
           for i in range(process_count)]
  for key in ("image", "label"):
    np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), whole[key])


def _eval_pass(dataset, split, batch_size, process_count=1):
  per_process = [list(dataset.iterate(split, batch_size, process_index=i,
                                      process_count=process_count))
                 for i in range(process_count)]
  assert len({len(p) for p in per_process}) == 1  # every process runs the same number of steps
  images, labels = [], []
  for step_batches in zip(*per_process):
    for b in step_batches:
      assert set(b) == {"image", "label", "mask"} and b["mask"].dtype == np.float32
      assert len(b["mask"]) == batch_size // process_count
      real = b["mask"] == 1
      assert set(np.unique(b["mask"])) <= {0.0, 1.0}
      images.append(b["image"][real])
      labels.append(b["label"][real])
  return np.concatenate(images), np.concatenate(labels)


@pytest.mark.parametrize("process_count", [1, 2])
def test_iterate_returns_each_stored_example_once_in_order(digits, data_dir, process_count):
  images, labels = _eval_pass(digits, "validation", 128, process_count)  # 300 = 128 + 128 + 44 pad
  stored = _stored(data_dir, "validation")
  assert len(labels) == len(stored) == 300
  np.testing.assert_array_equal(labels, [ex["label"] for ex in stored])
  raw = np.stack([ex["image"] for ex in stored]).astype(np.float64).ravel()
  # normalising is one affine map: fitting it back must reproduce the stored pixels exactly
  a, b = np.polyfit(images.astype(np.float64).ravel(), raw, 1)
  np.testing.assert_allclose(a * images.ravel() + b, raw, atol=1e-3)


def test_iterate_pads_the_last_batch(digits):
  batches = list(digits.iterate("test", 128))
  assert [int(b["mask"].sum()) for b in batches] == [128, 128, 44]
  np.testing.assert_array_equal(batches[-1]["mask"], np.arange(128) < 44)


@pytest.mark.parametrize("process_count", [1, 2])
def test_iterate_pads_with_real_images_of_the_split(digits, process_count):
  # BatchNorm normalises with batch statistics in evaluation and ignores the mask: zero padding rows
  # (84 of the last 128 here) would shift the mean and variance seen by the 44 real rows.
  per_process = [list(digits.iterate("test", 128, process_index=i, process_count=process_count))
                 for i in range(process_count)]
  last = {key: np.concatenate([p[-1][key] for p in per_process]) for key in ("image", "label")}
  first = {key: np.concatenate([p[0][key] for p in per_process]) for key in ("image", "label")}
  pad = slice(44, 128)  # global positions 300..383 wrap around to the split's examples 0..83
  np.testing.assert_array_equal(last["image"][pad], first["image"][:84])
  np.testing.assert_array_equal(last["label"][pad], first["label"][:84])
  assert all(row.any() for row in last["image"])  # no all-zero rows
  split = np.concatenate([b["image"][b["mask"] == 1] for p in per_process for b in p])
  pixel_mean, batch_mean = split.mean(axis=0), last["image"].mean(axis=0)
  pixel_std = split.std(axis=0).mean()
  assert np.abs(batch_mean - pixel_mean).mean() < 0.25 * pixel_std  # zero padding: 0.67
  assert 0.9 < last["image"].std(axis=0).mean() / pixel_std < 1.1  # zero padding: 0.87


def test_split_names_accept_tfds_slicing(data_dir):
  ds = data.load({"name": "digits", "data_dir": data_dir, "train_split": "train[:1000]",
                  "validation_split": "train[1000:]", "test_split": ""})
  assert ds.split_sizes == {"train": 1000, "validation": 197}
  with pytest.raises(UserError, match="test"):
    ds.batch("test", 0, 8, seed=0)


def test_reading_without_the_cache_gives_the_same_batches(digits, data_dir):
  direct = data.load({"name": "digits", "data_dir": data_dir, "cache_in_memory": False})
  assert direct._sources["train"]._images is None  # pylint: disable=protected-access
  for key in ("image", "label"):
    np.testing.assert_array_equal(direct.batch("train", 3, 50, seed=2)[key],
                                  digits.batch("train", 3, 50, seed=2)[key])


def test_image_size_resizes(data_dir):
  ds = data.load({"name": "digits", "data_dir": data_dir, "image_size": 16, "cache_in_memory": False})
  assert ds.image_shape == (16, 16, 1)
  assert ds.batch("train", 0, 4, seed=0)["image"].shape == (4, 16, 16, 1)


def _one_line(err: pytest.ExceptionInfo) -> str:
  message = str(err.value)
  assert "\n" not in message
  assert err.value.__context__ is None or err.value.__suppress_context__  # no chained traceback
  return message


def test_unknown_dataset_is_a_one_line_user_error(tmp_path):
  with pytest.raises(UserError) as err:
    data.load({"name": "no_such_dataset", "data_dir": str(tmp_path)})
  message = _one_line(err)
  assert "no_such_dataset" in message and "--config.dataset.name" in message


def test_unprepared_dataset_says_how_to_prepare_it(tmp_path):
  with pytest.raises(UserError) as err:
    data.load({"name": "mnist", "data_dir": str(tmp_path)})
  message = _one_line(err)
  assert f"tfds build mnist --data_dir {tmp_path}" in message and "offline" in message
  assert not any(tmp_path.iterdir())  # nothing was downloaded or created


def test_unknown_split_is_a_user_error(digits, data_dir):
  with pytest.raises(UserError) as err:
    data.load({"name": "digits", "data_dir": data_dir, "validation_split": "valid"})
  assert "--config.dataset.validation_split" in _one_line(err)
  with pytest.raises(UserError, match="unknown split 'dev'"):
    digits.batch("dev", 0, 8, seed=0)


def test_batch_size_must_split_evenly_over_processes(digits):
  with pytest.raises(UserError, match="not divisible"):
    digits.batch("train", 0, 10, seed=0, process_index=0, process_count=3)
