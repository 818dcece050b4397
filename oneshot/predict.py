"""`oneshot predict --arch DIR --images PATH`: the most probable class of each image, and its probability.

PATH is a `.npy` array of images [n, H, W, C] ([n, H, W] for one channel) or a folder of PNG/JPEG
files, read in sorted name order and decoded by Pillow (which matplotlib, a dependency, already
brings). Images are taken as the dataset stores them, as the export's architecture.json records
(`preprocessing`: dtype, values 0..scale, height, width, channels): nothing is resized or converted
(a palette image is expanded to RGB), so a mismatch is one line naming the file and what differs, never
a silent guess. Every image is read and checked before anything runs or is written.

The serialized artifact (`model.jax_export`) runs when the export has one: neither Flax nor the model
code is needed. An export without it (a module of your own that could not be lowered) loads its
checkpoint instead. `--out FILE` writes the predictions as JSON instead of printing them.
"""

from __future__ import annotations

import os
import sys
from typing import Sequence

import numpy as np
from absl import flags

from oneshot import child, configuration, serving, storage
from oneshot.errors import UserError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
ARTIFACT = serving.ARTIFACT_FILE


def main(argv: Sequence[str]) -> int:
  def define(fv):
    flags.DEFINE_string("arch", None, "An export directory (oneshot export --out).", flag_values=fv)
    flags.DEFINE_string("images", None, "A .npy file of images [n, H, W(, C)] or a folder of "
                        "PNG/JPEG files.", flag_values=fv)
    flags.DEFINE_string("out", None, "Write the predictions to this JSON file (replaced if it "
                        "exists) instead of printing them.", flag_values=fv)
  args = configuration.parse_flags(argv, define, command="predict", with_config=False,
                                   required=("arch", "images"))
  if args.out:
    storage.check_output_file(os.path.expanduser(args.out), "--out", "preds.json")
  result = predict(args.arch, args.images)
  if args.out:
    storage.write_json(os.path.expanduser(args.out), result)
    print(f"wrote {len(result['predictions'])} predictions to {args.out}")
  else:
    for p in result["predictions"]:
      print(f"{p['image']}\t{p['label']}\t{p['probability']:.4f}")
  return 0


def predict(arch: str, images: str) -> dict:
  """{"arch", "runner" (artifact | checkpoint), "predictions": [{image, class, label, probability}]}."""
  record = child.read_architecture(arch)
  if "preprocessing" not in record:
    raise UserError(f"{arch} records no input preprocessing (export format "
                    f"{record['format_version']}); re-run `oneshot export` to predict with it")
  prep = serving.Preprocessing.from_json(record["preprocessing"], record["num_classes"])
  names, array = read_images(images, prep)
  artifact = storage.as_path(arch) / ARTIFACT if record.get("artifact") else None
  if artifact is not None and artifact.exists():
    try:
      runner = serving.Artifact(artifact.read_bytes())
    except Exception as e:  # pylint: disable=broad-except  # a damaged file fails in many ways
      raise UserError(f"cannot read {artifact} ({type(e).__name__}: {storage.first_line(e)[:120]}); "
                      "re-run `oneshot export`") from None
    probabilities, how = runner.probabilities(array), "artifact"
  else:
    probabilities, how = child.load_predictor(arch).predict(array), "checkpoint"
  top = serving.top_classes(probabilities, prep.class_names)
  return {"arch": os.fspath(storage.as_path(arch)), "runner": how,
          "predictions": [{"image": name, "class": i, "label": label, "probability": p}
                          for name, (i, label, p) in zip(names, top)]}


def read_images(path: str, prep: serving.Preprocessing) -> tuple[list[str], np.ndarray]:
  """(names, images [n, H, W, C] checked against `prep`) from a .npy file or a folder of images."""
  local = os.path.expanduser(path)
  if os.path.isdir(local):
    files = sorted(f for f in os.listdir(local) if f.lower().endswith(IMAGE_SUFFIXES))
    if not files:
      raise UserError(f"--images {path} holds no {'/'.join(IMAGE_SUFFIXES)} files; give a folder "
                      "of images or a .npy file")
    if prep.input_dtype != "uint8":
      raise UserError(f"--images {path}: image files are 8-bit, the model takes {prep.describe()}; "
                      "give a .npy file of such arrays")
    arrays = [_decode(os.path.join(local, f), prep) for f in files]
    return files, np.stack(arrays)
  if not local.endswith(".npy"):
    raise UserError(f"--images {path} is neither a folder of PNG/JPEG files nor a .npy file")
  if not os.path.isfile(local):
    raise UserError(f"--images {path} not found; give a .npy file or a folder of PNG/JPEG files")
  try:
    array = np.load(local, allow_pickle=False)
  except (OSError, ValueError, EOFError) as e:
    raise UserError(f"cannot read --images {path} ({storage.first_line(e)[:120]}); give a .npy file "
                    "saved with numpy.save") from None
  array = prep.check(array, f"--images {path}")
  base = os.path.basename(local)
  return [f"{base}[{i}]" for i in range(len(array))], array


def _decode(file: str, prep: serving.Preprocessing) -> np.ndarray:
  """One image file as [H, W, C] in the model's dtype, or one line saying why not."""
  # pylint: disable=import-outside-toplevel  # Pillow only when files are read
  from PIL import Image
  try:
    with Image.open(file) as image:
      image.load()
      if image.mode == "P":  # palette indices are not pixel values
        image = image.convert("RGB")
      array = np.asarray(image)
  except (OSError, ValueError, Image.DecompressionBombError) as e:  # UnidentifiedImageError: OSError
    raise UserError(f"cannot read image {file} ({storage.first_line(e)[:120]}); give PNG or JPEG "
                    "files") from None
  array = array[..., None] if array.ndim == 2 else array
  if array.shape[:2] != (prep.height, prep.width):
    raise UserError(f"image {file} is {array.shape[0]}x{array.shape[1]} pixels, the model takes "
                    f"{prep.height}x{prep.width} ({prep.describe()})")
  return prep.check(array[None], f"image {file}")[0]


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
