"""NAS-Bench-201 cell search on Fashion-MNIST: the benchmark's space (6 edges x 5 ops) on real data.

The skeleton is shrunk for 2 CPU cores (C=8, N=1: three cells at 28x28, 14x14 and 7x7 around the two
ResNet reductions); the data split is configs/fashion_mnist.py's (50k train / 10k validation, the
official test set only for stand-alone training). This is the task of the gradient-based controllers'
collapse check: DARTS is known to drift to parameter-free cells (skip_connect / none) on this space,
so a search answer is reported with its fraction of parameter-free edges.
"""

from oneshot.configs.fashion_mnist import get_config as _fashion_mnist


def get_config():
  c = _fashion_mnist()
  c.space = dict(name="nasbench201", channels=8, cells_per_stage=1)
  c.train.num_steps = 1000
  c.train.uniform_fraction = 0.25
  c.train.standalone_steps = 500
  c.supernet.executor = "auto"
  c.controller.name = "gdas"
  return c
