"""Ground-truth tables in latency bands: architectures of equal modelled latency, trained well, several
seeds each, written as one CSV row per (architecture, seed).

Why bands: a latency target holds the cost fixed, so the question a hardware-aware search must answer
is which network is best *at that latency*; unconstrained rankings are won by size. TuNAS compares
against random search the same way (only architectures within a narrow window of the target count).

The table is data, committed beside the benchmarks, so that any supernet or search is judged against
it in minutes (`oneshot rank --table`) instead of retraining children for every measurement.

Rules the builder keeps:
* **Sampling**: `band_architectures` draws uniformly among the distinct *networks* of the space whose
  modelled latency lies within +-`width` of the band's target: uniform DNAs, each accepted with
  probability 1/(number of DNAs that build the same network), then filtered by latency, duplicates
  dropped. Deterministic from its seed.
* **Training** (`Trainer`): each child built as its own network and trained from scratch with
  `oneshot train`'s step, the config's optimizer and schedule stretched over `steps`, BatchNorm
  recalibrated on the
  first `RECALIBRATE_BATCHES` train batches, then validation and test accuracy and loss. Seed s sets the
  initialisation (folded with the DNA, so a row does not depend on which other rows exist) and the
  data order.
* **Resume**: rows already in the file (same dna, seed and steps) are skipped; new rows are appended
  and flushed one at a time, so a killed build loses at most the rows in flight.
* **Workers**: `workers` processes, each pinned to one core with XLA's single-threaded CPU runtime, so
  a row's numbers do not depend on the machine's load or core count.
"""

from __future__ import annotations

import csv
import dataclasses
import os
import sys
import time
import zlib
from typing import Any, Iterable, Sequence

import numpy as np

from oneshot.errors import UserError
from oneshot.spaces.core import DNA, Space

COLUMNS = ("band_ms", "dna", "string", "latency_ms", "num_params", "flops", "seed", "steps",
           "validation_accuracy", "validation_loss", "test_accuracy", "test_loss", "train_seconds")
KEY = ("dna", "seed", "steps")           # what identifies a row; everything else is measured
REQUIRED = KEY + ("band_ms", "latency_ms", "num_params", "flops", "test_accuracy")
RECALIBRATE_BATCHES = 20                 # as `oneshot rank` and the search's finalists
UNCONSTRAINED = 0.0                      # band_ms of architectures drawn without a latency window


@dataclasses.dataclass(frozen=True)
class Job:
  band_ms: float
  dna: DNA
  seed: int
  steps: int

  @property
  def key(self) -> tuple[str, str, str]:
    return (format_dna(self.dna), str(self.seed), str(self.steps))


def format_dna(dna: Iterable[int]) -> str:
  return ",".join(str(int(c)) for c in dna)


def parse_dna(text: str) -> DNA:
  return tuple(int(c) for c in text.split(","))


def latency_function(config, space: Space, image_shape, num_classes: int):
  """dnas [N, D] -> (latency_ms [N], flops [N]) on the config's device, the cost model that
  `hardware.target_latency_ms` uses (flops = 2 x multiply-accumulates)."""
  from oneshot.hardware import target  # pylint: disable=import-outside-toplevel
  section = dict(config.hardware.to_dict())
  section["target_latency_ms"] = 1.0  # any positive value: costs do not depend on it
  latency = target.LatencyTarget(section, space, image_shape, num_classes)

  def costs(dnas):
    out = latency.costs(np.asarray(dnas, np.int32))
    return out["latency_ms"].astype(np.float64), 2.0 * out["macs"].astype(np.float64)

  return costs


def band_architectures(space: Space, costs, target_ms: float, width: float, num: int,
                       seed: int) -> list[DNA]:
  """`num` distinct networks drawn uniformly among those whose latency is within target*(1 +- width)
  (target_ms = 0: no latency window). See the module docstring for the sampler."""
  rng = np.random.default_rng([seed, int(round(target_ms * 1e6))])
  chosen, seen = [], set()
  multiplicity = lambda dnas: np.prod(np.where(space.active(dnas), 1, space.num_choices[None]), 1)
  for _ in range(200):
    dnas = space.canonical(rng.integers(space.num_choices[None], size=(4096, space.num_decisions)))
    keep = rng.random(len(dnas)) < 1.0 / multiplicity(dnas)
    if target_ms > 0:
      keep &= np.abs(costs(dnas)[0] / target_ms - 1.0) <= width
    for dna in dnas[keep]:
      dna = tuple(int(c) for c in dna)
      if dna not in seen and space.is_valid(dna):
        seen.add(dna)
        chosen.append(dna)
        if len(chosen) == num:
          return chosen
  raise UserError(f"found only {len(chosen)} architectures within {width:.0%} of {target_ms} ms; "
                  "widen the band or pick a target inside the space's latency range")


