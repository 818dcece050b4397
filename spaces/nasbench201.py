"""The NAS-Bench-201 cell: 6 edges of a 4-node DAG, 5 ops each (15,625 architectures).

Edge order and the string format follow the benchmark exactly so tables and papers line up:
`|op~0|+|op~0|op~1|+|op~0|op~1|op~2|` lists edges (1<-0), (2<-0), (2<-1), (3<-0), (3<-1), (3<-2).
"""

from __future__ import annotations

import numbers
import re
from typing import Any, Mapping, Sequence

from oneshot.errors import UserError
from oneshot.spaces.core import DNA, Decision, Space

OPS = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
EDGES = ((1, 0), (2, 0), (2, 1), (3, 0), (3, 1), (3, 2))
_NODE = re.compile(r"^\|([a-z0-9_]+~\d+\|)+$")


class NasBench201Space(Space):
  """Adds the benchmark's architecture string to the generic space."""

  def format(self, dna) -> str:
    ops = [OPS[i] for i in self.validate(dna)]
    nodes, k = [], 0
    for node in (1, 2, 3):
      parts = []
      for src in range(node):
        parts.append(f"{ops[k]}~{src}")
        k += 1
      nodes.append("|" + "|".join(parts) + "|")
    return "+".join(nodes)

  def _parse_custom(self, text: str) -> Sequence[int] | None:
    if "|" not in text:
      return None
    example = "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|"
    nodes = text.split("+")
    if len(nodes) != 3 or not all(_NODE.match(n) for n in nodes):
      raise UserError(f"malformed NAS-Bench-201 string {text!r}: expected 3 nodes joined by '+', "
                      f"like {example}")
    dna: list[int] = []
    for node, part in enumerate(nodes, start=1):
      edges = part.strip("|").split("|")
      if len(edges) != node:
        raise UserError(f"malformed NAS-Bench-201 string {text!r}: node {node} needs {node} "
                        f"inputs, got {len(edges)}; e.g. {example}")
      for src, edge in enumerate(edges):
        op, _, idx = edge.partition("~")
        if op not in OPS:
          raise UserError(f"unknown NAS-Bench-201 op {op!r} in {text!r}; ops are {list(OPS)}")
        if int(idx) != src:
          raise UserError(f"NAS-Bench-201 edge {edge!r} of node {node} should read from node "
                          f"{src}, in order; e.g. {example}")
        dna.append(OPS.index(op))
    return dna


def build(config: Mapping[str, Any]) -> Space:
  decisions = tuple(Decision(f"edge({dst}<-{src})", OPS) for dst, src in EDGES)
  # Defaults are NAS-Bench-201's CIFAR skeleton (C=16, N=5); digits configs set smaller ones.
  skeleton = {}
  for field, default in (("channels", 16), ("cells_per_stage", 5)):
    value = config.get(field, default)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
      raise UserError(f"--config.space.{field}={value!r} is not a positive integer; e.g. "
                      f"--config.space.{field}={default}")
    skeleton[field] = int(value)
  return NasBench201Space("nasbench201", decisions, skeleton)


def dna_from_string(text: str) -> DNA:
  return build(dict(channels=16, cells_per_stage=5)).parse(text)
