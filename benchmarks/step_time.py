"""Supernet train step / standalone child train step, per executor, same architecture/batch/device.

Prints, for several random architectures of the digits space, the median (>= 20 steps after compile,
measurements interleaved across contenders) of the supernet's gradient+SGD step divided by the child's,
the compile times, and peak RSS. Target on
CPU: best executor <= 1.25x. Run: `python benchmarks/step_time.py [--config configs/digits.py]
[--archs 4] [--steps 20]`.
"""

from __future__ import annotations

import argparse
import resource
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from oneshot import api, runtime
from oneshot import spaces
from oneshot import supernet
from oneshot.configuration import DEFAULT_CONFIG


def _compile(step, args) -> float:
  t0 = time.perf_counter()
  jax.block_until_ready(step(*args))
  return time.perf_counter() - t0


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--config", default=DEFAULT_CONFIG)
  parser.add_argument("--archs", type=int, default=4)
  parser.add_argument("--steps", type=int, default=20)
  parser.add_argument("--executors", default="switch,switch_exact,mask")
  args = parser.parse_args()
  runtime.return_compile_memory()  # as search, rank and train do: the peak is one compile, not all
  config = api.get_config(args.config)
  space = spaces.build(config.space)
  batch = int(config.train.batch_size)
  x = jax.random.normal(jax.random.PRNGKey(1), (batch, 8, 8, 1))
  y = jnp.arange(batch) % 10
  tx = optax.sgd(0.01, momentum=0.9)

  def make_step(apply):
    @jax.jit
    def step(params, opt_state, *extra):
      loss = lambda p: optax.softmax_cross_entropy_with_integer_labels(apply(p, *extra), y).mean()
      grads = jax.grad(loss)(params)
      updates, opt_state = tx.update(grads, opt_state, params)
      return optax.apply_updates(params, updates), opt_state
    return step

  print(f"backend {jax.default_backend()}, depthwise {supernet.resolve_depthwise('auto')}, "
        f"batch {batch}, space size {space.size}")
  supers = {}
  for name in args.executors.split(","):
    model = supernet.build(space, 10, 1, name, "auto")
    variables = model.init(jax.random.PRNGKey(0), x, jnp.zeros(space.num_decisions, jnp.int32))
    frozen = {k: v for k, v in variables.items() if k != "params"}
    step = make_step(lambda p, dna, model=model, frozen=frozen:
                     model.apply({"params": p, **frozen}, x, dna))
    supers[name] = (variables, step)
  rng = np.random.default_rng(0)
  ratios = {name: [] for name in supers}
  for _ in range(args.archs):
    dna = space.sample(rng)
    variables = next(iter(supers.values()))[0]
    child = supernet.child_model(space, dna, 10, 1)
    cvars = supernet.child_variables(space, variables, dna)
    stats = cvars["batch_stats"]
    cstep = make_step(lambda p: child.apply({"params": p, "batch_stats": stats}, x,
                                            mutable=["batch_stats"])[0])
    runs = {"child": (cstep, (cvars["params"], tx.init(cvars["params"])))}
    for name, (v, step) in supers.items():
      runs[name] = (step, (v["params"], tx.init(v["params"]), jnp.asarray(dna)))
    compile_s = {name: _compile(*run) for name, run in runs.items()}
    # Interleave the measurements so a change in machine load hits every contender alike.
    times = {name: [] for name in runs}
    for _ in range(args.steps):
      for name, (step, step_args) in runs.items():
        t0 = time.perf_counter()
        jax.block_until_ready(step(*step_args))
        times[name].append(time.perf_counter() - t0)
    med = {name: float(np.median(t)) for name, t in times.items()}
    line = f"{space.format(dna):<40} child {med['child'] * 1e3:6.1f} ms"
    for name in supers:
      ratios[name].append(med[name] / med["child"])
      line += (f" | {name} {med[name] * 1e3:6.1f} ms = {ratios[name][-1]:4.2f}x "
               f"(compile {compile_s[name]:4.1f} s)")
    print(line, flush=True)
  for name, r in ratios.items():
    print(f"{name}: supernet/child step time, mean over {len(r)} archs {np.mean(r):.2f}x "
          f"(min {np.min(r):.2f}, max {np.max(r):.2f})")
  best = min(ratios, key=lambda n: np.mean(ratios[n]))
  print(f"best executor: {best} {np.mean(ratios[best]):.2f}x (target <= 1.25x); "
        f"auto picks {supernet.resolve_executor('auto')} here")
  print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
  main()
