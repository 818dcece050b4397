"""The layer table of child networks, for a whole batch of DNAs at once.

The cost model needs every layer's loop bounds (R, S, C, M, E, F) for each sampled architecture, and a
co-search asks for 1e4-1e5 of them per step, so this is built column by column with numpy over the batch
instead of walking one network at a time. Layers that a DNA removes (a skipped block, a `none` or
`skip_connect` edge) stay in the table as padding with `valid == False`, so every architecture of a
space has the same number of slots L and the arrays stay rectangular.

Spatial sizes never depend on the DNA in these spaces (strides are fixed by the skeleton), so kind, H, W,
E, F and stride are returned as read-only broadcast views for mobilenet: [N, L] in shape, one row in
memory. Channels, kernel sizes and the valid mask are real [N, L] arrays.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from oneshot.errors import UserError
from oneshot.spaces import mobilenet, nasbench201
from oneshot.spaces.core import Space

CONV, DEPTHWISE, DENSE, POOL = 0, 1, 2, 3
KIND_NAMES = ("conv", "depthwise", "dense", "pool")
# H, W: input size; E, F: output size; stride: of the window (a global pool's stride is its window).
FIELDS = ("kind", "R", "S", "C", "M", "H", "W", "E", "F", "stride", "valid")
# The spaces this module can describe; the layer table's users (cost model, sandwich warm-up) ask here.
SPACES = ("mobilenet", "nasbench201")


def layer_table(space: Space, dnas: np.ndarray, image_shape: Sequence[int] = (224, 224, 3),
                num_classes: int = 1000) -> dict[str, np.ndarray]:
  """Per-layer fields (see FIELDS), each [N, L], for DNAs [N, D] of a mobilenet or nasbench201 space."""
  dnas = space.validate_batch(dnas)
  if len(image_shape) != 3 or min(int(v) for v in image_shape) <= 0:
    raise UserError(f"image_shape must be (height, width, channels), all positive; got "
                    f"{tuple(image_shape)}")
  if int(num_classes) <= 0:
    raise UserError(f"num_classes must be positive; got {num_classes}")
  table = _Table(len(dnas))
  columns = np.ascontiguousarray(dnas.T)  # [D, N]: each decision contiguous for the lookups
  if space.name == "mobilenet":
    _mobilenet(table, space, columns, tuple(int(v) for v in image_shape), int(num_classes))
  elif space.name == "nasbench201":
    _nasbench201(table, space, columns, tuple(int(v) for v in image_shape), int(num_classes))
  else:
    raise UserError(f"no layer table for space {space.name!r}; the cost model knows 'mobilenet' "
                    "and 'nasbench201'")
  return table.arrays()


def weight_counts(table: Mapping[str, np.ndarray]) -> np.ndarray:
  """[N] weights of each architecture's valid conv, depthwise and dense layers (biases and BatchNorm
  left out): the size order the sandwich rule's largest and smallest networks are chosen by."""
  kind, r, s, c, m = (np.asarray(table[k], np.int64) for k in ("kind", "R", "S", "C", "M"))
  per_layer = np.select([kind == CONV, kind == DEPTHWISE, kind == DENSE],
                        [r * s * c * m, r * s * c, c * m], 0)
  return (per_layer * table["valid"]).sum(axis=1)


def describe(table: dict[str, np.ndarray], row: int = 0) -> list[str]:
  """Human-readable valid layers of one architecture, for debugging and docs."""
  lines = []
  for l in range(table["kind"].shape[1]):
    if table["valid"][row, l]:
      f = {k: int(v[row, l]) for k, v in table.items()}
      lines.append(f"{KIND_NAMES[f['kind']]:<9} {f['R']}x{f['S']} {f['C']}->{f['M']} "
                   f"{f['H']}x{f['W']} -> {f['E']}x{f['F']} /{f['stride']}")
  return lines


class _Table:
  """Accumulates one slot (column) at a time; a field given as a scalar stays un-materialised."""

  def __init__(self, n: int):
    self.n = n
    self.cols: dict[str, list[Any]] = {f: [] for f in FIELDS}

  def add(self, kind, r, c, m, h, e, stride, valid=True, w=None, f=None, s=None):
    values = dict(kind=kind, R=r, S=r if s is None else s, C=c, M=m, H=h, W=h if w is None else w,
                  E=e, F=e if f is None else f, stride=stride, valid=valid)
    for k, v in values.items():
      self.cols[k].append(v)

  def arrays(self) -> dict[str, np.ndarray]:
    out = {}
    for k, cols in self.cols.items():
      dtype = bool if k == "valid" else np.int32
      if all(np.ndim(c) == 0 for c in cols):
        out[k] = np.broadcast_to(np.asarray(cols, dtype)[None, :], (self.n, len(cols)))
      else:
        out[k] = np.stack([np.broadcast_to(np.asarray(c, dtype), (self.n,)) for c in cols], 1)
    return out


