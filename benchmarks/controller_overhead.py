"""Controller cost per search step as a fraction of a supernet train step (target <= 2%).

For each controller on the digits space: the median time of one search step's controller work (propose
the train paths, propose `reward_paths_per_device` x devices reward paths, feedback; the marginals
logged every `log_every` steps are left out), divided by the
median supernet train step (the `auto` executor, batch of the config) measured in the same run. Run:
`python benchmarks/controller_overhead.py [--steps 50]`.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from oneshot import api
from oneshot import controllers
from oneshot import spaces
from oneshot import supernet
from oneshot.configuration import DEFAULT_CONFIG
from oneshot.session import controller_config


def _median(fn, steps):
  fn(0)  # compile / warm up
  times = []
  for i in range(1, steps + 1):
    t0 = time.perf_counter()
    fn(i)
    times.append(time.perf_counter() - t0)
  return float(np.median(times))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--config", default=DEFAULT_CONFIG)
  parser.add_argument("--steps", type=int, default=50)
  args = parser.parse_args()
  config = api.get_config(args.config)
  space = spaces.build(config.space)
  n = jax.device_count()
  k = int(config.train.get("reward_paths_per_device", 1))

  batch = int(config.train.batch_size)
  x = jax.random.normal(jax.random.PRNGKey(1), (batch, 8, 8, 1))
  y = jnp.arange(batch) % 10
  model = supernet.build(space, 10, 1, "auto", "auto")
  variables = jax.jit(model.init)(jax.random.PRNGKey(0), x, jnp.zeros(space.num_decisions, jnp.int32))
  params, frozen = variables["params"], {"batch_stats": variables["batch_stats"]}
  tx = optax.sgd(0.01, momentum=0.9)
  opt_state = tx.init(params)

  @jax.jit
  def train_step(params, opt_state, dna):
    loss = lambda p: optax.softmax_cross_entropy_with_integer_labels(
        model.apply({"params": p, **frozen}, x, dna), y).mean()
    updates, opt_state = tx.update(jax.grad(loss)(params), opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  dnas = space.sample(np.random.default_rng(0), args.steps + 1)
  t_step = _median(lambda i: jax.block_until_ready(train_step(params, opt_state, dnas[i])), args.steps)
  print(f"supernet train step ({supernet.resolve_executor('auto')}): {t_step * 1e3:.1f} ms; "
        f"{n} device(s), {k} reward path(s) per device")
  for name in controllers.reward_based():  # gradient-based ones cost an architecture step instead
    controller = controllers.build(name, space, {**config.controller.to_dict(),
                                                 **controller_config(config)})
    state = [controller.init(jax.random.PRNGKey(0))]
    rewards = np.linspace(0.5, 1.0, n * k).astype(np.float32)

    def one_step(i, controller=controller, state=state, rewards=rewards):
      key = jax.random.PRNGKey(i)
      paths = controller.propose(state[0], key, n + n * k)[n:]  # train + reward paths, one call
      state[0], _ = controller.feedback(state[0], paths, rewards)

    t = _median(one_step, args.steps)
    print(f"{name:<10} {t * 1e3:7.2f} ms per step = {100 * t / t_step:5.1f}% of a supernet step "
          f"(target <= 2%)")


if __name__ == "__main__":
  main()
