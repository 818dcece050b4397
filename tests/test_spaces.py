import json

import numpy as np
import pytest

from oneshot import spaces
from oneshot.errors import UserError
from oneshot.spaces.nasbench201 import OPS

NB201 = spaces.build({"name": "nasbench201", "channels": 16, "cells_per_stage": 5})
EXAMPLE = "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|"


def mobilenet():
  from oneshot.configs.digits import get_config
  return spaces.build(get_config().space)


def test_nasbench201_has_15625_points_and_standard_edge_order():
  assert NB201.size == 15625
  assert NB201.names == ["edge(1<-0)", "edge(2<-0)", "edge(2<-1)", "edge(3<-0)", "edge(3<-1)",
                         "edge(3<-2)"]
  assert len(NB201.enumerate()) == 15625


def test_nasbench201_string_round_trip():
  dna = NB201.parse(EXAMPLE)
  assert [OPS[i] for i in dna] == ["nor_conv_3x3", "nor_conv_3x3", "avg_pool_3x3", "skip_connect",
                                   "nor_conv_3x3", "skip_connect"]
  assert NB201.format(dna) == EXAMPLE
  for dna in NB201.sample(np.random.default_rng(0), 50):
    assert NB201.parse(NB201.format(dna)) == tuple(dna)


@pytest.mark.parametrize("text", ["|nor_conv_3x3~0|+|bogus~0|avg_pool_3x3~1|+|a~0|b~1|c~2|",
                                  "|nor_conv_3x3~0|+|nor_conv_3x3~0|",
                                  "|nor_conv_3x3~1|+|nor_conv_3x3~0|avg_pool_3x3~1|+|none~0|none~1|none~2|",
                                  "0,1,x"])
def test_malformed_strings_raise_one_line_user_error(text):
  with pytest.raises(UserError) as e:
    NB201.parse(text)
  assert "\n" not in str(e.value)


def test_dna_json_and_values_round_trip():
  space = mobilenet()
  rng = np.random.default_rng(1)
  for _ in range(20):
    dna = space.sample(rng)
    obj = json.loads(json.dumps(space.to_json(dna)))
    assert space.from_json(obj) == dna
    assert space.from_values(obj["architecture"]) == dna
    assert space.parse(space.format(dna)) == dna


def test_validate_names_the_bad_entry():
  space = mobilenet()
  with pytest.raises(UserError, match="entries but space"):
    space.validate([0] * (space.num_decisions - 1))
  bad = [0] * space.num_decisions
  bad[1] = 9
  with pytest.raises(UserError, match=r"block0/kernel"):
    space.validate(bad)


def test_sampling_is_uniform_per_decision():
  space = mobilenet()
  samples = space.sample(np.random.default_rng(0), 3000)
  for i, k in enumerate(space.num_choices):
    counts = np.bincount(samples[:, i], minlength=k)
    assert len(counts) == k and counts.min() > 3000 / k * 0.85


def test_mutate_changes_exactly_one_decision():
  space = mobilenet()
  rng = np.random.default_rng(0)
  for _ in range(50):
    dna = space.sample(rng)
    child = space.mutate(dna, rng)
    assert sum(a != b for a, b in zip(dna, child)) == 1


def test_mobilenet_space_is_built_from_config():
  space = mobilenet()
  # 3 stage widths + 6 blocks x (kernel, expansion) + 3 droppable blocks.
  assert space.num_decisions == 3 + 12 + 3
  assert [b["stride"] for b in space.skeleton["blocks"]] == [1, 1, 2, 1, 2, 1]


def test_unknown_space_is_a_user_error():
  with pytest.raises(UserError, match="unknown space 'nope'"):
    spaces.build({"name": "nope"})
