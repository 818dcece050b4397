"""The grain input pipeline: augmentation, batches independent of workers and processes, exact resume."""

from __future__ import annotations

import contextlib
import multiprocessing
import signal

import numpy as np
import pytest

from oneshot.data import augment
from oneshot import data
from oneshot.data import pipeline
from oneshot.data import synthetic
from oneshot.configs import cifar10, digits as digits_config, fashion_mnist, imagenet_mobilenet
from oneshot.errors import UserError

BATCH = 16


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> str:
  return str(tmp_path_factory.mktemp("tfds"))


@pytest.fixture(scope="module")
def cifar_name(data_dir) -> str:
  """CIFAR-10-shaped synthetic PNGs (1024 train images, well under a second to write)."""
  return synthetic.prepare("cifar10", data_dir)


def _load(data_dir: str, **fields) -> data.Dataset:
  return data.load({"name": "digits", "data_dir": data_dir, **fields})


def _read(ds: data.Dataset, steps, batch: int = BATCH, **kw) -> list[dict[str, np.ndarray]]:
  try:
    return [ds.batch("train", step, batch, 7, **kw) for step in steps]
  finally:
    ds.close()


def _assert_same(got: list[dict], want: list[dict]) -> None:
  assert len(got) == len(want)
  for g, w in zip(got, want):
    np.testing.assert_array_equal(g["image"], w["image"])
    np.testing.assert_array_equal(g["label"], w["label"])


@contextlib.contextmanager
def _deadline(seconds: int):
  """Fails the test instead of hanging if worker processes stop answering."""
  def expire(*_):
    raise TimeoutError(f"the pipeline did not answer within {seconds} s")
  previous = signal.signal(signal.SIGALRM, expire)
  signal.alarm(seconds)
  try:
    yield
  finally:
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


@pytest.mark.slow
def test_pad_crop_flip_keeps_shape_and_labels_and_moves_pixels(data_dir):
  plain = _read(_load(data_dir, cache_in_memory=False), range(2))
  moved = _read(_load(data_dir, augment="pad_crop_flip"), range(2))
  for p, m in zip(plain, moved):
    assert m["image"].shape == p["image"].shape == (BATCH, 8, 8, 1)
    assert m["image"].dtype == np.float32 and m["label"].dtype == np.int32
    np.testing.assert_array_equal(m["label"], p["label"])  # the same records, in the same order
  changed = [not np.array_equal(m, p)
             for b, c in zip(plain, moved) for p, m in zip(b["image"], c["image"])]
  assert sum(changed) >= len(changed) // 2  # unchanged: offset (4, 4) and no flip, or a symmetric digit


def test_pad_crop_flip_is_a_shift_or_mirror_of_the_image():
  image = np.arange(32 * 32 * 3, dtype=np.uint8).reshape(32, 32, 3)
  example = augment.Example("pad_crop_flip", "image", "label", None)
  rng = np.random.default_rng(0)
  outs = [example({"image": image, "label": 3}, rng) for _ in range(20)]
  for out in outs:
    assert out["image"].shape == (32, 32, 3) and out["image"].dtype == np.uint8
    assert out["label"] == 3 and out["label"].dtype == np.int32
    core = [c for c in (out["image"], out["image"][:, ::-1]) if _is_shift(c, image)]
    assert core, "not a padded crop of the image or its mirror"
  assert len({o["image"].tobytes() for o in outs}) > 5


def _is_shift(out: np.ndarray, image: np.ndarray) -> bool:
  padded = np.pad(image, ((4, 4), (4, 4), (0, 0)))
  return any(np.array_equal(out, padded[t:t + 32, l:l + 32]) for t in range(9) for l in range(9))


@pytest.mark.parametrize("shape", [(50, 70, 3), (300, 200, 1)])
def test_inception_crop_outputs_the_configured_resolution(shape):
  image = np.random.default_rng(1).integers(0, 256, shape, dtype=np.uint8)
  example = augment.Example("inception_crop_flip", "image", "label", 24)
  rng = np.random.default_rng(0)
  outs = [example({"image": image, "label": 5}, rng)["image"] for _ in range(4)]
  assert all(o.shape == (24, 24, shape[2]) and o.dtype == np.uint8 for o in outs)
  assert len({o.tobytes() for o in outs}) == 4


