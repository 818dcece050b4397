"""Small synthetic image datasets in TFDS's format, prepared locally, for tests and benchmarks.

`SyntheticImages` writes random images with the shapes and encodings of the real datasets (config
`cifar10`: 32x32x3 PNG, 10 classes; `imagenet`: JPEG of varying size around ImageNet's median,
1000 classes) into array_record files, so the input pipeline can be exercised and timed exactly as it
reads CIFAR-10 or ImageNet, without a download. Loaded like any TFDS dataset once this module is
imported: `--config.dataset.name synthetic_images/cifar10`. Images are smooth gradients plus noise, so
JPEG files have realistic sizes (pure noise would not compress and would decode slower than photos).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import sys
from typing import Any, Iterator

import numpy as np
import tensorflow_datasets as tfds


@dataclasses.dataclass
class SyntheticConfig(tfds.core.BuilderConfig):
  """Shape of one synthetic dataset: image side range (square if equal), encoding, split sizes."""

  min_side: int = 32
  max_side: int = 32
  encoding: str = "png"
  num_classes: int = 10
  split_sizes: tuple[tuple[str, int], ...] = (("train", 1024), ("validation", 128))


class SyntheticImages(tfds.core.GeneratorBasedBuilder):
  """Random labelled images; the content is a pure function of (config, split, index)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  BUILDER_CONFIGS = [
      SyntheticConfig(name="cifar10", description="CIFAR-10-shaped: 32x32x3 PNG, 10 classes."),
      SyntheticConfig(name="imagenet", description="ImageNet-shaped: JPEG, sides 300-500, 1000 "
                      "classes.", min_side=300, max_side=500, encoding="jpeg", num_classes=1000,
                      split_sizes=(("train", 512), ("validation", 64))),
  ]

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> None:
    """No checksums file to look up (nothing is downloaded)."""
    return None

  def _info(self) -> tfds.core.DatasetInfo:
    c = self.builder_config
    side = c.min_side if c.min_side == c.max_side else None
    return tfds.core.DatasetInfo(
        builder=self,
        description=c.description,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(side, side, 3), encoding_format=c.encoding),
            "label": tfds.features.ClassLabel(num_classes=c.num_classes),
        }),
        supervised_keys=("image", "label"),
        disable_shuffling=True,
    )

  def _split_generators(self, dl_manager: Any) -> dict[str, Any]:
    del dl_manager  # nothing to download
    return {name: self._generate_examples(name, size) for name, size in
            self.builder_config.split_sizes}

  def _generate_examples(self, split: str, size: int) -> Iterator[tuple[int, dict[str, Any]]]:
    from PIL import Image  # pylint: disable=import-outside-toplevel
    c = self.builder_config
    rng = np.random.default_rng(len(split) * 1_000_003 + size)
    for i in range(size):
      h, w = rng.integers(c.min_side, c.max_side + 1, size=2)
      ramp = np.linspace(0, 1, w)[None, :, None] * rng.uniform(0, 255, 3)
      ramp = ramp + np.linspace(0, 1, h)[:, None, None] * rng.uniform(-128, 128, 3)
      pixels = np.clip(ramp + rng.normal(0, 12, (h, w, 3)), 0, 255).astype(np.uint8)
      buf = io.BytesIO()
      Image.fromarray(pixels).save(buf, format=c.encoding.upper(), quality=90)
      yield i, {"image": buf.getvalue(), "label": int(rng.integers(c.num_classes))}


def prepare(config: str, data_dir: str) -> str:
  """Writes config `config` of `SyntheticImages` into `data_dir` (if not there yet); returns its name."""
  builder = SyntheticImages(config=config, data_dir=data_dir, file_format="array_record")
  if not builder.is_prepared():
    tfds.display_progress_bar(False)
    with contextlib.redirect_stdout(sys.stderr):  # TFDS's chatter; stdout is the benchmark's table
      builder.download_and_prepare(
          download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  return f"{SyntheticImages.name}/{config}"
