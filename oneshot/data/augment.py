"""Per-example image preparation and training augmentation, as grain transforms on numpy arrays.

`--config.dataset.augment` picks what the train split gets; validation and test splits always get
`none` (rewards and accuracies are measured on the images as they are):
  none                 images as stored (resized + centre-cropped when `dataset.image_size` is set);
  pad_crop_flip        CIFAR's: zero-pad 4 pixels on each side, crop back at a random offset, flip
                       left-right with probability 1/2 (He et al. 2016);
  inception_crop_flip  ImageNet's: a random crop of 8%-100% of the area with aspect ratio 3/4-4/3
                       (Szegedy et al. 2015; 10 tries, else the centre square), resized to the
                       config's resolution, flipped with probability 1/2.
Written here with numpy and PIL because neither grain nor TFDS (without TensorFlow, which is not a
dependency) ships image augmentations. The random draws come from the generator grain's `random_map`
passes in, seeded from (pipeline seed, position in the stream), so an image's augmentation is a pure
function of (seed, step, process) whatever the number of worker processes.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from oneshot.errors import UserError

KINDS = ("none", "pad_crop_flip", "inception_crop_flip")
PAD = 4  # CIFAR's pad-crop margin, pixels
AREA = (0.08, 1.0)  # inception crop: fraction of the image's area
RATIO = (3 / 4, 4 / 3)  # inception crop: width / height
TRIES = 10


def check(kind: str) -> str:
  """`kind` if it names an augmentation, else a one-line UserError listing the valid names."""
  if kind not in KINDS:
    raise UserError(f"unknown augmentation {kind!r}; set --config.dataset.augment to one of "
                    f"{', '.join(KINDS)}")
  return kind


def as_hwc(image: Any, size: int | None = None) -> np.ndarray:
  """A [H, W, C] array; with `size`, the shorter side resized to `size` and the centre square kept."""
  image = np.asarray(image)
  image = image[..., None] if image.ndim == 2 else image
  if size is None or image.shape[:2] == (size, size):
    return image
  h, w, _ = image.shape
  scale = size / min(h, w)
  out = _resize(image, (max(size, round(h * scale)), max(size, round(w * scale))))
  top, left = (out.shape[0] - size) // 2, (out.shape[1] - size) // 2
  return out[top:top + size, left:left + size]


def pad_crop_flip(image: np.ndarray, rng: np.random.Generator, pad: int = PAD) -> np.ndarray:
  """Zero-pad `pad` pixels per side, crop the original size at a random offset, random left-right flip."""
  h, w, _ = image.shape
  padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)))
  top, left = rng.integers(0, 2 * pad + 1, size=2)
  out = padded[top:top + h, left:left + w]
  return out[:, ::-1] if rng.random() < 0.5 else out


def inception_crop_flip(image: np.ndarray, rng: np.random.Generator,
                        size: int | tuple[int, int]) -> np.ndarray:
  """A random area/aspect crop resized to [size, size] (or [h, w]; Inception's), random flip."""
  h, w, _ = image.shape
  box = None
  for _ in range(TRIES):
    area = h * w * rng.uniform(*AREA)
    ratio = math.exp(rng.uniform(math.log(RATIO[0]), math.log(RATIO[1])))
    cw, ch = round(math.sqrt(area * ratio)), round(math.sqrt(area / ratio))
    if 0 < cw <= w and 0 < ch <= h:
      box = (int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1)), ch, cw)
      break
  if box is None:  # no try fitted (very elongated image): the centre square, as TF's fallback
    side = min(h, w)
    box = ((h - side) // 2, (w - side) // 2, side, side)
  top, left, ch, cw = box
  out = _resize(image[top:top + ch, left:left + cw], (size, size) if isinstance(size, int) else size)
  return out[:, ::-1] if rng.random() < 0.5 else out


class Example:
  """A stored record -> {'image': uint8 [H, W, C], 'label': int32}, augmented by `kind`.

  A plain picklable object (no closures) as grain ships transforms to its worker processes; called as
  `fn(record)` by `MapDataset.map` and `fn(record, rng)` by `MapDataset.random_map`.
  """

  def __init__(self, kind: str, image_key: str, label_key: str, size: int | None):
    self.kind, self.image_key, self.label_key, self.size = check(kind), image_key, label_key, size

  def __call__(self, record: dict[str, Any], rng: np.random.Generator | None = None) -> dict[str, Any]:
    image = np.asarray(record[self.image_key])
    if self.kind == "inception_crop_flip":
      image = as_hwc(image)
      # Without `dataset.image_size` the images have one fixed shape (`data.load` checks): keep it.
      image = inception_crop_flip(image, rng, self.size or image.shape[:2])
    else:
      image = as_hwc(image, self.size)
      if self.kind == "pad_crop_flip":
        image = pad_crop_flip(image, rng)
    return {"image": np.ascontiguousarray(image), "label": np.int32(record[self.label_key])}


def _resize(image: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
  """Bilinear resize of a uint8 [H, W, C] image to `hw` with PIL."""
  from PIL import Image  # pylint: disable=import-outside-toplevel
  c = image.shape[2]
  pil = Image.fromarray(np.ascontiguousarray(image[..., 0] if c == 1 else image))
  out = np.asarray(pil.resize((hw[1], hw[0]), Image.BILINEAR))
  return out[..., None] if out.ndim == 2 else out
