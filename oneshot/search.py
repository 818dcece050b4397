"""`oneshot search`: train a weight-sharing supernet and search it with a controller, resumably.

The loop, the answer and how they resume: oneshot/search_loop.py. This module reads the flags.
"""

from __future__ import annotations

from typing import Sequence

from absl import flags

from oneshot import configuration, search_loop, storage
from oneshot.errors import UserError
from oneshot.launch import distributed


def main(argv: Sequence[str]) -> int:
  def define(fv):
    flags.DEFINE_string("workdir", None, "Output directory; an existing one is resumed.",
                        flag_values=fv, required=False)
    flags.DEFINE_boolean("dry_run", False, "Check the config (names, types, dataset, supernet) and "
                         "exit without training or writing anything.", flag_values=fv)
  fv = configuration.parse_flags(argv, define, command="search", config_required=False)
  if fv["dry_run"].value:
    sess = search_loop.check(fv.config)
    print(f"config OK: {sess.space.num_decisions}-decision {fv.config.space.name} space on "
          f"{fv.config.dataset.name}, {sess.num_devices} devices; nothing written")
    return 0
  if not fv.workdir:
    raise UserError("--workdir is required, e.g. --workdir workdirs/digits")
  result = search_loop.run(fv.config, fv.workdir)
  if result is None or not distributed.is_primary():
    return 0
  print(f"searched {result['space']} architecture {result['string']}: validation accuracy "
        f"{result['reward']:.4f} after {result['steps']} steps ({result['wall_seconds']:.0f} s); "
        f"wrote {storage.as_path(fv.workdir) / 'search_result.json'}")
  return 0
