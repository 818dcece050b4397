"""From raw images to class probabilities: an export's preprocessing, its Flax predictor, and the
serialized artifact (`model.jax_export`) that runs with jax alone.

Preprocessing is data.py's normalisation, recorded in architecture.json (`preprocessing`) so that nobody
has to read the data code to feed the model. Images go in as the dataset stores them: `input_dtype`
(uint8 for image datasets) with values 0..`scale` (255 for 8-bit images; 16 for scikit-learn's digits,
which keep their 0..16 values). Per channel, x = (float32(image) - offset) * multiplier with
offset = float32(mean * scale) and multiplier = float32(1 / (std * scale)), both computed in float64
from the recorded `mean` and `std` (in [0, 1] units): the very float32 constants data.py applies, so the
child sees the numbers it was trained and scored on. `class_names` are the dataset's label names (TFDS
ClassLabel names; for numpy arrays handed to the API, the class indices as strings).

The artifact is `jax.export` of preprocessing + the child in eval mode + softmax, with the variables
baked in as constants and a symbolic batch dimension: uint8[b, H, W, C] -> float32[b, classes]. It is
lowered for cpu, cuda and tpu at once (jax.export lowers for platforms other than the one it runs on;
the caller's platform picks its lowering when called) and loads with jax and numpy alone:

    import jax, numpy as np
    with open("EXPORT/model.jax_export", "rb") as f:
      exported = jax.export.deserialize(bytearray(f.read()))
    probabilities = np.asarray(exported.call(images))  # images: uint8 [n, H, W, C]

In the artifact the depthwise convolutions are XLA's grouped convolution, whatever the platform: the
CPU `shift` op (oneshot/models/ops.py) sizes its loop by the batch size, which a symbolic batch does not
have. The two compute the same sums (the loaded Flax model and the artifact agree to float rounding).
This module imports jax and numpy only; oneshot/child.py builds the model it is handed.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np

from oneshot.errors import UserError

ARTIFACT_FILE = "model.jax_export"
PLATFORMS = ("cpu", "cuda", "tpu")
INPUT_DTYPES = ("uint8", "float32")


@dataclasses.dataclass(frozen=True)
class Preprocessing:
  """What architecture.json's `preprocessing` records (see the module docstring)."""
  input_dtype: str
  scale: float
  mean: tuple[float, ...]
  std: tuple[float, ...]
  height: int
  width: int
  channels: int
  class_names: tuple[str, ...]

  @property
  def offset(self) -> np.ndarray:
    return (np.asarray(self.mean, np.float64) * self.scale).astype(np.float32)

  @property
  def multiplier(self) -> np.ndarray:
    return (1.0 / (np.asarray(self.std, np.float64) * self.scale)).astype(np.float32)

  def to_json(self) -> dict:
    return {"input_dtype": self.input_dtype, "scale": float(self.scale),
            "mean": [float(m) for m in self.mean], "std": [float(s) for s in self.std],
            "height": int(self.height), "width": int(self.width), "channels": int(self.channels),
            "class_names": list(self.class_names),
            "rule": "x = (float32(image) - float32(mean * scale)) * float32(1 / (std * scale)), "
                    "per channel; image values 0..scale"}

  @classmethod
  def from_json(cls, section: Any, num_classes: int) -> "Preprocessing":
    """The checked section; ValueError naming the first bad field."""
    if not isinstance(section, dict):
      raise ValueError(f"it is a JSON {type(section).__name__}, not an object")
    number = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)  # noqa: E731
    size = lambda v: type(v) is int and v >= 1  # noqa: E731
    channels = section.get("channels")
    per_channel = lambda v: (isinstance(v, list) and len(v) == channels  # noqa: E731
                             and all(number(x) for x in v))
    checks = {
        "input_dtype": lambda v: v in INPUT_DTYPES,
        "scale": lambda v: number(v) and v > 0,
        "height": size, "width": size, "channels": size,
        "mean": per_channel,
        "std": lambda v: per_channel(v) and all(x > 0 for x in v),
        "class_names": lambda v: (isinstance(v, list) and len(v) == num_classes
                                  and all(isinstance(n, str) for n in v)),
    }
    for key, ok in checks.items():
      if key not in section:
        raise ValueError(f"{key!r} is missing")
      if not ok(section[key]):
        raise ValueError(f"{key!r} is {_short(section[key])}")
    return cls(input_dtype=section["input_dtype"], scale=float(section["scale"]),
               mean=tuple(float(m) for m in section["mean"]),
               std=tuple(float(s) for s in section["std"]), height=section["height"],
               width=section["width"], channels=section["channels"],
               class_names=tuple(section["class_names"]))

  @property
  def shape(self) -> tuple[int, int, int]:
    return (self.height, self.width, self.channels)

  def describe(self) -> str:
    """The input the model takes, in words: for error lines and the model card."""
    values = f"values 0..{self.scale:g}" if self.input_dtype == "uint8" else "float values"
    return f"{self.input_dtype} [n, {self.height}, {self.width}, {self.channels}], {values}"

  def check(self, images: Any, what: str = "images") -> np.ndarray:
    """`images` as the model's input array [n, H, W, C] (grayscale [n, H, W] gains its channel), or a
    one-line UserError naming what is wrong: shape, channel count or dtype."""
    array = np.asarray(images)
    if array.ndim == 3 and self.channels == 1:
      array = array[..., None]
    if array.ndim != 4 or array.shape[1:3] != (self.height, self.width) or not len(array):
      raise UserError(f"{what}: shape {array.shape}, the model takes {self.describe()}")
    if array.shape[3] != self.channels:
      raise UserError(f"{what}: {array.shape[3]} channels, the model takes {self.channels} "
                      f"({self.describe()})")
    if self.input_dtype == "uint8":
      if array.dtype != np.uint8:
        raise UserError(f"{what}: dtype {array.dtype}, the model takes {self.describe()} (as the "
                        "dataset stores them)")
    elif not np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.complexfloating):
      raise UserError(f"{what}: dtype {array.dtype}, the model takes {self.describe()}")
    return np.ascontiguousarray(array.astype(np.dtype(self.input_dtype), copy=False))

  def apply(self, images: Any) -> Any:
    """data.py's normalisation: float32 [n, H, W, C] from checked input (numpy or jax arrays)."""
    return (images.astype(np.float32) - self.offset) * self.multiplier


