"""oneshot's supernet step against the PyTorch peer, NNI 3.0's RandomOneShot, side by side in one run.

The peer's own space: a stem of 32 filters, six stride-1 inverted-residual blocks of width 32, each a
choice of kernel 3/5/7 x expansion 3/6, 8x8 inputs, batch 64, 10 classes, SGD with momentum. In NNI it is
a `ModelSpace` whose blocks are `LayerChoice`s, turned into a supernet by `RandomOneShot().mutate_model`
(each step resamples every choice, as its Lightning module does before each training step; Lightning's
own loop is left out). In oneshot it is the `mobilenet` space with `stages=((32, 6, 1),)`, one width,
no skip, run by the executor `auto` picks. Each supernet trains on a fresh uniform random path per step.

`--devices N` (oneshot only) runs its step data-parallel over N XLA:CPU devices, each on its own
uniform path and 64/N of the batch, gradients averaged: the TuNAS-style step `oneshot search` runs on
N devices. One device per core keeps the cores busier than XLA's intra-op threads do on 8x8 images.
The work per step is the peer's (64 images), spread over N paths instead of one.

Rounds alternate the two contenders (`--rounds` x `--steps` steps each), so a change in machine load hits
both; the figures are medians per round, then the mean/min/max over rounds, and the ratio
oneshot/NNI (below 1: oneshot is faster). Both use every thread `--threads` allows (XLA:CPU's intra-op
pool, torch.set_num_threads). Needs the optional extra: `pip install -e '.[peer]'`; without it this
prints one line and exits 0.
Run: `python benchmarks/peer_nni.py [--rounds 5] [--steps 20] [--threads 2] [--devices 1]`.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time

import numpy as np

BATCH, WIDTH, BLOCKS, SIZE, CLASSES = 64, 32, 6, 8, 10
KERNELS, EXPANSIONS = (3, 5, 7), (3, 6)


def _missing_peer() -> str | None:
  missing = [name for name in ("torch", "nni", "pytorch_lightning") if importlib.util.find_spec(name) is None]
  return ", ".join(missing) or None


def nni_step(threads: int):
  """A callable running one NNI RandomOneShot supernet step (resample + forward + backward + SGD)."""
  # pylint: disable=import-outside-toplevel
  import torch
  from torch import nn
  from nni.nas.nn.pytorch import LayerChoice, ModelSpace
  from nni.nas.oneshot.pytorch.supermodule.base import BaseSuperNetModule
  from nni.nas.strategy import RandomOneShot

  torch.set_num_threads(threads)

  def block(k: int, e: int) -> nn.Module:
    hidden = WIDTH * e
    return nn.Sequential(
        nn.Conv2d(WIDTH, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU(),
        nn.Conv2d(hidden, hidden, k, padding=k // 2, groups=hidden, bias=False),
        nn.BatchNorm2d(hidden), nn.ReLU(),
        nn.Conv2d(hidden, WIDTH, 1, bias=False), nn.BatchNorm2d(WIDTH))

  class Space(ModelSpace):
    def __init__(self):
      super().__init__()
      self.stem = nn.Sequential(nn.Conv2d(1, WIDTH, 3, padding=1, bias=False), nn.BatchNorm2d(WIDTH),
                                nn.ReLU())
      self.blocks = nn.ModuleList([
          LayerChoice([block(k, e) for k in KERNELS for e in EXPANSIONS], label=f"block{i}")
          for i in range(BLOCKS)])
      self.classifier = nn.Linear(WIDTH, CLASSES)

    def forward(self, x):
      x = self.stem(x)
      for b in self.blocks:
        x = x + b(x)
      return self.classifier(x.mean((2, 3)))

  model = RandomOneShot().mutate_model(Space())
  supernet_modules = [m for m in model.modules() if isinstance(m, BaseSuperNetModule)]
  opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
  x = torch.randn(BATCH, 1, SIZE, SIZE)
  y = torch.arange(BATCH) % CLASSES

  def step():
    memo: dict = {}
    for m in supernet_modules:
      memo.update(m.resample(memo=memo))
    opt.zero_grad()
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    opt.step()

  return step


def oneshot_step(devices: int = 1):
  """A callable running one oneshot supernet step on fresh uniform paths (one per device), the
  executor used and the compile seconds."""
  # pylint: disable=import-outside-toplevel
  import jax
  import jax.numpy as jnp
  import optax
  from oneshot import spaces, steps, supernet

  space = spaces.build(dict(name="mobilenet", stem_filters=WIDTH, stem_stride=1,
                            stages=((WIDTH, BLOCKS, 1),), kernel_sizes=KERNELS,
                            expansion_ratios=EXPANSIONS, width_multipliers=(1.0,), allow_skip=False,
                            head_filters=0))
  executor = supernet.resolve_executor("auto")
  model = supernet.build(space, CLASSES, 1, executor, "auto")
  x = jax.random.normal(jax.random.PRNGKey(1), (BATCH, SIZE, SIZE, 1))
  y = jnp.arange(BATCH) % CLASSES
  variables = model.init(jax.random.PRNGKey(0), x, jnp.zeros(space.num_decisions, jnp.int32))
  frozen = {k: v for k, v in variables.items() if k != "params"}
  tx = optax.sgd(0.01, momentum=0.9)
  rng = np.random.default_rng(0)

  if devices == 1:
    @jax.jit
    def train(params, opt_state, dna):
      loss = lambda p: optax.softmax_cross_entropy_with_integer_labels(
          model.apply({"params": p, **frozen}, x, dna), y).mean()
      updates, opt_state = tx.update(jax.grad(loss)(params), opt_state, params)
      return optax.apply_updates(params, updates), opt_state

    state = [variables["params"], tx.init(variables["params"])]
    run = lambda: train(*state, jnp.asarray(space.sample(rng)))
  else:  # the search's own data-parallel step: per-device paths, pmean of the gradients
    mesh = steps.make_mesh(devices)
    train = steps.make_train_step(model, tx, mesh, frozen)
    batch = steps.shard_batch(mesh, {"image": np.asarray(x), "label": np.asarray(y)})
    state = [steps.replicate(mesh, variables["params"]),
             steps.replicate(mesh, tx.init(variables["params"]))]
    run = lambda: train(*state, batch, steps.shard_paths(
        mesh, np.stack([space.sample(rng) for _ in range(devices)]).astype(np.int32)))[:2]

  tic = time.perf_counter()
  state[:] = run()
  jax.block_until_ready(state[0])
  compile_s = time.perf_counter() - tic

  def step():
    state[:] = run()
    jax.block_until_ready(state[0])

  return step, executor, compile_s


def _median_ms(step, n: int) -> float:
  times = []
  for _ in range(n):
    tic = time.perf_counter()
    step()
    times.append(time.perf_counter() - tic)
  return float(np.median(times)) * 1e3


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  parser.add_argument("--rounds", type=int, default=5)
  parser.add_argument("--steps", type=int, default=20)
  parser.add_argument("--threads", type=int, default=2)
  parser.add_argument("--devices", type=int, default=1,
                      help="XLA:CPU devices for oneshot's step (data-parallel, one path each)")
  args = parser.parse_args()
  if args.devices < 1 or BATCH % args.devices:
    print(f"peer_nni: --devices must divide the batch of {BATCH}, got {args.devices}")
    return 2
  missing = _missing_peer()
  if missing:
    print(f"peer_nni: skipped, the PyTorch peer is not installed ({missing}); "
          "pip install -e '.[peer]' to run it")
    return 0
  # Before jax is imported: the CPU platform makes its devices once.
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             f" --xla_force_host_platform_device_count={args.devices}").strip()
  ours, executor, compile_s = oneshot_step(args.devices)
  peer = nni_step(args.threads)
  for _ in range(3):  # warm both (allocator, autotuning) before anything is timed
    ours()
    peer()
  rows = []
  for r in range(args.rounds):
    o, p = _median_ms(ours, args.steps), _median_ms(peer, args.steps)
    rows.append((o, p))
    print(f"round {r + 1}: oneshot {o:6.1f} ms | NNI RandomOneShot {p:6.1f} ms | ratio {o / p:.2f}",
          flush=True)
  o, p = np.array(rows).T
  ratio = o / p
  print(f"oneshot ({executor}, {args.devices} device{'s' * (args.devices > 1)}, compile "
        f"{compile_s:.1f} s): {o.mean():.1f} ms per step "
        f"(min {o.min():.1f}, max {o.max():.1f})")
  print(f"NNI 3.0 RandomOneShot (PyTorch eager, {args.threads} threads): {p.mean():.1f} ms per step "
        f"(min {p.min():.1f}, max {p.max():.1f})")
  print(f"oneshot / NNI step time: {ratio.mean():.2f}x (min {ratio.min():.2f}, max {ratio.max():.2f}); "
        "goal <= 0.67x")
  return 0


if __name__ == "__main__":
  sys.exit(main())