def test_inception_crop_through_load_gives_image_size(data_dir):
  ds = _load(data_dir, augment="inception_crop_flip", image_size=12)
  batch = _read(ds, [0])[0]
  assert ds.image_shape == (12, 12, 1)
  assert batch["image"].shape == (BATCH, 12, 12, 1)
  assert ds.batch("validation", 0, 4, 7)["image"].shape == (4, 12, 12, 1)  # not augmented, resized


@pytest.mark.slow
def test_worker_processes_give_the_same_batches_and_exit(data_dir, cifar_name):
  config = {"name": cifar_name, "data_dir": data_dir, "augment": "pad_crop_flip", "test_split": ""}
  threads = _read(data.load({**config, "workers": 0}), range(3))
  with _deadline(120):
    workers = _read(data.load({**config, "workers": 1, "prefetch": 1}), range(3))
  _assert_same(workers, threads)
  assert threads[0]["image"].shape == (BATCH, 32, 32, 3)
  assert not multiprocessing.active_children()  # close() stopped the worker


def test_a_fresh_pipeline_resumes_exactly_where_the_run_stopped(data_dir):
  run = _read(_load(data_dir, augment="pad_crop_flip"), range(8))
  _assert_same(_read(_load(data_dir, augment="pad_crop_flip"), range(5, 8)), run[5:])
  ds = _load(data_dir, augment="pad_crop_flip")  # jumps back and forth in one pipeline
  _assert_same(_read(ds, [6, 2, 3, 7]), [run[6], run[2], run[3], run[7]])


@pytest.mark.parametrize("step", [0, 74])  # 74: the batch straddles the end of the first epoch
def test_process_slices_concatenate_to_the_global_batch(data_dir, step):
  ds = _load(data_dir, augment="pad_crop_flip")
  whole = ds.batch("train", step, BATCH, 7)
  parts = [ds.batch("train", step, BATCH, 7, process_index=p, process_count=2) for p in range(2)]
  ds.close()
  np.testing.assert_array_equal(np.concatenate([p["image"] for p in parts]), whole["image"])
  np.testing.assert_array_equal(np.concatenate([p["label"] for p in parts]), whole["label"])


def test_an_epoch_reads_every_record_once(data_dir):
  ds = _load(data_dir, augment="pad_crop_flip")
  labels = np.concatenate([b["label"] for b in _read(ds, range(1197 // 171), batch=171)])
  plain = _load(data_dir)
  stored = np.concatenate([b["label"] for b in plain.iterate("train", 171)])
  np.testing.assert_array_equal(np.sort(labels), np.sort(stored))


def test_digits_and_fashion_mnist_stay_an_in_memory_gather(data_dir, monkeypatch):
  for module in (digits_config, fashion_mnist):
    d = module.get_config().dataset
    assert (d.augment, d.workers) == ("none", 0)
  assert cifar10.get_config().dataset.augment == "pad_crop_flip"
  assert imagenet_mobilenet.get_config().dataset.augment == "inception_crop_flip"

  def refuse(*args, **kwargs):
    raise AssertionError("the default digits path must not build a grain pipeline")
  monkeypatch.setattr(pipeline, "Split", refuse)
  ds = data.load({**digits_config.get_config().dataset.to_dict(), "data_dir": data_dir})
  sources = ds._sources.values()  # pylint: disable=protected-access
  assert all(s.pipeline is None and s._images is not None for s in sources)  # pylint: disable=protected-access
  assert ds.batch("train", 3, BATCH, 0)["image"].shape == (BATCH, 8, 8, 1)


@pytest.mark.parametrize("field, value, fix", [
    ("augment", "cutout", "--config.dataset.augment to one of none, pad_crop_flip"),
    ("workers", -1, "--config.dataset.workers must be an integer >= 0"),
    ("workers", 1.5, "--config.dataset.workers must be an integer >= 0"),
    ("prefetch", 0, "--config.dataset.prefetch must be an integer >= 1"),
])
def test_bad_pipeline_fields_are_one_line_user_errors(data_dir, field, value, fix):
  with pytest.raises(UserError) as e:
    _load(data_dir, **{field: value})
  assert fix in str(e.value) and "\n" not in str(e.value)
