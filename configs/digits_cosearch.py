"""Hardware co-search on digits: the digits supernet, searched jointly with a small systolic array.

Sized for <= 5 minutes on 2 CPU cores including supernet training: 16 accelerators, each with an
80-query inner search (evaluations of the frozen supernet are memoised per architecture, since accuracy
does not depend on the accelerator).

The accelerator choices span what suits an 8x8-pixel network (4x4 to 64x64 arrays, KiB-scale buffers).
The hard area budget (1.2 mm^2) rejects a third of the space (the constraint). The reward's targets
bind: the latency target is met by <1% of random (network, accelerator) pairs (median ~0.3 ms), so
only well-matched pairs reach it; the area target by ~15% of random accelerators; the energy target
(DRAM-dominated, so set by the network's bytes) only by the smallest networks (~20% of those the
search visits). Accuracy is thus traded against cost rather than maximised alone.
"""

import ml_collections

from oneshot.configs.digits import get_config as digits_config


def get_config():
  c = digits_config()

  # The hardware section (oneshot/hardware/schema.py), as a latency-targeted search has it, plus the
  # device space: one choice list per accelerator decision, and the hard area budget (0: none).
  h = c.hardware
  h.accelerator_choices = ml_collections.ConfigDict(dict(
      rows=(4, 8, 16, 32, 64),
      cols=(4, 8, 16, 32, 64),
      ifmap_sram_kb=(8, 16, 32, 64, 128),
      filter_sram_kb=(8, 16, 32, 64, 128),
      ofmap_sram_kb=(4, 8, 16, 32, 64),
      dataflow=("ws", "os", "is"),
      dram_gbps=(2.0, 4.0, 8.0, 16.0),
      clock_mhz=(100.0, 200.0, 400.0, 800.0),
  ))
  h.area_budget_mm2 = 1.2
  # The reward (oneshot/hardware/rewards.py). A target of 0 is unset; costs are in the cost model's
  # units (cost_model 'analytical', or 'table' with a lut.json from `oneshot latency-table`, whose
  # latency then is the measured device's, in ms per batch).
  h.reward = "nahas"             # nahas | tunas | mnas | accuracy
  h.target_latency_ms = 0.03
  h.target_energy_mj = 0.007
  h.target_area_mm2 = 0.4
  h.latency_weight = 0.1         # nahas lambdas: 10% over a target costs 1% accuracy
  h.energy_weight = 0.1
  h.area_weight = 0.1
  h.metric = "latency"           # the cost tunas and mnas use
  h.beta = -0.1                  # tunas
  h.w = -0.07                    # mnas

  c.cosearch = ml_collections.ConfigDict(dict(
      outer_controller="evolution",  # proposes accelerators (controllers/)
      outer_budget=16,               # feasible accelerator proposals
      outer=ml_collections.ConfigDict(dict(   # the outer controller's own settings
          population_size=6, tournament_size=3, learning_rate=0.1, warmup_fraction=0.0)),
      inner_controller="evolution",  # proposes architectures for one accelerator
      inner_steps=10,                # controller updates per accelerator
      inner_paths=8,                 # architectures per update (rounded up to the device count)
      inner=ml_collections.ConfigDict(dict(
          population_size=16, tournament_size=4, learning_rate=0.1, warmup_fraction=0.0)),
      warm_start=4,                  # best architectures so far that open each inner search
      reward_batch_size=0,           # validation examples per reward batch; 0: the whole split
      reward_batches=1,
      infeasible_reward=-1.0,        # fed to the outer controller for an over-budget proposal
      max_proposals=0,               # give up after this many proposals; 0: 50 * outer_budget
      # The accelerator a sequential (architecture-first) flow would fix: benchmarks/cosearch_gain.py.
      baseline_accelerator=ml_collections.ConfigDict(dict(
          rows=16, cols=16, ifmap_sram_kb=32, filter_sram_kb=32, ofmap_sram_kb=16, dataflow="ws",
          dram_gbps=8.0, clock_mhz=400.0)),
  ))
  return c
