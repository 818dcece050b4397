"""`oneshot latency-table`: measure block latencies on this device for the 'table' cost model.

Why a table: the analytical model predicts an accelerator that does not exist yet; a user who deploys on
the device at hand (a CPU, a GPU, a TPU) wants the search to see that device's real costs, which no
closed form captures (XLA fusion, cache effects, kernel launch overheads). TuNAS and OFA do the same:
time every block choice once, then price an architecture as the sum of its blocks' entries, because a
child network runs its blocks one after another and a lookup costs nothing inside a search loop.

An entry is one block position at one (kernel, expansion, width-in, width-out), jitted alone at that
block's input resolution and the config's batch size, in inference form (running-statistics BN, as
deployed), timed as the median of `--repeats` runs after one warm-up. The stem and the head (optional 1x1
conv, global pool, classifier; keyed by its input width) are entries too, so table latencies are whole
networks. A skipped block is the identity and costs 0. Units: milliseconds per batch of `batch_size`.

The table is read, and architectures priced with it, by oneshot/hardware/latency.py.
"""

from __future__ import annotations

import sys
import time
from typing import Any, Sequence

import numpy as np

from oneshot.errors import UserError

from oneshot.hardware.latency import FORMAT


# --- measuring -------------------------------------------------------------------------------------
def main(argv: Sequence[str]) -> int:
  from absl import flags  # pylint: disable=import-outside-toplevel
  from oneshot import configuration  # pylint: disable=import-outside-toplevel

  def define(fv):
    flags.DEFINE_string("out", None, "Where to write the table (JSON).", flag_values=fv)
    flags.DEFINE_integer("batch_size", 0, "Batch size to time at; 0: the config's train.batch_size.",
                         flag_values=fv)
    flags.DEFINE_integer("repeats", 7, "Timed runs per entry (the median is kept).", flag_values=fv)
  fv = configuration.parse_flags(argv, define, command="latency-table", config_required=False)
  if not fv.out:
    raise UserError("--out is required, e.g. --out lut.json")
  if fv.repeats < 1:
    raise UserError(f"--repeats must be >= 1; got {fv.repeats}")
  batch_size = fv.batch_size or int(fv.config.train.batch_size)
  if batch_size <= 0:
    raise UserError(f"--batch_size must be positive; got {batch_size}")
  table = measure(fv.config, batch_size, fv.repeats)
  from oneshot import storage  # pylint: disable=import-outside-toplevel
  storage.write_json(fv.out, table)
  total = sum(e["ms"] for e in table["entries"])
  print(f"timed {len(table['entries'])} entries on {table['device_kind']} at batch {batch_size} in "
        f"{table['wall_seconds']:.1f} s (sum of all entries {total:.2f} ms); wrote {fv.out}")
  return 0