def plan(space: Space, costs, targets: Sequence[float], width: float, archs_per_band: int,
         seeds: Sequence[int], steps: Sequence[int], sample_seed: int) -> list[Job]:
  """Every job of the table, in the order they are trained: step lengths shortest first, then
  architecture by architecture alternating the bands, all seeds of an architecture together, so a
  partial table holds whole architectures of every band."""
  per_band = [band_architectures(space, costs, t, width, archs_per_band, sample_seed)
              for t in targets]
  jobs = []
  for n in sorted(steps):
    for i in range(archs_per_band):
      for t, archs in zip(targets, per_band):
        jobs += [Job(float(t), archs[i], int(s), int(n)) for s in seeds]
  return jobs


def read_table(path: str | os.PathLike) -> list[dict[str, str]]:
  """The rows of a table (strings, as written); [] for a missing file. A row with missing columns (a
  build killed mid-write) is dropped, so it is trained again."""
  if not os.path.exists(path):
    return []
  with open(path, newline="", encoding="utf-8") as f:
    reader = csv.DictReader(f)
    missing = [c for c in REQUIRED if c not in (reader.fieldnames or ())]
    if missing:
      raise UserError(f"{path} is not a band table (no {missing[0]!r} column); give a CSV written "
                      "by the band builder, or a new file name")
    # A short row (None in its last fields) is a build killed mid-write; required values must be set.
    return [row for row in reader if None not in row.values() and
            all(row.get(c) not in (None, "") for c in REQUIRED)]


class Trainer:
  """Stand-alone training and scoring of any child of one config's space, in this process.

  The child is its own Flax model (`supernet.child_model`, the network `oneshot export` writes), trained
  with `oneshot train`'s step: one compilation per architecture, which a long training amortises, and
  each child computes only its own widths (a supernet path computes the widest and masks)."""

  def __init__(self, config):
    from oneshot import data, spaces  # pylint: disable=import-outside-toplevel
    self.config = config
    self.dataset = data.load(config.dataset)
    self.space = spaces.build(config.space)
    self._compiled = (None, None)  # ((dna, steps), (model, step, tx, runner)) of the last architecture

  def _child(self, dna: DNA, steps: int):
    """The child's model, train step, optimizer and runner, compiled once for all its seeds."""
    # pylint: disable=import-outside-toplevel
    from oneshot import steps as steps_lib, supernet
    from oneshot import child as child_lib
    if self._compiled[0] != (dna, steps):
      ds = self.dataset
      model = supernet.child_model(self.space, dna, ds.num_classes, ds.image_shape[-1],
                                   self.config.supernet.depthwise)
      tx = steps_lib.make_optimizer(self.config, steps)
      self._compiled = ((dna, steps), (model, steps_lib.make_child_train_step(model, tx), tx,
                                       child_lib.ChildRunner(model)))
    return self._compiled[1]

  def run(self, job: Job) -> dict[str, Any]:
    # pylint: disable=import-outside-toplevel
    import jax
    import jax.numpy as jnp
    from oneshot import child as child_lib
    t, ds = self.config.train, self.dataset
    tic = time.time()
    model, step, tx, runner = self._child(job.dna, job.steps)
    key = jax.random.fold_in(jax.random.PRNGKey(job.seed), zlib.crc32(format_dna(job.dna).encode()))
    variables = jax.jit(model.init)(key, jnp.zeros((1,) + tuple(ds.image_shape), jnp.float32))
    params, stats = variables["params"], variables["batch_stats"]
    opt_state = tx.init(params)
    for i in range(job.steps):
      batch = ds.batch("train", i, t.batch_size, job.seed)
      params, stats, opt_state, _ = step(params, stats, opt_state, batch["image"], batch["label"])
    recal = [ds.batch("train", i, t.batch_size, job.seed) for i in range(RECALIBRATE_BATCHES)]
    child = runner.recalibrate(jax.device_get({"params": params, "batch_stats": stats}), recal)
    val = runner.evaluate(child, ds, "validation", t.eval_batch_size)
    test = runner.evaluate(child, ds, "test", t.eval_batch_size)
    return {"validation_accuracy": f"{val['accuracy']:.6f}", "validation_loss": f"{val['loss']:.6f}",
            "test_accuracy": f"{test['accuracy']:.6f}", "test_loss": f"{test['loss']:.6f}",
            "num_params": str(child_lib.count_params(child["params"])),
            "train_seconds": f"{time.time() - tic:.1f}"}


