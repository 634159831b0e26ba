"""MoNDE as published (``monde``, ``monde_eq6``) and its ablation ``monde_resident``.

Analytic: Eq. 6's H on hand-computed cases and DynaNDE's formula; the hot-set
tie rule.  Engine: H copies per layer and step charged on every use (expert
bytes on the GPU equal to the hand count), nothing resident, batch > 1.
Tuning: alpha auto-tuning reads only the profiling sequences and returns a
local optimum of what it profiled.
"""
from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
import pytest

from ndpsim import costs, engine, studies
from ndpsim.policies import base as pb
from ndpsim.policies import monde
from ndpsim.workload import models as M
from tests import engine_util as U

MODEL = "qwen3-30b-a3b"


def _routing():
  """Every engine run of this file: 2 sequences of 8 + 4 tokens (the shape of
  the alpha auto-tuning test's workload, so the routing generator compiles
  once, and ``monde`` compiles once: its knobs are traced)."""
  return U.routing(MODEL, num_seqs=2, prompt_len=8, output_len=4)


@pytest.mark.parametrize("activated,share,alpha,want", [
    (8, 0.09, 1.0, 1),      # 0.72 rounds to 1
    (8, 0.09, 0.0, 0),
    (8, 0.05, 1.0, 0),      # 0.40 rounds to 0
    (8, 0.09, 3.0, 2),      # 2.16
    (128, 0.09, 1.0, 12),   # 11.52
    (128, 0.09, 2.0, 23),   # 23.04
    (4, 0.5, 10.0, 4),      # clipped to the activated count
])
@pytest.mark.analytic
def test_hot_count_eq6_rounds_half_up(activated, share, alpha, want):
  assert float(monde.hot_count(activated, share, alpha)) == want


@pytest.mark.parametrize("activated", [1, 2, 8, 16, 17, 18, 64, 128])
@pytest.mark.analytic
def test_eq6_variant_is_dynande_formula(activated):
  share = 32.0 / (512.0 + 32.0)  # DynaNDE: 32 GB/s link, 512 GB/s device = 0.05882
  want = max(1, math.ceil(0.05882 * activated))
  assert float(monde.hot_count(activated, share, 1.0, eq6_ceil=True)) == want


def _slots(ids, tokens, valid=None):
  n = len(ids)
  z = jnp.zeros((n,))
  valid = jnp.ones((n,), bool) if valid is None else jnp.asarray(valid)
  return pb.Slots(ids=jnp.asarray(ids, jnp.int32), tokens=jnp.asarray(tokens, jnp.float32),
                  valid=valid, resident=jnp.zeros((n,), bool), gpu_s=z, fetch_s=z,
                  ndp_tp_s=z, ndp_ep_s=z, gpu_pre_s=0.0, link_delay_s=0.0, bcast_s=0.0,
                  post_s=0.0)


@pytest.mark.analytic
def test_hot_set_most_tokens_ties_to_lower_id():
  # Batch 1: all tokens tie, the lower expert ids are hot whatever the slot order.
  s = _slots([9, 3, 7, 1], [1, 1, 1, 1])
  np.testing.assert_array_equal(monde.hot_mask(s, 2, 16), [False, True, False, True])
  # Batch > 1: most tokens first, then lower id; padding never hot.
  s = _slots([5, 2, 9, 7, 0], [3, 1, 2, 2, 0], valid=[True, True, True, True, False])
  np.testing.assert_array_equal(monde.hot_mask(s, 2, 16), [True, False, False, True, False])
  np.testing.assert_array_equal(monde.hot_mask(s, 9, 16), [True, True, True, True, False])


