"""`Searched`: a search workdir and one export of its answer, shared by the export and predict tests."""

from __future__ import annotations

import os

import numpy as np

from oneshot import checkpoint, configuration, export, search_loop, session as session_lib, steps, storage
from tests.conftest import tiny_config


def _config(space: str):  # the tiny digits search both modules export
  c = tiny_config(num_steps=6, checkpoint_every=3)
  c.controller.name = "random"
  if space == "nasbench201":
    c.space = dict(name="nasbench201", channels=4, cells_per_stage=1)
  return c


class Searched:
  """A search workdir, its session and restored params, and one export of its result.

  `searched=False` writes the workdir the way the search does (config.json, an orbax checkpoint of the
  initial search state, search_result.json) without training: export and load do not care whether the
  weights were trained, and the NAS-Bench-201 supernet's search is slow to compile.
  """

  def __init__(self, space: str, root, searched: bool = True):
    self.config = _config(space)
    self.workdir = str(root / "search")
    if searched:
      self.result = search_loop.run(self.config, self.workdir)
      self.sess = session_lib.build(self.config)
    else:
      self.sess = session_lib.build(self.config)
      state = self.sess.initial_state(steps.make_optimizer(self.config))
      checkpoint.save(checkpoint.manager(self.workdir), 0, state)
      storage.write_text(os.path.join(self.workdir, "config.json"), configuration.to_json(self.config))
      dna = self.sess.space.sample(np.random.default_rng(1))
      self.result = self.sess.space.to_json(dna)
      storage.write_json(os.path.join(self.workdir, "search_result.json"), self.result)
    self.out = str(root / "export")
    self.record = export.export(self.workdir, self.out, recalibrate_batches=2)
    self.params = session_lib.restore_params(self.sess, self.workdir)["params"]
    self.space = self.sess.space