_WORKER: Trainer | None = None


def _pin_worker(config_dict: dict, cores: Any) -> None:
  """Pool initializer: one core (the next free one of `cores`) and a single-threaded XLA runtime. A
  worker ends with the build (Linux's parent-death signal): a killed build leaves no orphan training."""
  if sys.platform.startswith("linux"):
    import ctypes  # pylint: disable=import-outside-toplevel
    import signal  # pylint: disable=import-outside-toplevel
    ctypes.CDLL(None).prctl(1, int(signal.SIGTERM))  # 1 = PR_SET_PDEATHSIG
  with cores.get_lock():
    core = cores.value
    cores.value += 1
  available = sorted(os.sched_getaffinity(0))
  os.sched_setaffinity(0, {available[core % len(available)]})
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             " --xla_cpu_multi_thread_eigen=false").strip()
  import ml_collections  # pylint: disable=import-outside-toplevel
  global _WORKER
  _WORKER = Trainer(ml_collections.ConfigDict(config_dict))


def _run_in_worker(group: Sequence[Job]) -> list[tuple[Job, dict]]:
  return [(job, _WORKER.run(job)) for job in group]


def build(config, out: str | os.PathLike, jobs: Sequence[Job], costs, workers: int = 2,
          log=sys.stderr) -> int:
  """Trains every job not yet in `out` and appends its row; returns the number of rows written.
  workers = 0 trains in this process (tests); N > 0 uses N pinned worker processes."""
  from oneshot import spaces  # pylint: disable=import-outside-toplevel
  space = spaces.build(config.space)
  done = {(r["dna"], r["seed"], r["steps"]) for r in read_table(out)}
  todo = [j for j in jobs if j.key not in done]
  print(f"{len(jobs) - len(todo)} of {len(jobs)} rows already in {out}; training {len(todo)}",
        file=log)
  if not todo:
    return 0
  _drop_partial_line(out)
  new_file = not os.path.exists(out) or os.path.getsize(out) == 0
  written = 0
  with open(out, "a", newline="", encoding="utf-8") as f:
    writer = csv.DictWriter(f, fieldnames=COLUMNS)
    if new_file:
      writer.writeheader()
      f.flush()
    for job, measured in _results(config, todo, workers):
      latency, flops = costs(np.asarray(job.dna)[None])
      row = {"band_ms": f"{job.band_ms:g}", "dna": job.key[0], "seed": job.key[1],
             "steps": job.key[2], "string": space.format(job.dna),
             "latency_ms": f"{latency[0]:.6f}", "flops": f"{flops[0]:.0f}", **measured}
      writer.writerow(row)
      f.flush()
      written += 1
      print(f"[{written}/{len(todo)}] band {row['band_ms']} {row['string']} seed {job.seed} "
            f"steps {job.steps}: test {row['test_accuracy']} ({row['train_seconds']} s)", file=log)
  return written


def _drop_partial_line(path: str | os.PathLike) -> None:
  """A build killed mid-write leaves a last line without its newline: cut it, so the next row starts
  on a line of its own (that job is trained again)."""
  if not os.path.exists(path):
    return
  with open(path, "rb+") as f:
    data = f.read()
    if data and not data.endswith(b"\n"):
      f.truncate(data.rfind(b"\n") + 1)


def _results(config, todo: Sequence[Job], workers: int):
  if workers == 0:
    import ml_collections  # pylint: disable=import-outside-toplevel
    trainer = Trainer(ml_collections.ConfigDict(config.to_dict()))
    for job in todo:
      yield job, trainer.run(job)
    return
  import concurrent.futures  # pylint: disable=import-outside-toplevel
  import multiprocessing  # pylint: disable=import-outside-toplevel
  ctx = multiprocessing.get_context("spawn")  # a fresh JAX per worker: forked JAX is unsafe
  cores = ctx.Value("i", 0)
  with concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx, initializer=_pin_worker,
                                              initargs=(config.to_dict(), cores)) as pool:
    # Work goes out an architecture at a time (its seeds share one compilation), at most two per
    # worker in flight, so an interrupted build loses few rows.
    groups = [[j for j in todo if (j.dna, j.steps) == key]
              for key in dict.fromkeys((j.dna, j.steps) for j in todo)]
    pending = set()
    while groups or pending:
      while groups and len(pending) < 2 * workers:
        pending.add(pool.submit(_run_in_worker, groups.pop(0)))
      finished, pending = concurrent.futures.wait(pending,
                                                  return_when=concurrent.futures.FIRST_COMPLETED)
      for future in finished:
        yield from future.result()


