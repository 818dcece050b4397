"""Images/s the input pipeline delivers against the images/s one supernet step consumes.

For configs/cifar10.py and configs/imagenet_mobilenet.py: builds a synthetic dataset of the same shape
in a temporary folder (`oneshot.data.synthetic`: 32x32 PNG; JPEG of 300-500 px sides), reads its train split
through `data.load` with the config's augmentation, resolution and prefetch at each worker count, and
prints images/s delivered (normalised float32 batches in the training process, in steady state: the
batches that start the workers or were read ahead before the clock started are not timed). Then times
the config's supernet training step (gradient + SGD on random paths, median after compile) on this
machine at a few images and prints the images/s it consumes, and the ratio delivered/consumed (>= 1:
the step never waits for data). On CPU the step is timed at 32 CIFAR images but 1 ImageNet image: the
shift formulation of depthwise convolutions that `auto` picks there (XLA's is slower still to compile
and run on CPU) materialises k*k shifted copies, 137 GB at 32 x 224 px. `--steps 0` skips the step.
Run: `python benchmarks/input_pipeline.py [--workers 0,1,2] [--batches 12] [--configs cifar10,imagenet]`.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np

from oneshot import api
from oneshot import data
from oneshot.data import synthetic

CASES = {  # synthetic config: (built-in config, delivery batch (None: the config's), timed step batch)
    "cifar10": ("cifar10", None, 32),
    "imagenet": ("imagenet_mobilenet", 128, 1),  # CPU-sized: 4096 x 224 px is for pods
}


def delivered(name: str, data_dir: str, config, workers: int, batch: int, batches: int) -> float:
  """Images/s `Dataset.batch('train', ...)` returns in steady state: the median over 3 windows of
  `batches` // 3 batches each.

  The first 1 + 2 * prefetch * max(1, workers) batches are not timed: the first starts the workers, and
  the others may sit in the read-ahead buffers (`prefetch` batches in each worker's threads and as many
  in its output queue), which would count work done before the clock ran. The median keeps a burst
  from a buffer, or from the other jobs on a shared machine pausing, out of the figure.
  """
  d = config.dataset
  ds = data.load({"name": name, "data_dir": data_dir, "train_split": "train",
                  "validation_split": "validation", "test_split": "", "image_size": d.image_size,
                  "augment": d.augment, "workers": workers, "prefetch": d.prefetch})
  step, window = 1 + 2 * int(d.prefetch) * max(1, workers), max(1, batches // 3)
  for s in range(step):
    ds.batch("train", s, batch, config.seed)
  rates = []
  for _ in range(3):
    t0 = time.perf_counter()
    for s in range(step, step + window):
      ds.batch("train", s, batch, config.seed)
    rates.append(batch * window / (time.perf_counter() - t0))
    step += window
  ds.close()  # stop the workers before the next worker count starts its own
  return float(np.median(rates))


def consumed(config, shape: tuple[int, int, int], num_classes: int, batch: int, steps: int) -> float:
  """Images/s of the config's supernet training step (grad + SGD) on this machine, median of `steps`."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import optax  # pylint: disable=import-outside-toplevel
  from oneshot import spaces, supernet  # pylint: disable=import-outside-toplevel
  space = spaces.build(config.space)
  model = supernet.build(space, num_classes, shape[-1], config.supernet.executor,
                         config.supernet.depthwise)
  x = jax.random.normal(jax.random.PRNGKey(1), (batch, *shape))
  y = jnp.arange(batch) % num_classes
  rng = np.random.default_rng(0)
  variables = model.init(jax.random.PRNGKey(0), x, jnp.asarray(space.sample(rng)))
  frozen = {k: v for k, v in variables.items() if k != "params"}
  tx = optax.sgd(0.01, momentum=0.9)

  @jax.jit
  def step(params, opt_state, dna):
    def loss(p):
      logits = model.apply({"params": p, **frozen}, x, dna)
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    updates, opt_state = tx.update(jax.grad(loss)(params), opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  params, opt_state = variables["params"], tx.init(variables["params"])
  jax.block_until_ready(step(params, opt_state, jnp.asarray(space.sample(rng))))  # compile
  times = []
  for _ in range(steps):
    dna = jnp.asarray(space.sample(rng))
    t0 = time.perf_counter()
    jax.block_until_ready(step(params, opt_state, dna))
    times.append(time.perf_counter() - t0)
  return batch / float(np.median(times))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--workers", default="0,1,2")
  parser.add_argument("--batches", type=int, default=12, help="timed batches per worker count")
  parser.add_argument("--configs", default=",".join(CASES))
  parser.add_argument("--steps", type=int, default=3, help="timed supernet steps")
  parser.add_argument("--depthwise", default="auto", help="the step's: auto (shift on CPU) | xla")
  args = parser.parse_args()
  print(f"cpus {os.cpu_count()}, load average {os.getloadavg()[0]:.1f}", flush=True)
  with tempfile.TemporaryDirectory() as data_dir:
    for kind in args.configs.split(","):
      _case(kind, data_dir, args)
  print(f"\nload average after: {os.getloadavg()[0]:.1f}")


def _case(kind: str, data_dir: str, args: argparse.Namespace) -> None:
  """Prints delivered images/s per worker count, consumed images/s and their ratios for one config."""
  config_name, batch, step_batch = CASES[kind]
  config, path = api.get_config(config_name), f"configs/{config_name}.py"
  t0 = time.perf_counter()
  name = synthetic.prepare(kind, data_dir)
  info = synthetic.SyntheticImages(config=kind, data_dir=data_dir).info
  print(f"\n{path}: {name} ({info.splits['train'].num_examples} train images, built in "
        f"{time.perf_counter() - t0:.1f} s), augment {config.dataset.augment}, prefetch "
        f"{config.dataset.prefetch}", flush=True)
  batch = batch or int(config.train.batch_size)
  rates = {}
  for workers in (int(w) for w in args.workers.split(",")):
    rates[workers] = delivered(name, data_dir, config, workers, batch, args.batches)
    print(f"  delivered, {workers} workers: {rates[workers]:8.0f} images/s (batch {batch})", flush=True)
  if args.steps <= 0:
    return
  config.supernet.depthwise = args.depthwise
  size = int(config.dataset.image_size) or 32
  need = consumed(config, (size, size, 3), info.features["label"].num_classes, step_batch, args.steps)
  print(f"  supernet step ({config.train.batch_size} images per step in the config; timed at "
        f"{step_batch} on this machine, depthwise {args.depthwise}): consumes {need:8.1f} images/s")
  for workers, rate in rates.items():
    print(f"  ratio delivered/consumed, {workers} workers: {rate / need:8.2f}", flush=True)


if __name__ == "__main__":
  main()