def _expected_gpu_experts(model, routing, share, alpha_p, alpha_d, batch, eq6=False):
  """Hand count of the experts MoNDE copies: sum over prefill layers and decode
  (step, layer) of H(activated experts of that batch)."""
  pre, dec = np.asarray(routing.prefill_ids), np.asarray(routing.decode_ids)
  S = pre.shape[0]
  total = np.zeros(S // batch)
  for g in range(S // batch):
    seqs = slice(g * batch, (g + 1) * batch)
    for l in range(pre.shape[2]):
      n = len(np.unique(pre[seqs, :, l]))
      total[g] += float(monde.hot_count(n, share, alpha_p, eq6))
    for t in range(dec.shape[1]):
      for l in range(dec.shape[2]):
        n = len(np.unique(dec[seqs, t, l]))
        total[g] += float(monde.hot_count(n, share, alpha_d, eq6))
  return total


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.policy
def test_monde_copies_hot_experts_per_use_and_keeps_none(batch):
  model = M.get_model(MODEL)
  system = U.load()
  r = _routing()
  share = float(costs.link_share(*system))
  params = pb.PolicyParams(monde_alpha_prefill=1.0, monde_alpha_decode=3.0)
  res = engine.simulate(system, model, r, "monde", params, batch_size=batch)
  eb = M.expert_bytes(model)
  want = _expected_gpu_experts(model, r, share, 1.0, 3.0, batch)
  assert want.min() > 0
  np.testing.assert_allclose(np.asarray(res.expert_bytes_gpu) / eb, want, rtol=1e-6)
  # Every GPU expert was copied for that use: demand bytes to the GPU include
  # all of them, nothing was ever resident (no hits) and nothing prefetched.
  assert np.all(np.asarray(res.bytes_to_gpu) >= want * eb * (1 - 1e-6))
  assert np.all(np.asarray(res.gpu_hits) == 0)
  assert np.all(np.asarray(res.prefetched_bytes) == 0)


@pytest.mark.policy
def test_monde_eq6_counts_match_dynande_formula():
  model = M.get_model(MODEL)
  system = U.load()
  r = _routing()
  share = float(costs.link_share(*system))
  res = engine.simulate(system, model, r, "monde_eq6")
  want = _expected_gpu_experts(model, r, share, 1.0, 1.0, 1, eq6=True)
  np.testing.assert_allclose(np.asarray(res.expert_bytes_gpu) / M.expert_bytes(model),
                             want, rtol=1e-6)


@pytest.mark.policy
def test_monde_with_alpha_zero_is_expert_parallel_ndp():
  """H = 0 everywhere: MoNDE degenerates to EP on the NDP units exactly."""
  params = pb.PolicyParams(monde_alpha_prefill=0.0, monde_alpha_decode=0.0)
  a = U.run(MODEL, "monde", params=params, routing=_routing())
  b = U.run(MODEL, "ndp_ep", routing=_routing())
  np.testing.assert_allclose(np.asarray(a.e2e_s), np.asarray(b.e2e_s), rtol=1e-6)


@pytest.mark.policy
def test_copy_of_an_expert_on_one_dimm_is_bounded_by_its_channel():
  """EP-stored experts stream from one unit's host bus, TP slices from all."""
  ss, sp = U.load()
  model = M.get_model(MODEL)
  eb = M.expert_bytes(model)
  ep, tp = float(costs.fetch_s(ss, sp, model, "ep")), float(costs.fetch_s(ss, sp, model, "tp"))
  one_bus = eb / (float(sp.ndp.host_bus_bandwidth_gbps) * 1e9)
  assert ep >= one_bus
  assert tp < ep
  # TP: N buses together outrun the link, so the link alone sets the time.
  from ndpsim.hw import link
  assert tp == pytest.approx(float(link.transfer_time_s(ss.link, sp.link, eb)), rel=1e-6)


@pytest.mark.policy
def test_alpha_autotuning_reads_only_profiling_sequences():
  res = studies.resolve(studies.StudyConfig(models=(MODEL,), policies=("monde",),
                                            prompt_len=8, output_len=4, num_seqs=2,
                                            studies=("headline",)))
  wl = studies.make_workload(res, MODEL, res.config.routing)
  # The profile is another set of sequences of the same model.
  assert not np.array_equal(wl.profile.prefill_ids, wl.prefill_ids)
  fit = studies.monde_alpha(res, wl, MODEL, 4)
  # Changing the evaluated sequences does not change the fit.
  scrambled = wl._replace(prefill_ids=wl.prefill_ids[::-1] * 0,
                          decode_ids=wl.decode_ids[::-1] * 0)
  assert studies.monde_alpha(res, scrambled, MODEL, 4) == fit
  # The chosen alpha is a local optimum of the profiled times.
  for ph in ("prefill", "decode"):
    t, i = np.asarray(fit[f"profiled_s_{ph}"]), fit[f"hot_experts_{ph}"]
    assert fit[f"monde_alpha_{ph}"] == fit[f"candidates_{ph}"][i]
    for j in (i - 1, i + 1):
      if 0 <= j < len(t):
        assert t[i] <= t[j]


@pytest.mark.policy
def test_local_optimum_walks_downhill_from_start():
  cost = np.array([5.0, 4.0, 3.0, 3.5, 1.0, 0.5])
  assert monde._local_optimum(cost, 0) == 2   # stops at the first local minimum
  assert monde._local_optimum(cost, 4) == 5
  assert monde._local_optimum(cost, 3) == 5   # the better neighbour first


@pytest.mark.policy
def test_monde_resident_is_the_old_profiled_hot_set():
  """The ablation pins the profiled top experts; the published policy keeps none."""
  model = M.get_model(MODEL)
  prof = np.zeros((M.num_moe_layers(model), model.num_experts), np.float32)
  prof[:, :4] = 10.0
  res = U.run(MODEL, "monde_resident", profile_counts=prof,
              params=pb.PolicyParams(resident_fraction=1.0), routing=_routing())
  assert float(np.sum(res.gpu_hits)) > 0
  assert float(np.sum(U.run(MODEL, "monde", routing=_routing()).gpu_hits)) == 0