def _lookup(space: Space, columns: np.ndarray, name: str, fn=lambda v: v, dtype=np.int64):
  """The decision's value for every DNA ([D, N] columns), through a small table: exact, one gather."""
  j = space.names.index(name)
  table = np.array([fn(c) for c in space.decisions[j].choices], dtype)
  return table[columns[j]]


def _same(size: int, stride: int) -> int:
  return -(-size // stride)


def _mobilenet(t: _Table, space: Space, columns: np.ndarray, image: tuple[int, int, int],
               num_classes: int) -> None:
  sk = space.skeleton
  h, w, c_img = image
  ss = int(sk["stem_stride"])
  eh, ew = _same(h, ss), _same(w, ss)
  t.add(CONV, 3, c_img, int(sk["stem_filters"]), h, eh, ss, w=w, f=ew)
  h, w = eh, ew
  cin: np.ndarray | int = int(sk["stem_filters"])
  names = set(space.names)
  for i, block in enumerate(sk["blocks"]):
    s = block["stage"]
    width = _lookup(space, columns, f"stage{s}/width",
                    lambda m, f=block["filters"]: mobilenet.stage_channels(f, m))
    k = _lookup(space, columns, f"block{i}/kernel")
    e = _lookup(space, columns, f"block{i}/expansion", float, np.float64)
    skip = (_lookup(space, columns, f"block{i}/skip", bool, bool) if f"block{i}/skip" in names
            else np.zeros(columns.shape[1], bool))
    keep = ~skip
    mid = np.rint(np.asarray(cin) * e).astype(np.int64)
    stride = int(block["stride"])
    eh, ew = _same(h, stride), _same(w, stride)
    t.add(CONV, 1, cin, mid, h, h, 1, keep, w=w, f=w)
    t.add(DEPTHWISE, k, mid, mid, h, eh, stride, keep, w=w, f=ew)
    t.add(CONV, 1, mid, width, eh, eh, 1, keep, w=ew, f=ew)
    cin = np.where(skip, cin, width)
    h, w = eh, ew
  if int(sk["head_filters"]) > 0:
    t.add(CONV, 1, cin, int(sk["head_filters"]), h, h, 1, w=w, f=w)
    cin = int(sk["head_filters"])
  t.add(POOL, h, cin, cin, h, 1, max(h, w), w=w, f=1, s=w)
  t.add(DENSE, 1, cin, num_classes, 1, 1, 1)


def _nasbench201(t: _Table, space: Space, columns: np.ndarray, image: tuple[int, int, int],
                 num_classes: int) -> None:
  h, w, c_img = image
  c = int(space.skeleton["channels"])
  cells = int(space.skeleton["cells_per_stage"])
  ops = [_lookup(space, columns, name, nasbench201.OPS.index) for name in space.names]
  conv1, conv3 = nasbench201.OPS.index("nor_conv_1x1"), nasbench201.OPS.index("nor_conv_3x3")
  pool = nasbench201.OPS.index("avg_pool_3x3")
  kind = [np.where(op == pool, POOL, CONV) for op in ops]
  size = [np.where(op == conv1, 1, 3) for op in ops]
  valid = [(op == conv1) | (op == conv3) | (op == pool) for op in ops]
  t.add(CONV, 3, c_img, c, h, h, 1, w=w, f=w)
  for stage in range(3):
    if stage:
      # ResNet basic block with stride 2 (NAS-Bench-201's ResNetBasicblock) between stages.
      eh, ew = _same(h, 2), _same(w, 2)
      t.add(CONV, 3, c, 2 * c, h, eh, 2, w=w, f=ew)
      t.add(CONV, 3, 2 * c, 2 * c, eh, eh, 1, w=ew, f=ew)
      t.add(POOL, 2, c, c, h, eh, 2, w=w, f=ew)
      t.add(CONV, 1, c, 2 * c, eh, eh, 1, w=ew, f=ew)
      c, h, w = 2 * c, eh, ew
    for _ in range(cells):
      for j in range(len(ops)):
        t.add(kind[j], size[j], c, c, h, h, 1, valid[j], w=w, f=w)
  t.add(POOL, h, c, c, h, 1, max(h, w), w=w, f=1, s=w)
  t.add(DENSE, 1, c, num_classes, 1, 1, 1)


def num_slots(space: Space) -> int:
  """L for a space, without building a table (for sizing buffers)."""
  if space.name == "mobilenet":
    return 1 + 3 * len(space.skeleton["blocks"]) + (space.skeleton["head_filters"] > 0) + 2
  if space.name == "nasbench201":
    return 1 + 3 * space.skeleton["cells_per_stage"] * 6 + 2 * 4 + 2
  raise UserError(f"no layer table for space {space.name!r}")

