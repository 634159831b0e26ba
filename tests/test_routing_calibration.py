"""The calibrated presets reproduce the reference trace statistics.

Targets and tolerances: routing_stats.TARGETS (from
shared/reference/routing_stats.md).  Generated at each trace set's E, k, MoE
layers and token counts, averaged over replicate groups, with a model seed and
a key other than the ones used for fitting (benchmarks/routing_calibrate.py
fits at model seed 0, key 0): a held-out model and held-out prompts.
"""
from __future__ import annotations

import functools

import jax
import pytest

from ndpsim import base
from ndpsim.workload import routing as R
from ndpsim.workload import routing_stats as RS

pytestmark = pytest.mark.reference

REPS = {"flame_moe_290m": 4, "mixtral_8x7b": 8, "llama4_maverick": 1}


@functools.lru_cache(maxsize=None)
def measured(name: str, all_layers: bool = False, seed: int = 7) -> tuple[dict, dict, dict]:
  """(statistics, fitted targets, checked global_top targets) of a preset."""
  shape = dict(RS.TRACE_SHAPES[name])
  targets, glob = RS.TARGETS[name], RS.GLOBAL_TARGETS[name]
  extra = {}
  if all_layers:
    shape["num_layers"] = 24
    extra = dict(always_on_layers=(22,))
    targets, glob = RS.LLAMA4_ALL_LAYERS, RS.LLAMA4_ALL_LAYERS_GLOBAL
  group = shape["num_seqs"]
  spec = R.RoutingSpec(**{**shape, "num_seqs": group * REPS[name]}, **extra,
                       model_seed=seed)
  ms = tuple(int(k[len("prefill_top"):]) for k in targets if k.startswith("prefill_top"))
  E = shape["num_experts"]
  params = R.preset(name, E, shape["top_k"])

  @jax.jit
  def stats(p):
    return RS.trace_statistics(R._generate(jax.random.key(seed), spec, p), E, group, ms)

  got = {k: float(v) for k, v in stats(base.as_arrays(params)).items()}
  return got, targets, glob


CASES = [("flame_moe_290m", False), ("mixtral_8x7b", False), ("llama4_maverick", False),
         ("llama4_maverick", True)]


@pytest.mark.parametrize("name,all_layers", CASES)
def test_preset_reproduces_trace_statistics(name, all_layers):
  got, targets, _ = measured(name, all_layers)
  bad = {k: (round(got[k], 3), v) for k, (v, tol) in targets.items()
         if abs(got[k] - v) > tol}
  assert not bad, f"{name}: statistic (got, target) outside tolerance: {bad}"


# Llama-4: a single Zipf exponent fitted to the Gini makes the head of the
# popularity too steep (load max / mean 26 vs the trace's 16.8, top-10% share
# 0.62 vs 0.54), so a profiled hot set of 4 or 16 experts hits 0.07-0.10 more
# decode selections than in the trace (MoNDE-like policies look better under
# this preset than on the trace).  Fixing it needs a second popularity-shape
# knob; strict xfail so the test reports when it is fixed.
_L4_GAP = pytest.mark.xfail(strict=True, reason="Llama-4 popularity head too steep for "
                            "global_top4/16; see comment")


@pytest.mark.parametrize("name,all_layers", [
    ("flame_moe_290m", False), ("mixtral_8x7b", False),
    pytest.param("llama4_maverick", False, marks=_L4_GAP),
    pytest.param("llama4_maverick", True, marks=_L4_GAP)])
def test_profiled_hot_set_matches_trace(name, all_layers):
  """'global (other sequences)' hit rates: checked, not fitted."""
  got, _, glob = measured(name, all_layers)
  bad = {k: (round(got[k], 3), v) for k, (v, tol) in glob.items()
         if abs(got[k] - v) > tol}
  assert not bad, f"{name}: profiled hot-set hit rate (got, target) outside tolerance: {bad}"
