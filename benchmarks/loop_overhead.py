"""Whole search loop / bare jitted step: how much the loop around the step costs.

Runs `oneshot search` (`search_loop.run`) on a config and times it between two of the loop's own device
reads (logged/checkpointed steps), after compilation; then replays the same jitted calls on the same
device batches and paths back to back, nothing else, and prints steps/s of both and their ratio
(goal >= 0.9).
Two phases, each in one run: the uniform warm-up (train step only) and the controller phase (train
step + `reward_paths_per_device` reward forwards + the controller's update, which needs the rewards on
the host every step). Run: `python benchmarks/loop_overhead.py [--config configs/digits.py]
[--steps 100] [--rounds 3]`.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import jax
import numpy as np

from oneshot import api
from oneshot import search_loop, session as session_lib, steps
from oneshot.configuration import DEFAULT_CONFIG


def loop_and_bare(config, skip: int) -> tuple[float, float]:
  """(steps/s of `search_loop.run` between its first device read after step `skip` and its last read,
  steps/s of the same jitted calls replayed back to back on the same batches and paths).

  Replaying the loop's own calls matters: random paths differ in cost by more than the loop's overhead.
  """
  reads, calls = [], []  # calls[i]: (train call, reward calls) of step i+1, as (jitted fn, args)
  originals = steps.make_train_step, steps.make_reward_step, steps.StepMetrics.read

  def recording(make, kind):
    def make_recorded(*a, **k):
      fn = make(*a, **k)

      def recorded(*args):
        if kind == "train":
          calls.append(((fn, args[2:]), []))
        else:
          calls[-1][1].append((fn, args[1:]))
        return fn(*args)
      return recorded
    return make_recorded

  def timed_read(self, logged):
    row = originals[2](self, logged)
    reads.append((len(calls), time.perf_counter()))
    return row

  steps.make_train_step = recording(originals[0], "train")
  steps.make_reward_step = recording(originals[1], "reward")
  steps.StepMetrics.read = timed_read
  try:
    with tempfile.TemporaryDirectory() as workdir:
      search_loop.run(config, workdir)
  finally:
    steps.make_train_step, steps.make_reward_step, steps.StepMetrics.read = originals
  (s0, t0), (s1, t1) = [(s, t) for s, t in reads if s > skip][0], reads[-1]
  loop = (s1 - s0) / (t1 - t0)

  sess = session_lib.build(config)
  tx = steps.make_optimizer(config)
  state = sess.initial_state(tx)
  params = steps.replicate(sess.mesh, state["params"])
  opt_state = steps.replicate(sess.mesh, state["opt_state"])
  start = time.perf_counter()
  for (train_step, train_args), rewards in calls[s0:s1]:
    params, opt_state, metrics = train_step(params, opt_state, *train_args)
    if rewards:  # the controller needs them on the host before the next proposal
      jax.device_get([reward_step(params, *args) for reward_step, args in rewards])
  jax.block_until_ready((params, metrics))
  return loop, (s1 - s0) / (time.perf_counter() - start)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--config", default=DEFAULT_CONFIG)
  parser.add_argument("--steps", type=int, default=100, help="timed steps per phase and round")
  parser.add_argument("--rounds", type=int, default=3,
                      help="loop-then-bare pairs per phase; the median ratio is the result")
  args = parser.parse_args()
  skip = 10  # compilation and the first (slow) steps
  for phase, uniform_fraction in (("uniform warm-up", 1.0), ("controller", 0.0)):
    config = api.get_config(args.config)
    t = config.train
    t.num_steps, t.uniform_fraction = skip + args.steps, uniform_fraction
    t.log_every, t.checkpoint_every = 10, 10**9  # the final step still checkpoints
    config.select = dict(num_candidates=1, top_k=1, score_images=64)  # answer cheaply
    # On a shared 2-core VM the bare step alone moved by 30% between runs: each ratio compares a
    # loop with the replay right after it, and the median over rounds is reported.
    ratios = []
    for r in range(args.rounds):
      loop, bare = loop_and_bare(config, skip)
      ratios.append(loop / bare)
      print(f"{phase:16s} round {r + 1}: loop {loop:6.2f} steps/s  bare step {bare:6.2f} steps/s  "
            f"loop/bare {loop / bare:.3f}", flush=True)
    print(f"{phase:16s} loop/bare median {np.median(ratios):.3f} (min {min(ratios):.3f}, "
          f"max {max(ratios):.3f}; goal >= 0.9)", flush=True)


if __name__ == "__main__":
  main()