def portable(model: Any) -> Any:
  """The same network with the depthwise op every platform lowers at any batch size (see above)."""
  if getattr(model, "depthwise_impl", "xla") != "xla":
    return model.clone(depthwise_impl="xla")
  return model


def probabilities_function(model: Any, preprocessing: Preprocessing):
  """(variables, images (input dtype) [n, H, W, C]) -> float32 probabilities [n, classes], the child
  in eval mode."""
  import jax  # pylint: disable=import-outside-toplevel

  def probabilities(variables, images):
    logits = model.apply(variables, preprocessing.apply(images), train=False)
    return jax.nn.softmax(logits.astype(np.float32), axis=-1)

  return probabilities


def serialize(model: Any, variables: dict, preprocessing: Preprocessing,
              platforms: Sequence[str] = PLATFORMS) -> bytes:
  """The artifact's bytes (see the module docstring). Raises what jax.export raises when the model
  cannot be lowered with a symbolic batch (a module of your own may do shape arithmetic that needs a
  number) or for a platform."""
  # pylint: disable=import-outside-toplevel
  import jax
  from jax import export as jax_export
  probabilities = probabilities_function(portable(model), preprocessing)
  constants = jax.device_get(variables)
  fn = lambda images: probabilities(constants, images)  # noqa: E731  # baked in: the file is whole
  batch, = jax_export.symbolic_shape("batch")
  spec = jax.ShapeDtypeStruct((batch,) + preprocessing.shape, np.dtype(preprocessing.input_dtype))
  exported = jax_export.export(jax.jit(fn), platforms=tuple(platforms))(spec)
  return bytes(exported.serialize())


class Artifact:
  """A deserialized `model.jax_export`: `probabilities(images)` with images already checked."""

  def __init__(self, data: bytes):
    from jax import export as jax_export  # pylint: disable=import-outside-toplevel
    self.exported = jax_export.deserialize(bytearray(data))

  def probabilities(self, images: np.ndarray) -> np.ndarray:
    return np.asarray(self.exported.call(images))


class Predictor:
  """An exported child ready for raw images: `predict(images)` -> probabilities [n, classes].

  Also unpacks as `(model, variables)`, what `load` returned before: `model.apply(variables, x,
  train=False)` on normalised images gives logits.
  """

  def __init__(self, model: Any, variables: dict, preprocessing: Preprocessing | None,
               record: dict, directory: str):
    self.model, self.variables, self.record, self.directory = model, variables, record, directory
    self.preprocessing = preprocessing
    self._fn = None

  def __iter__(self):
    return iter((self.model, self.variables))

  @property
  def class_names(self) -> tuple[str, ...]:
    return self._require().class_names

  def _require(self) -> Preprocessing:
    if self.preprocessing is None:
      raise UserError(f"{self.directory} was exported before preprocessing was recorded (format "
                      f"{self.record.get('format_version')}); re-run `oneshot export` to predict")
    return self.preprocessing

  def predict(self, images: Any) -> np.ndarray:
    """float32 probabilities [n, classes] for raw images [n, H, W, C] (see `Preprocessing`)."""
    import jax  # pylint: disable=import-outside-toplevel
    prep = self._require()
    array = prep.check(images)
    if self._fn is None:
      self._fn = jax.jit(probabilities_function(self.model, prep))
    return np.asarray(self._fn(self.variables, array))

  def top(self, images: Any) -> list[tuple[int, str, float]]:
    """(class index, class name, probability) of the most probable class, per image."""
    probabilities = self.predict(images)
    return top_classes(probabilities, self.class_names)


def top_classes(probabilities: np.ndarray, names: Sequence[str]) -> list[tuple[int, str, float]]:
  best = probabilities.argmax(-1)
  return [(int(i), names[int(i)], float(p[int(i)])) for i, p in zip(best, probabilities)]


def _short(value: Any) -> str:
  text = repr(value)
  return text if len(text) <= 60 else text[:57] + "..."
