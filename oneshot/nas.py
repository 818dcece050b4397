"""Choice points in your own Flax module: the search space is read from the module itself.

    class SmallCNN(nn.Module):
      @nn.compact
      def __call__(self, x, train: bool = True):
        x = nas.Choice("kernel", {3: nn.Conv(16, (3, 3)), 5: nn.Conv(16, (5, 5))})(x)
        ...

A `Choice` is NNI's `LayerChoice` / PyGlove's `one_of` for Flax: one named decision whose choices are
candidate modules or plain functions of the same inputs. The module itself stays ordinary Flax code;
what a `Choice` does depends on how the module is being run (PyGlove's dynamic evaluation idea):

* **recording** (`decisions`): every candidate runs once, abstractly (`jax.eval_shape`), and each choice
  point becomes a `spaces.Decision`, in call order. A choice inside a candidate is recorded as active only
  while that candidate is chosen (`Decision.active_if`). Two choice points with the same label are one
  decision (their choices are tied).
* **supernet** (`supernet_path`): the DNA is a traced int32 array (or choice weights, for the gradient
  controllers: see oneshot.models.choices); `switch` runs only the chosen candidate
  (`flax.linen.switch`, which carries variables through `lax.switch`), `mask` runs every candidate and
  keeps the chosen one by a one-hot sum. At init every candidate runs, so all their variables exist.
* **child** (`FixedArchitecture`): each label has one fixed choice and only that candidate is built and
  called: plain Flax, no supernet code on the forward path. Candidates carry the same names in both
  (they are constructed in both; Flax names a module when it is constructed), so a child's variables
  are a subset of the supernet's, which is what `oneshot export` slices out.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import importlib
import inspect
import json
from typing import Any, Callable, Iterator, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from oneshot import trust
from oneshot.errors import UserError
from oneshot.spaces.core import Decision
from oneshot.models import choices

_MODE: contextvars.ContextVar[Any] = contextvars.ContextVar("oneshot_nas_mode", default=None)


class Choice(nn.Module):
  """One decision named `label`: applies one of `candidates` (a dict {choice value: candidate} or a
  list, whose choices are then 0..n-1) to the call's arguments. Candidates are Flax modules or
  functions; every candidate must return the same shape."""

  label: str
  candidates: Any

  def _choices(self) -> tuple[list[Any], list[Any]]:
    if isinstance(self.candidates, Mapping):
      return list(self.candidates.keys()), list(self.candidates.values())
    if isinstance(self.candidates, Sequence) and not isinstance(self.candidates, str):
      return list(range(len(self.candidates))), list(self.candidates)
    raise UserError(f"nas.Choice({self.label!r}): candidates must be a dict {{choice: module or "
                    f"function}} or a list; got {type(self.candidates).__name__}")

  def __call__(self, *args: Any) -> Any:
    mode = _MODE.get()
    values, candidates = self._choices()
    if not values:
      raise UserError(f"nas.Choice({self.label!r}) has no candidates; give at least one")
    if mode is None:
      raise UserError(f"nas.Choice({self.label!r}) ran outside oneshot: apply the module through "
                      "nas.FixedArchitecture(module, architecture) or search it with api.search(..., "
                      "model=module)")
    if isinstance(mode, _Fixed):
      return _call(candidates[mode.index(self.label, values)], args)
    if self.is_initializing():  # every candidate creates its variables (and shows its nested choices)
      mode.enter(self.label, values)
      outputs = []
      for value, candidate in zip(values, candidates):
        with mode.inside(self.label, value):
          outputs.append(_call(candidate, args))
      shapes = {repr(v): jax.tree.map(jnp.shape, o) for v, o in zip(values, outputs)}
      if len({str(s) for s in shapes.values()}) > 1:
        raise UserError(f"nas.Choice({self.label!r}): candidates return different shapes {shapes}; "
                        "every candidate of a choice must return the same shape")
      return outputs[0]
    index, weights, gate = mode.pick(self.label, len(candidates))
    keys = list(self.candidates.keys()) if isinstance(self.candidates, Mapping) else None

    def branch(i: int) -> Callable:
      if not isinstance(candidates[i], nn.Module):
        return lambda _, *a: _call(candidates[i], a)
      # Reach the candidate through the lifted module `m`, so its variables go through the switch.
      return lambda m, *a: _call(m.candidates[keys[i] if keys else i], a)

    if mode.executor == "mask":
      outputs = [_call(c, args) for c in candidates]
      return jax.tree.map(lambda *o: sum(weights[i].astype(x.dtype) * x for i, x in enumerate(o)),
                          *outputs)
    out = nn.switch(index, [branch(i) for i in range(len(candidates))], self, *args)
    return jax.tree.map(lambda x: choices.gated(x, gate), out)


def _call(candidate: Any, args: tuple) -> Any:
  return candidate(*args)


class _Recorder:
  """Recording mode: collects decisions (label, choices, the choice that must be active) in order."""

  executor = "mask"

  def __init__(self):
    self.decisions: dict[str, Decision] = {}
    self.parents: dict[str, set] = {}
    self.stack: list[tuple[str, Any]] = []

  def enter(self, label: str, values: list[Any]) -> None:
    for v in values:
      try:
        json.dumps(v)
      except TypeError:
        raise UserError(f"nas.Choice({label!r}): choice {v!r} is not a string or number; use "
                        "dict keys like 'conv3x3' or 3") from None
    old = self.decisions.get(label)
    if old is not None and list(old.choices) != values:
      raise UserError(f"two nas.Choice points are labelled {label!r} with different choices "
                      f"({list(old.choices)} and {values}); rename one, or give both the same choices "
                      "to tie them")
    self.parents.setdefault(label, set()).add(self.stack[-1] if self.stack else None)
    parents = self.parents[label]
    parent = next(iter(parents)) if len(parents) == 1 else None
    self.decisions[label] = Decision(label, tuple(values),
                                     None if parent is None else (parent[0], (parent[1],)))

  @contextlib.contextmanager
  def inside(self, label: str, value: Any) -> Iterator[None]:
    self.stack.append((label, value))
    try:
      yield
    finally:
      self.stack.pop()



class _Path:
  """Supernet mode: choices read from a traced DNA (indices [D] or choice weights [D, K])."""

  def __init__(self, names: Sequence[str], dna: jax.Array, executor: str):
    self.positions = {name: i for i, name in enumerate(names)}
    self.dna, self.executor = dna, executor

  def enter(self, label: str, values: list[Any]) -> None:
    del values
    self._position(label)

  @contextlib.contextmanager
  def inside(self, label: str, value: Any) -> Iterator[None]:
    del label, value
    yield

  def _position(self, label: str) -> int:
    if label not in self.positions:
      raise UserError(f"nas.Choice({label!r}) is not in the searched space ({sorted(self.positions)}); "
                      "the module changed since the search: use the module the search ran on")
    return self.positions[label]

  def pick(self, label: str, num_choices: int) -> tuple:
    return choices.pick(self.dna, self._position(label), num_choices)


class _Fixed:
  """Child mode: one choice value per label."""

  def __init__(self, architecture: Mapping[str, Any]):
    self.architecture = dict(architecture)

  def index(self, label: str, values: list[Any]) -> int:
    if label not in self.architecture:
      raise UserError(f"the architecture has no choice for nas.Choice({label!r}); it names "
                      f"{sorted(self.architecture)}: the module changed since the search")
    return Decision(label, tuple(values)).index(self.architecture[label])


@contextlib.contextmanager
def _using(mode: Any) -> Iterator[None]:
  token = _MODE.set(mode)
  try:
    yield
  finally:
    _MODE.reset(token)


def supernet_path(names: Sequence[str], dna: jax.Array, executor: str):
  """While inside, every `Choice` follows `dna` (one index per decision in `names`' order)."""
  if executor not in ("switch", "mask"):
    raise ValueError(f"unknown executor {executor!r}")
  return _using(_Path(names, dna, executor))


def call_kwargs(module: nn.Module, train: bool) -> dict:
  """`train=` for modules whose __call__ takes it (BatchNorm, dropout); nothing for those that don't."""
  return {"train": train} if "train" in inspect.signature(type(module).__call__).parameters else {}


def decisions(module: nn.Module, input_shape: Sequence[int]) -> tuple[Decision, ...]:
  """The module's choice points as decisions, found by tracing its init once (no compile, no FLOPs)."""
  recorder = _Recorder()
  x = jax.ShapeDtypeStruct((1,) + tuple(int(d) for d in input_shape), jnp.float32)
  with _using(recorder):
    jax.eval_shape(lambda x: module.init(jax.random.PRNGKey(0), x, **call_kwargs(module, True)), x)
  if not recorder.decisions:
    raise UserError(f"{type(module).__name__} has no nas.Choice; mark at least one choice point")
  return tuple(recorder.decisions.values())


class FixedArchitecture(nn.Module):
  """The child network: `net` with every `Choice` fixed by `architecture` ({label: choice value}).

  Its variables are `net`'s own (shared scope), so it loads an export's checkpoint directly and can be
  used anywhere a Flax module can: `FixedArchitecture(net, arch).apply(variables, x, train=False)`."""

  net: nn.Module
  architecture: Mapping[str, Any]

  def setup(self):
    nn.share_scope(self, self.net)

  def __call__(self, x: jax.Array, train: bool = True) -> jax.Array:
    with _using(_Fixed(self.architecture)):
      return self.net(x, **call_kwargs(self.net, train))


# -- naming a module so another process (the CLI, `load`) can rebuild it ---------------------------------
SERVED: dict[str, nn.Module] = {}   # import path -> the module instance a Python caller handed us


def describe(module: nn.Module) -> dict:
  """{'module': 'package.file:Class', 'kwargs': {field: value}}: how to rebuild `module`."""
  if not isinstance(module, nn.Module):
    raise UserError(f"model= must be a flax.linen Module instance (e.g. SmallCNN()); got "
                    f"{type(module).__name__}")
  kwargs = {f.name: getattr(module, f.name) for f in dataclasses.fields(module)
            if f.name not in ("parent", "name") and f.init}
  try:
    kwargs = json.loads(json.dumps(kwargs))
  except TypeError:
    kwargs = None   # not rebuildable from JSON; only the instance handed to the Python API works
  return {"module": f"{type(module).__module__}:{type(module).__qualname__}", "kwargs": kwargs}


@contextlib.contextmanager
def serving(module: nn.Module | None) -> Iterator[dict | None]:
  """While inside, `resolve` answers the module's import path with this instance; yields the `space`
  config section that names it (None, and nothing served, when `module` is None)."""
  if module is None:
    yield None
    return
  section = {"name": "module", **describe(module)}
  SERVED[section["module"]] = module
  try:
    yield section
  finally:
    SERVED.pop(section["module"], None)


def resolve(path: str, kwargs: Mapping[str, Any] | None) -> nn.Module:
  """The module named `path` ('package.file:Class'): the served instance, else imported and built from
  `kwargs`. The name must be well formed and trusted (oneshot.trust) before anything is imported, and
  only flax.linen Module classes are built, so a JSON file can neither run a module's code nor make us
  call anything else."""
  if isinstance(path, str) and path in SERVED:
    return SERVED[path]
  module_name, qualname = trust.split_class_path(path)
  where = (f"pass it from Python (model= in oneshot.api), or put {module_name} on PYTHONPATH")
  if module_name == "__main__":
    raise UserError(f"cannot import the search space module {path!r}: it was defined in a script; {where}")
  trust.require_trusted(path)
  try:
    obj: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
      obj = getattr(obj, part)
  except (ImportError, AttributeError) as e:
    raise UserError(f"cannot import the search space module {path!r} ({e}); {where}") from None
  if not (isinstance(obj, type) and issubclass(obj, nn.Module)):
    raise UserError(f"{path!r} is not a flax.linen Module class; name your model class")
  if kwargs is None:
    raise UserError(f"{path!r} was searched with fields that are not JSON; {where.split(', or')[0]}")
  if not isinstance(kwargs, Mapping) or not all(isinstance(k, str) for k in kwargs):
    raise UserError(f"the fields of {path!r} must be a JSON object of field: value; got {kwargs!r}")
  try:
    return obj(**kwargs)
  except TypeError as e:
    raise UserError(f"cannot build {path!r} from its fields {dict(kwargs)} ({e}); give the fields the "
                    "class takes") from None
