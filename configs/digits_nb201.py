"""NAS-Bench-201 cell search on digits: the benchmark's skeleton, shrunk (C=8, N=1) for 8x8 images."""

from oneshot.configs.common import base_config


def get_config():
  c = base_config()
  c.space = dict(name="nasbench201", channels=8, cells_per_stage=1)
  c.train.num_steps = 300
  return c
