"""Search spaces as data: an ordered list of named decisions, each with its choices.

Architectures and accelerator configurations are both spaces, so the supernet, the controllers, the cost
model, checkpoints and JSON output all read the same structure and never special-case either. A point in a
space is a DNA: one choice index per decision, a tuple of ints that is hashable, JSON-able and can be stacked
into an int32 array for a batch of paths.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from oneshot.errors import UserError

DNA = tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class Decision:
  """One named choice point; `choices` are the values (ints, floats, strings or bools) it can take.

  `active_if` = (other decision's name, its values) makes the decision conditional: it changes the
  network only while that decision takes one of those values (a dropped block's kernel size does not
  matter). Controllers use it to leave such choices out of a sample's log-probability (TuNAS's
  hierarchical sampling), so they are not credited or blamed for choices that did nothing.
  """

  name: str
  choices: tuple[Any, ...]
  active_if: tuple[str, tuple[Any, ...]] | None = None

  def __post_init__(self):
    object.__setattr__(self, "choices", tuple(self.choices))
    if not self.choices:
      raise ValueError(f"decision {self.name!r} has no choices")

  @property
  def num_choices(self) -> int:
    return len(self.choices)

  def index(self, value: Any) -> int:
    """The choice index of `value`; tolerant of JSON round trips (3 vs 3.0, "True" vs True)."""
    for i, choice in enumerate(self.choices):
      if value == choice or str(value) == str(choice):
        return i
    raise UserError(f"decision {self.name!r} has no choice {value!r}; "
                    f"use one of {list(self.choices)}")


@dataclasses.dataclass(frozen=True)
class Space:
  """An ordered list of decisions, plus the fixed skeleton that builders (supernet, cost model) need.

  Subclasses may give a richer string format (NAS-Bench-201's `|op~0|+...`) by overriding
  `format` and `_parse_custom`; everything else is generic.
  """

  name: str
  decisions: tuple[Decision, ...]
  skeleton: Mapping[str, Any] = dataclasses.field(default_factory=dict, compare=False, hash=False)
  constraint: Callable[[dict[str, Any]], str | None] | None = dataclasses.field(
      default=None, compare=False, hash=False)

  def __post_init__(self):
    object.__setattr__(self, "decisions", tuple(self.decisions))
    names = [d.name for d in self.decisions]
    if len(set(names)) != len(names):
      raise ValueError(f"space {self.name!r} has duplicate decision names")
    for d in self.decisions:
      if d.active_if is not None and d.active_if[0] not in names:
        raise ValueError(f"decision {d.name!r} depends on unknown decision {d.active_if[0]!r}")

  # -- shape -------------------------------------------------------------------------------------------
  @property
  def names(self) -> list[str]:
    return [d.name for d in self.decisions]

  @property
  def num_decisions(self) -> int:
    return len(self.decisions)

  @property
  def num_choices(self) -> np.ndarray:
    return np.array([d.num_choices for d in self.decisions], np.int32)

  @property
  def max_choices(self) -> int:
    return int(self.num_choices.max())

  @property
  def size(self) -> int:
    """Number of distinct points (before any constraint)."""
    return math.prod(d.num_choices for d in self.decisions)

  def active(self, dnas: Any) -> np.ndarray:
    """[N, D] bool: whether each decision of each DNA row matters (see `Decision.active_if`)."""
    dnas = np.asarray(dnas)
    out = np.ones(dnas.shape, bool)
    for j, d in enumerate(self.decisions):
      if d.active_if is not None:
        parent, values = d.active_if
        p = self.names.index(parent)
        allowed = [self.decisions[p].index(v) for v in values]
        out[..., j] = np.isin(dnas[..., p], allowed)
    return out

  def canonical(self, dnas: Any) -> np.ndarray:
    """`dnas` with every inactive decision set to choice 0: DNAs that build the same network (a
    dropped block's kernel size differs) become equal, so candidate lists and samples can be
    deduplicated by the network rather than by the DNA."""
    dnas = np.asarray(dnas)
    return np.where(self.active(dnas), dnas, 0).astype(dnas.dtype)

  def choice_mask(self) -> np.ndarray:
    """[num_decisions, max_choices] bool: which padded logit slots are real choices."""
    return np.arange(self.max_choices)[None, :] < self.num_choices[:, None]

  # -- validation and conversion -----------------------------------------------------------------------
  def validate(self, dna: Iterable[Any]) -> DNA:
    """Returns the DNA as a tuple of ints, or raises UserError naming the first bad entry."""
    try:
      if not isinstance(dna, np.ndarray):
        dna = list(dna)
      dna = tuple(int(i) for i in np.asarray(dna).reshape(-1))
    except (TypeError, ValueError):
      raise UserError(f"a DNA for space {self.name!r} is a list of {self.num_decisions} choice "
                      f"indices; got {dna!r}") from None
    if len(dna) != self.num_decisions:
      raise UserError(f"DNA has {len(dna)} entries but space {self.name!r} has "
                      f"{self.num_decisions} decisions ({', '.join(self.names)})")
    for i, (d, c) in enumerate(zip(self.decisions, dna)):
      if not 0 <= c < d.num_choices:
        raise UserError(f"DNA entry {i} ({d.name}) is {c}; it must be in 0..{d.num_choices - 1} "
                        f"for choices {list(d.choices)}")
    if self.constraint is not None:
      reason = self.constraint(self.to_values(dna, validate=False))
      if reason:
        raise UserError(f"{self.name} point {self.to_values(dna, validate=False)} is not allowed: "
                        f"{reason}")
    return dna

  def validate_batch(self, dnas: Any) -> np.ndarray:
    """[N, D] integer DNAs (one DNA may be given as [D]) with every entry in range; vectorised, for
    the cost model's 1e5-point batches. Constraints are not checked here (see `is_valid`)."""
    dnas = np.asarray(dnas)
    if dnas.ndim == 1:
      dnas = dnas[None]
    if dnas.ndim != 2 or dnas.shape[1] != self.num_decisions:
      raise UserError(f"DNAs for space {self.name!r} must be [N, {self.num_decisions}] "
                      f"({', '.join(self.names)}); got shape {dnas.shape}")
    if not np.issubdtype(dnas.dtype, np.integer):
      raise UserError(f"DNAs must be integer choice indices; got dtype {dnas.dtype}")
    bad = (dnas < 0) | (dnas >= self.num_choices[None, :])
    if bad.any():
      i, j = np.argwhere(bad)[0]
      raise UserError(f"DNA {i} entry {j} ({self.names[j]}) is {dnas[i, j]}; it must be in "
                      f"0..{self.num_choices[j] - 1}")
    return dnas

  def is_valid(self, dna: Iterable[Any]) -> bool:
    try:
      self.validate(dna)
      return True
    except UserError:
      return False

  def to_values(self, dna: Iterable[Any], validate: bool = True) -> dict[str, Any]:
    dna = self.validate(dna) if validate else tuple(dna)
    return {d.name: _plain(d.choices[c]) for d, c in zip(self.decisions, dna)}

  def from_values(self, values: Mapping[str, Any]) -> DNA:
    missing = [n for n in self.names if n not in values]
    extra = [k for k in values if k not in self.names]
    if missing or extra:
      raise UserError(f"architecture for space {self.name!r} must name exactly its decisions; "
                      f"missing {missing}, unknown {extra}")
    return self.validate(d.index(values[d.name]) for d in self.decisions)

  def to_json(self, dna: Iterable[Any]) -> dict[str, Any]:
    dna = self.validate(dna)
    return {"space": self.name, "dna": list(dna), "architecture": self.to_values(dna),
            "string": self.format(dna)}

  def from_json(self, obj: Mapping[str, Any] | str) -> DNA:
    if isinstance(obj, str):
      obj = json.loads(obj)
    if obj.get("space", self.name) != self.name:
      raise UserError(f"JSON is for space {obj.get('space')!r}, not {self.name!r}")
    if "dna" in obj:
      return self.validate(obj["dna"])
    return self.from_values(obj["architecture"])

  def format(self, dna: Iterable[Any]) -> str:
    """Compact text form; the default is the comma-separated DNA, as the CLI's --dna takes."""
    return ",".join(str(i) for i in self.validate(dna))

  def parse(self, text: str) -> DNA:
    """Reads `0,2,1,...` or the space's own string format; errors name the fix."""
    text = text.strip()
    custom = self._parse_custom(text)
    if custom is not None:
      return self.validate(custom)
    parts = [p for p in text.replace(" ", ",").split(",") if p]
    if not parts or not all(p.lstrip("-").isdigit() for p in parts):
      raise UserError(f"cannot read {text!r} as a DNA of space {self.name!r}: give "
                      f"{self.num_decisions} comma-separated choice indices, e.g. "
                      f"{self.format([0] * self.num_decisions)!r}")
    return self.validate(int(p) for p in parts)

  def _parse_custom(self, text: str) -> Sequence[int] | None:
    del text
    return None

  # -- sampling and neighbourhoods ---------------------------------------------------------------------
  def sample(self, rng: np.random.Generator, num: int | None = None) -> DNA | np.ndarray:
    """Uniform over decisions (rejection-sampled under a constraint)."""
    n = 1 if num is None else num
    out = np.zeros((n, self.num_decisions), np.int32)
    for row in range(n):
      for _ in range(10_000):
        dna = tuple(int(rng.integers(k)) for k in self.num_choices)
        if self.constraint is None or self.is_valid(dna):
          break
      else:
        raise UserError(f"space {self.name!r}: no valid point found in 10000 samples; "
                        "loosen its constraints")
      out[row] = dna
    return tuple(int(i) for i in out[0]) if num is None else out

  def mutate(self, dna: Iterable[Any], rng: np.random.Generator) -> DNA:
    """Changes one decision that has more than one choice to a different value (AmoebaNet)."""
    dna = list(self.validate(dna))
    free = [i for i, d in enumerate(self.decisions) if d.num_choices > 1]
    if not free:
      return tuple(dna)
    for _ in range(1000):
      i = free[int(rng.integers(len(free)))]
      new = list(dna)
      new[i] = (dna[i] + 1 + int(rng.integers(self.decisions[i].num_choices - 1))) % \
          self.decisions[i].num_choices
      if self.constraint is None or self.is_valid(new):
        return tuple(new)
    return tuple(dna)

  def enumerate(self, limit: int = 1_000_000) -> np.ndarray:
    """Every DNA, for small spaces (NAS-Bench-201's 15,625), as an int32 array."""
    if self.size > limit:
      raise UserError(f"space {self.name!r} has {self.size} points, too many to enumerate "
                      f"(limit {limit})")
    grids = np.meshgrid(*[np.arange(k) for k in self.num_choices], indexing="ij")
    return np.stack([g.reshape(-1) for g in grids], axis=1).astype(np.int32)


def _plain(value: Any) -> Any:
  """JSON-friendly scalar."""
  if isinstance(value, np.generic):
    return value.item()
  return value