def _specs(space, image_shape: Sequence[int], num_classes: int) -> list[dict[str, Any]]:
  """Every distinct entry the space can use: stem, reachable block shapes, head per input width.

  `shape` (the input without the batch) and `plan`/`head` are for timing and are not written out.
  """
  # pylint: disable-next=import-outside-toplevel
  from oneshot.models.mobilenet_child import BlockPlan, has_residual
  from oneshot.spaces.mobilenet import stage_channels  # pylint: disable=import-outside-toplevel
  sk = space.skeleton
  h, w, c_img = (int(v) for v in image_shape)
  stem, ss = int(sk["stem_filters"]), int(sk["stem_stride"])
  out = [dict(part="stem", block=None, kernel=3, expansion=None, width_in=c_img, width_out=stem,
              resolution=[h, w], stride=ss, shape=(h, w, c_img))]
  h, w = -(-h // ss), -(-w // ss)
  prev = [stem]
  for i, blk in enumerate(sk["blocks"]):
    outs = sorted({stage_channels(blk["filters"], m) for m in sk["width_multipliers"]})
    same_stage = i > 0 and sk["blocks"][i - 1]["stage"] == blk["stage"]
    pairs = [(c, c) for c in outs] if same_stage else [(a, b) for a in prev for b in outs]
    stride = int(blk["stride"])
    for cin, cout in pairs:
      for k in sk["kernel_sizes"]:
        for e in sk["expansion_ratios"]:
          plan = BlockPlan(cin=cin, cout=cout, hidden=cin * int(e), kernel=int(k), stride=stride,
                           residual=has_residual(blk), skip=False)
          out.append(dict(part="block", block=i, kernel=int(k), expansion=int(e), width_in=cin,
                          width_out=cout, resolution=[h, w], stride=stride, shape=(h, w, cin),
                          plan=plan))
    prev = outs
    h, w = -(-h // stride), -(-w // stride)
  head = int(sk.get("head_filters", 0))
  for cin in prev:
    out.append(dict(part="head", block=None, kernel=1, expansion=None, width_in=cin,
                    width_out=num_classes, resolution=[h, w], stride=1, shape=(h, w, cin), head=head))
  return out


def measure(config, batch_size: int, repeats: int) -> dict[str, Any]:
  """Times every entry of the config's mobilenet space on the default device."""
  import jax  # pylint: disable=import-outside-toplevel
  from oneshot import spaces  # pylint: disable=import-outside-toplevel
  from oneshot import data, supernet  # pylint: disable=import-outside-toplevel
  space = spaces.build(config.space)
  if space.name != "mobilenet":
    raise UserError(f"latency tables are for the mobilenet space; the config's space is "
                    f"{space.name!r} (use --config configs/digits.py or another mobilenet config)")
  dataset = data.load(config.dataset)
  depthwise = supernet.resolve_depthwise(config.supernet.depthwise)
  tic = time.time()
  entries = []
  cache: dict[tuple, float] = {}
  specs = _specs(space, dataset.image_shape, dataset.num_classes)
  for n, spec in enumerate(specs):
    module = _module(spec, dataset.num_classes, depthwise)
    key = (repr(module), spec["shape"])
    if key not in cache:
      cache[key] = _time(module, (batch_size,) + spec["shape"], repeats)
    entry = {k: v for k, v in spec.items() if k not in ("plan", "head", "shape")}
    entries.append({**entry, "ms": cache[key]})
    if sys.stderr.isatty():
      sys.stderr.write(f"\r{n + 1}/{len(specs)} entries")
  if sys.stderr.isatty():
    sys.stderr.write("\n")
  device = jax.devices()[0]
  return {"format": FORMAT, "device_kind": device.device_kind, "platform": device.platform,
          "batch_size": batch_size, "repeats": repeats, "depthwise": depthwise,
          "image_shape": list(dataset.image_shape), "num_classes": dataset.num_classes,
          "space": config.space.to_dict() if hasattr(config.space, "to_dict") else dict(config.space),
          "wall_seconds": time.time() - tic, "entries": entries}


def _module(spec, num_classes, depthwise):
  """The flax module of one entry, built from the child network's own layers (inference form)."""
  # pylint: disable=import-outside-toplevel
  import flax.linen as nn
  import jax.numpy as jnp
  from oneshot.models.layers import Classifier, ConvBN

  class Stem(nn.Module):
    cin: int
    cout: int
    stride: int

    @nn.compact
    def __call__(self, x):
      return ConvBN((3, 3, self.cin, self.cout))(x, self.stride, False)

  class Block(nn.Module):
    plan: Any
    depthwise: str

    @nn.compact
    def __call__(self, x):
      p = self.plan
      h = ConvBN((1, 1, p.cin, p.hidden))(x, 1, False)
      h = ConvBN((p.kernel, p.kernel, p.hidden))(h, p.stride, False, self.depthwise)
      h = ConvBN((1, 1, p.hidden, p.cout))(h, 1, False, relu=False)
      return x + h if p.residual else h

  class Head(nn.Module):
    cin: int
    head: int
    num_classes: int

    @nn.compact
    def __call__(self, x):
      cin = self.cin
      if self.head:
        x = ConvBN((1, 1, cin, self.head))(x, 1, False)
        cin = self.head
      return Classifier(cin, self.num_classes)(jnp.mean(x, axis=(1, 2)))

  if spec["part"] == "stem":
    return Stem(int(spec["width_in"]), int(spec["width_out"]), int(spec["stride"]))
  if spec["part"] == "block":
    return Block(spec["plan"], depthwise)
  return Head(int(spec["width_in"]), int(spec["head"]), num_classes)


def _time(module, shape: tuple[int, ...], repeats: int) -> float:
  """Median milliseconds of the jitted forward; weights are random (timing does not read values)."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal(shape, np.float32))
  # eval_shape + numpy fill instead of a jitted init: one compile per entry instead of two.
  abstract = jax.eval_shape(module.init, jax.random.PRNGKey(0), x)
  variables = jax.tree.map(lambda s: jnp.asarray(0.1 * rng.standard_normal(s.shape, np.float32)
                                                 + 1.0), abstract)
  fn = jax.jit(module.apply).lower(variables, x).compile()
  fn(variables, x).block_until_ready()
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn(variables, x).block_until_ready()
    times.append(time.perf_counter() - t0)
  return float(np.median(times) * 1e3)
