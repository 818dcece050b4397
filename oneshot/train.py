"""`oneshot train`: train an exported subnet stand-alone, from scratch or from its exported weights.

The same data pipeline as the search (global batch `step` of the train split is a pure function of seed
and step), the config's optimizer, and orbax checkpoints under WORKDIR/checkpoints, so a killed run
resumes exactly where it stopped. BatchNorm keeps its running averages the usual way (momentum EMA in
train mode) and the final accuracies use them (eval mode). A single device is plenty for a child.

Length: `config.train.standalone_steps` when the config has it (and it is > 0), else `train.num_steps`;
the learning-rate schedule spans that many steps.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import flags

from oneshot import checkpoint, configuration, data, runtime, steps, storage
from oneshot import child as child_lib
from oneshot import workdir as workdir_lib
from oneshot.errors import UserError

SETUP_FILE = "train_setup.json"
RESULT_FILE = "train_result.json"


def main(argv: Sequence[str]) -> int:
  def define(fv):
    flags.DEFINE_string("arch", None, "An export directory (oneshot export --out).", flag_values=fv)
    flags.DEFINE_string("workdir", None, "Output directory; an existing one is resumed.",
                        flag_values=fv)
    flags.DEFINE_bool("init_from_export", False,
                      "Fine-tune from the exported weights instead of a fresh initialisation.",
                      flag_values=fv)
  fv = configuration.parse_flags(argv, define, command="train", config_required=False)
  if not fv.arch:
    raise UserError("--arch is required: a directory written by `oneshot export --out DIR`")
  if not fv.workdir:
    raise UserError("--workdir is required, e.g. --workdir workdirs/digits-child")
  result = run(fv.config, fv.arch, fv.workdir, init_from_export=fv.init_from_export)
  if result is None:
    return 0
  print(f"trained {result['space']} {result['string']} for {result['steps']} steps "
        f"({result['wall_seconds']:.0f} s): test accuracy {result['test_accuracy']:.4f}, validation "
        f"{result['validation_accuracy']:.4f}; wrote {storage.as_path(fv.workdir) / RESULT_FILE}")
  return 0


def run(config: ml_collections.ConfigDict, arch_dir: storage.PathLike, workdir: storage.PathLike, *,
        init_from_export: bool = False, stop_after: int | None = None) -> dict | None:
  """Trains (or resumes); returns train_result.json's dict, or None when stopped early.

  `stop_after` ends the run after that many steps, as a preemption would (resume tests).
  """
  with workdir_lib.held():  # the workdir stays locked from its claim until the run returns
    return _run(config, arch_dir, workdir, init_from_export, stop_after)


def _run(config: ml_collections.ConfigDict, arch_dir: storage.PathLike, workdir: storage.PathLike,
         init_from_export: bool, stop_after: int | None) -> dict | None:
  runtime.return_compile_memory()
  record = child_lib.read_architecture(arch_dir)
  dataset = data.load(config.dataset)
  _check_dataset(record, dataset)
  model, exported = child_lib.load(arch_dir)
  t = config.train
  num_steps = steps.standalone_steps(config)
  for name in ("batch_size", "eval_batch_size", "checkpoint_every", "log_every"):
    if int(t[name]) <= 0:
      raise UserError(f"--config.train.{name} must be positive, got {t[name]}")
  setup = {"space": record["space"], "dna": record["dna"], "string": record["string"],
           "arch": os.fspath(storage.as_path(arch_dir)), "init_from_export": bool(init_from_export),
           "steps": num_steps}
  # A workdir resumes only the run it started: same architecture, initialisation, length and config.
  workdir = workdir_lib.claim(workdir, config, "train", setup=setup)
  tx = steps.make_optimizer(config, num_steps)
  if init_from_export:
    variables = exported
  else:
    variables = jax.jit(model.init)(jax.random.PRNGKey(config.seed),
                                    jnp.zeros((1,) + dataset.image_shape, jnp.float32))
  state = {"params": variables["params"], "batch_stats": variables["batch_stats"],
           "opt_state": tx.init(variables["params"]), "step": np.zeros((), np.int32),
           "wall_seconds": np.zeros((), np.float32)}
  mngr = checkpoint.manager(workdir)
  restored = checkpoint.restore_latest(mngr, state)
  if restored is not None:
    state = restored[1]
    print(f"resuming {workdir} from step {int(state['step'])}", file=sys.stderr)
  else:  # the setup first: it is what marks the directory as a train workdir
    storage.write_json(workdir / SETUP_FILE, setup)
    storage.write_text(workdir / "config.json", configuration.to_json(config))
  start = int(state["step"])

  train_step = steps.make_child_train_step(model, tx)
  metrics_log = storage.MetricsLog(workdir / "metrics.jsonl", start, workdir / "tensorboard")
  progress = storage.Progress(num_steps, t.log_every)
  wall_start = time.time() - float(state["wall_seconds"])
  pending = steps.StepMetrics(t.max_nonfinite_steps)  # read on logged/checkpointed/last steps only
  text = "(compiling)"
  try:
    for step in range(start, num_steps):
      batch = dataset.batch("train", step, t.batch_size, config.seed)
      state["params"], state["batch_stats"], state["opt_state"], m = train_step(
          state["params"], state["batch_stats"], state["opt_state"], batch["image"], batch["label"])
      pending.add(step, m)
      done = step + 1
      state["step"] = np.asarray(done, np.int32)
      state["wall_seconds"] = np.asarray(time.time() - wall_start, np.float32)
      logged = done % t.log_every == 0 or done == num_steps
      saved = done % t.checkpoint_every == 0 or done == num_steps
      stopping = stop_after is not None and done - start >= stop_after and done < num_steps
      if logged or saved or stopping:
        row = {"step": done, **pending.read(logged)}
        text = f"loss {row['loss']:.3f} acc {row['accuracy']:.3f}"
        if logged:
          metrics_log.write(row)
      progress.update(done, text)
      if saved or stopping:
        metrics_log.flush()
        checkpoint.save(mngr, done, state)
        pending.restart_clock()
      if stopping:
        progress.close()
        print(f"stopped at step {done} and checkpointed; run the same command to resume",
              file=sys.stderr)
        return None
  finally:
    metrics_log.close()
  progress.close()
  variables = {"params": state["params"], "batch_stats": state["batch_stats"]}
  runner = child_lib.ChildRunner(model)
  result = {**{k: setup[k] for k in ("space", "dna", "string", "arch", "init_from_export")},
            "test_accuracy": runner.accuracy(variables, dataset, "test", t.eval_batch_size),
            "validation_accuracy": runner.accuracy(variables, dataset, "validation",
                                                   t.eval_batch_size),
            "steps": int(state["step"]), "wall_seconds": time.time() - wall_start,
            "num_params": child_lib.count_params(state["params"])}
  storage.write_json(workdir / RESULT_FILE, result)
  return result


def _check_dataset(record: dict, dataset: data.Dataset) -> None:
  if (dataset.num_classes != int(record["num_classes"]) or
      list(dataset.image_shape) != [int(d) for d in record["image_shape"]]):
    raise UserError(f"the export was made for {record.get('dataset')!r} ({record['num_classes']} "
                    f"classes, images {tuple(record['image_shape'])}) but --config.dataset gives "
                    f"{dataset.name!r} ({dataset.num_classes} classes, images {dataset.image_shape}); "
                    "use the search's dataset config")


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
