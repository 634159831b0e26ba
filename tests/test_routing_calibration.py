"""The calibrated presets reproduce the reference trace statistics.

Targets and tolerances: routing_stats.TARGETS (from
shared/reference/routing_stats.md).  Generated at each trace set's E, k, MoE
layers and token counts, averaged over replicate groups, with a key other than
the one used for fitting (benchmarks/routing_calibrate.py uses key 0).
"""
from __future__ import annotations

import jax
import pytest

from ndpsim import base
from ndpsim.workload import routing as R
from ndpsim.workload import routing_stats as RS

REPS = {"flame_moe_290m": 4, "mixtral_8x7b": 8, "llama4_maverick": 1}


def measured(name: str, all_layers: bool = False, seed: int = 7) -> tuple[dict, dict]:
  shape = dict(RS.TRACE_SHAPES[name])
  targets = RS.TARGETS[name]
  extra = {}
  if all_layers:
    shape["num_layers"] = 24
    extra = dict(always_on_layers=(22,))
    targets = RS.LLAMA4_ALL_LAYERS
  group = shape["num_seqs"]
  spec = R.RoutingSpec(**{**shape, "num_seqs": group * REPS[name]}, **extra)
  ms = tuple(int(k[len("prefill_top"):]) for k in targets if k.startswith("prefill_top"))
  E = shape["num_experts"]
  params = R.preset(name, E, shape["top_k"])

  @jax.jit
  def stats(p):
    return RS.trace_statistics(R._generate(jax.random.key(seed), spec, p), E, group, ms)

  got = {k: float(v) for k, v in stats(base.as_arrays(params)).items()}
  return got, targets


@pytest.mark.parametrize("name,all_layers", [
    ("flame_moe_290m", False), ("mixtral_8x7b", False), ("llama4_maverick", False),
    ("llama4_maverick", True)])
def test_preset_reproduces_trace_statistics(name, all_layers):
  got, targets = measured(name, all_layers)
  bad = {k: (round(got[k], 3), v) for k, (v, tol) in targets.items()
         if abs(got[k] - v) > tol}
  assert not bad, f"{name}: statistic (got, target) outside tolerance: {bad}"
