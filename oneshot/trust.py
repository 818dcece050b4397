"""Which Python modules oneshot may import because a file named them.

A module space is named as 'package.file:Class' in the config, and that name travels into every file
the run writes (config.json, an export's architecture.json). Importing a module runs its top-level code,
so a name read from a file someone handed over must not be imported on the file's say-so: a module is
imported only when the user named it themselves, as

* `model=` in Python (served, never imported: see `oneshot.nas.serving`),
* `space.module` of the config they passed (`--config FILE`, or the config given to `api.search`),
* `--trust-module NAME` on the command line, or `trust=` in `oneshot.api`.

Trusting `pkg` trusts its submodules too (importing `pkg.mod` runs `pkg`'s `__init__` anyway). Names are
checked against a plain dotted-identifier pattern before anything else happens to them.
"""

from __future__ import annotations

import contextlib
import contextvars
import re
from typing import Iterable, Iterator

from oneshot.errors import UserError

_NAME = r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*"
MODULE_NAME = re.compile(rf"^{_NAME}$")
CLASS_PATH = re.compile(rf"^({_NAME}):({_NAME})$")

_TRUSTED: contextvars.ContextVar[frozenset] = contextvars.ContextVar("oneshot_trusted_modules",
                                                                     default=frozenset())


def split_class_path(path: object) -> tuple[str, str]:
  """('package.file', 'Class') of 'package.file:Class'; anything else is one line."""
  match = CLASS_PATH.match(path) if isinstance(path, str) else None
  if match is None:
    raise UserError(f"malformed module name {path!r}: name a Flax module class as "
                    "'package.file:Class' (letters, digits and underscores, dots between)")
  return match.group(1), match.group(2)


def check_module_name(name: object, flag: str = "--trust-module") -> str:
  if not isinstance(name, str) or not MODULE_NAME.match(name):
    raise UserError(f"{flag} {name!r} is not a module name; give a dotted name like my_models or "
                    "pkg.models")
  return name


def trust(names: Iterable[str]) -> None:
  """Adds `names` to the modules trusted in the current context (the CLI scopes it per command)."""
  names = [check_module_name(n) for n in names]
  _TRUSTED.set(_TRUSTED.get() | frozenset(names))


def trust_config(config: object) -> None:
  """Trusts the module a config the user passed names as its space, if any (their own file)."""
  space = config.get("space") if hasattr(config, "get") else None
  path = space.get("module") if hasattr(space, "get") and space.get("name") == "module" else None
  if isinstance(path, str) and CLASS_PATH.match(path):
    trust([path.partition(":")[0]])


@contextlib.contextmanager
def scope(names: Iterable[str] = ()) -> Iterator[None]:
  """While inside, `names` are trusted on top of what already is; on exit, whatever was trusted inside
  is forgotten (one command, one call of the Python API)."""
  token = _TRUSTED.set(_TRUSTED.get())
  try:
    trust(names)
    yield
  finally:
    _TRUSTED.reset(token)


def is_trusted(module_name: str) -> bool:
  return any(module_name == t or module_name.startswith(t + ".") for t in _TRUSTED.get())


def require_trusted(path: str) -> None:
  """One line unless the module of `path` ('pkg.mod:Class') may be imported."""
  module_name, _ = split_class_path(path)
  if not is_trusted(module_name):
    raise UserError(f"{path!r} comes from a file, and importing {module_name} would run its code; "
                    f"if you trust it pass --trust-module {module_name} (Python: model=YourModule() "
                    f"or trust=[{module_name!r}])")
