"""`--config FILE` plus `--config.a.b=value` overrides, as big_vision and the flax examples do it.

Wraps ml_collections' config flags in a private FlagValues per call, so each subcommand parses its own
argv (tests call `main(argv)` many times in one process) and every parse error becomes one `UserError`.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
import sys
import traceback
from typing import Callable, Sequence

import ml_collections
from absl import flags
from ml_collections import config_flags

from oneshot import trust
from oneshot.errors import UserError
from oneshot.hardware import settings as hardware_settings

# The configs/ folder, wherever it is installed (a checkout's configs/, or site-packages' oneshot/configs).
CONFIGS_DIR = os.path.dirname(importlib.util.find_spec("oneshot.configs").origin)
DEFAULT_CONFIG = os.path.join(CONFIGS_DIR, "digits.py")


def parse_flags(argv: Sequence[str], define: Callable[[flags.FlagValues], None] | None = None,
                *, command: str, config_required: bool = True, with_config: bool = True,
                required: Sequence[str] = ()) -> flags.FlagValues:
  """Parses `argv` (without the program name) the one way every subcommand does: absl flags, spelled
  with underscores or dashes (`--num-archs` = `--num_archs`), plus `--config FILE` and its
  `--config.a.b=value` overrides unless `with_config` is False. `define` adds the subcommand's own
  flags; each name in `required` must be given (one line otherwise)."""
  argv = [_underscored(a) for a in argv]
  fv = flags.FlagValues()
  if with_config:
    config_flags.DEFINE_config_file("config", None if config_required else DEFAULT_CONFIG,
                                    "Python config file with get_config().", flag_values=fv,
                                    sys_argv=["oneshot"] + argv)
  if define is not None:
    define(fv)
  flags.DEFINE_multi_string("trust_module", [], "A module (dotted name) that files such as "
                            "architecture.json or a workdir's config.json may name as the search "
                            "space and that may therefore be imported; repeat for several.",
                            flag_values=fv)
  if "--help" in argv or "-h" in argv:
    config_usage = " [--config FILE] [--config.FIELD=VALUE ...]" if with_config else ""
    print(f"usage: oneshot {command}{config_usage} [flags]\n")
    print(fv.main_module_help() or fv.get_help())
    raise SystemExit(0)
  path = _config_path(argv) if with_config else None
  if path is not None and not os.path.isfile(path):
    raise UserError(f"config file {path} not found; give a Python file with get_config(), e.g. "
                    "--config configs/digits.py")
  # ml_collections loads every config file as module `config_config` with `load_module()`, which
  # executes into the module already in sys.modules: a second parse in one process (the tests, the
  # Python API) would keep names the new file does not define, such as an earlier get_config().
  sys.modules.pop("config_config", None)
  absl_logger = logging.getLogger("absl")
  absl_logger.addFilter(_drop_none_warning)  # `load` says it once, as an error
  try:
    rest = fv(["oneshot"] + argv, known_only=True)
  except Exception as e:  # pylint: disable=broad-except  # a config file may raise anything
    raise UserError(_config_file_message(e, path) or _flag_message(e)) from None
  finally:
    absl_logger.removeFilter(_drop_none_warning)
  if rest[1:]:
    raise UserError(f"unknown argument {rest[1]!r}; see `oneshot {command} --help`")
  for name in required:
    if fv[name].value is None:
      raise UserError(f"--{name.replace('_', '-')} is required; see `oneshot {command} --help`")
  trust.trust(fv["trust_module"].value)
  if not with_config:
    return fv
  if config_required and fv["config"].value is None and not fv.is_parsed():
    raise UserError("--config is required, e.g. --config configs/digits.py")
  trust.trust_config(load(fv))  # the config file is the user's own: its space module is theirs
  return fv


def _underscored(arg: str) -> str:
  """`--flag-name[=v]` -> `--flag_name[=v]` (absl names use underscores); values, `--config.*` overrides
  and non-flags are left alone."""
  if not arg.startswith("--") or arg.startswith("--config"):
    return arg
  name, eq, value = arg[2:].partition("=")
  return "--" + name.replace("-", "_") + eq + value


def load(fv: flags.FlagValues) -> ml_collections.ConfigDict:
  """The parsed config, with loading and override errors turned into one line."""
  try:
    config = fv.config
  except (OSError, AttributeError, KeyError, TypeError, ValueError, flags.Error) as e:
    raise UserError(f"cannot load config: {_flag_message(e)}; check --config and its "
                    "--config.* overrides (names and types must match the config file)") from None
  # ml_collections keeps an OSError raised by the config file (FileNotFoundError included) in a
  # placeholder that raises on first use, i.e. in the middle of a run with a traceback. Its class is
  # private; the name is the only public trace of it.
  if type(config).__name__ == "_ErrorConfig":
    path = _config_path(["--config", fv["config"].config_filename])
    error = vars(config)["_error"]
    raise UserError(_config_file_message(error, path)
                    or f"cannot load config file {path}: {error}; fix the file") from None
  if config is None:
    if fv["config"].present:
      raise UserError(_RETURNED_NONE)
    raise UserError("--config is required, e.g. --config configs/digits.py")
  hardware_settings.read(config)  # every hardware value checked now, before any command starts
  return config


_RETURNED_NONE = ("the config file's get_config() returned None; return the ml_collections.ConfigDict "
                  "it builds")


def _drop_none_warning(record: logging.LogRecord) -> bool:
  return "get_config() returned None" not in record.getMessage()


def _config_path(argv: list[str]) -> str | None:
  """The file named by the last `--config FILE` / `--config=FILE` (without ml_collections'
  `:argument` suffix), or None."""
  path = None
  for i, arg in enumerate(argv):
    if arg == "--config" and i + 1 < len(argv):
      path = argv[i + 1]
    elif arg.startswith("--config="):
      path = arg[len("--config="):]
  if path is not None and not os.path.isfile(path) and ":" in path:
    path = path.split(":", 1)[0]
  return path


def _config_file_message(e: BaseException, path: str | None) -> str | None:
  """One line for an error raised while loading the config file itself (syntax, imports, a failing
  get_config, no get_config), or None for an override error. ml_collections re-raises TypeError and
  ValueError from the file with the formatted traceback as their message, hence the text search."""
  if path is None:
    return None
  if str(e).startswith("Configuration is not available because of an earlier failure"):
    e = e.__cause__ or e  # an override touched the placeholder of an OSError (see `load`)
  if "Attribute <class 'NoneType'>" in str(e):  # an override applied to get_config()'s None
    return _RETURNED_NONE
  if "has no attribute 'get_config'" in str(e):
    return (f"config file {path} has no get_config(); define get_config() returning an "
            "ml_collections.ConfigDict")
  where = os.path.abspath(path)
  if isinstance(e, SyntaxError) and e.filename and os.path.abspath(e.filename) == where:
    return f"cannot load config file {path} (line {e.lineno}): {e.msg}; fix the file"
  lines = [f.lineno for f in traceback.extract_tb(e.__traceback__) if os.path.abspath(f.filename) == where]
  lines = lines or [int(n) for n in re.findall(rf'File "{re.escape(path)}", line (\d+)', str(e))]
  # An OSError while the file's top level runs is reported by ml_collections without its frames,
  # as 'Failed loading config file ...' followed by what each attempted path raised.
  unlocated = isinstance(e, OSError) and str(e).startswith("Failed loading config file")
  if not lines and not unlocated:
    return None
  text = str(e).strip().splitlines()
  detail = text[-1].strip() if text else ""
  if not re.match(r"\w+(Error|Exception): ", detail):  # not already named (absl's wrapped ones are)
    detail = f"{type(e).__name__}: {detail}"
  where = f" (line {lines[-1]})" if lines else ""
  return f"cannot load config file {path}{where}: {detail}; fix the file"


def section(config, name: str, fields) -> dict:
  """`config.<name>` as a plain dict, or {} when absent; an unknown field is one UserError line."""
  value = config.get(name) if config is not None and hasattr(config, "get") else None
  if value is None:
    return {}
  if not hasattr(value, "keys"):
    raise UserError(f"config.{name} must be a ConfigDict of {', '.join(fields)}; "
                    f"got {type(value).__name__}")
  unknown = sorted(set(value.keys()) - set(fields))
  if unknown:
    raise UserError(f"config.{name} has unknown field {unknown[0]!r}; use one of "
                    f"{', '.join(fields)}")
  return {key: value[key] for key in value.keys()}


def to_json(config: ml_collections.ConfigDict) -> str:
  return json.dumps(config.to_dict(), indent=2, sort_keys=True, default=str)


def from_json(text: str) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(json.loads(text))


def _flag_message(e: BaseException) -> str:
  text = str(e).strip().splitlines()
  first = text[0] if text else type(e).__name__
  if isinstance(e, (AttributeError, KeyError)):
    return (f"the config has no field {first}; check the spelling of the --config.* override "
            "against the config file")
  if len(text) > 2 and "No such file" in " ".join(text):
    return f"config file not found ({text[2].strip()})"
  return first
