"""``dynande`` (DynaNDE's own scheduling): the sweep against brute force, the
LFU cache by hand, and its behaviour in the engine."""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from ndpsim import residency as rs
from ndpsim.policies import base as pb
from ndpsim.policies import dynande
from tests import engine_util as U

pytestmark = pytest.mark.policy


def _slots(gpu, fetch, ep, tokens, resident, valid=None, room=np.inf, pre=0.1,
           bcast=0.05, post=0.02, ids=None):
  n = len(gpu)
  f = lambda x, dt=jnp.float32: jnp.asarray(x, dt)
  return pb.Slots(ids=f(np.arange(n) if ids is None else ids, jnp.int32), tokens=f(tokens),
                  valid=f(np.ones(n, bool) if valid is None else valid, bool),
                  resident=f(resident, bool), gpu_s=f(gpu), fetch_s=f(fetch),
                  ndp_tp_s=f(np.asarray(ep) / 4), ndp_ep_s=f(ep), gpu_pre_s=f(pre),
                  link_delay_s=f(0.0), bcast_s=f(bcast), post_s=f(post),
                  stage_room=f(room))


def _brute(gpu, fetch, ep, resident, units, num_units, room, pre, bcast, post):
  """Every j: the first j slots on the GPU (DynaNDE's sums); smallest max wins."""
  n = len(gpu)
  best, best_j = np.inf, 0
  for j in range(n + 1):
    if sum(1 for i in range(j) if not resident[i]) > room:
      continue
    g = pre + sum(gpu[i] + (0.0 if resident[i] else fetch[i]) for i in range(j))
    loads = np.zeros(num_units)
    for i in range(j, n):
      loads[units[i]] += ep[i]
    nd = bcast + loads.max() + post if j < n else 0.0
    if max(g, nd) < best - 1e-9:
      best, best_j = max(g, nd), j
  return best_j, best


@pytest.mark.parametrize("seed", range(6))
def test_sweep_matches_brute_force(seed):
  rng = np.random.default_rng(seed)
  n, N = 6, 3
  gpu, fetch, ep = rng.uniform(0.01, 0.2, n), rng.uniform(0.0, 0.3, n), rng.uniform(0.05, 0.5, n)
  resident = rng.random(n) < 0.3
  room = [np.inf, 1, 0][seed % 3]
  s = _slots(gpu, fetch, ep, np.ones(n), resident, room=room)
  units = jnp.arange(n, dtype=jnp.int32) % N
  mask, span = dynande.sweep(s, units, N, jnp.arange(n, dtype=jnp.int32))
  j, best = _brute(gpu, fetch, ep, resident, np.arange(n) % N, N, room, 0.1, 0.05, 0.02)
  np.testing.assert_array_equal(np.asarray(mask), np.arange(n) < j)
  np.testing.assert_allclose(float(jnp.min(span)), best, rtol=1e-5)


def test_sweep_follows_the_given_order_and_ignores_padding():
  # Slot 2 has most tokens: in descending-token order it is considered first.
  gpu, fetch, ep = [0.1, 0.1, 0.1, 0.1], [0.0] * 4, [1.0, 1.0, 1.0, 1.0]
  s = _slots(gpu, fetch, ep, [1, 2, 5, 0], [False] * 4, valid=[True, True, True, False])
  order = pb.count_order(s.tokens).order
  mask, _ = dynande.sweep(s, jnp.zeros(4, jnp.int32), 1, order)
  # Cheap GPU, slow NDP: every valid slot moves, the padding slot never does.
  np.testing.assert_array_equal(np.asarray(mask), [True, True, True, False])
  s2 = s._replace(gpu_s=jnp.asarray([0.1, 0.1, 0.1, 0.1]) * 8)
  mask2, _ = dynande.sweep(s2, jnp.zeros(4, jnp.int32), 1, order)
  # j = 0, 1, 2, 3 (slots 2, 1, 0 in turn): max(0.1, 3.07), max(0.9, 2.07),
  # max(1.7, 1.07), max(2.5, 0): j = 2 -- slots 2 and 1 on the GPU.
  np.testing.assert_array_equal(np.asarray(mask2), [False, True, True, False])


def _ctx(E=6, units=2, capacity=2.0):
  return pb.Context(num_layers=1, num_experts=E, num_units=units, top_k=2,
                    expert_bytes=1.0, fetch_s=jnp.float32(0.01),
                    capacity=jnp.float32(capacity), profile_counts=jnp.ones((1, E)))


def test_lfu_cache_keeps_the_most_used_and_respects_capacity():
  E = 6
  ctx = _ctx(E)
  params = pb.PolicyParams(resident_fraction=1.0)
  start = dynande.init(ctx, params)
  assert float(start.capacity) == 2.0
  res = rs.empty(1, E, start.capacity)
  own = start.own
  # Cheap GPU and loads, slow NDP: every activated expert goes to the GPU.
  steps = [[0, 1], [0, 2], [3, 4], [0, 3], [5, 1]]
  for ids in steps:
    resident = np.asarray(res.resident[0])[ids]
    s = _slots([0.01, 0.01], [0.001, 0.001], [1.0, 1.0], [1, 1], resident, ids=ids)
    p, own = dynande.place(ctx, res, own, 0, s, params, "decode")
    assert bool(jnp.all(p.gpu_frac == 1.0))
    np.testing.assert_array_equal(np.asarray(p.fetch), ~resident)
    res = rs.apply(ctx, res, 0, p.requests)
    assert int(jnp.sum(res.resident)) <= 2
  counts = np.asarray(own[0])
  np.testing.assert_array_equal(counts, [3, 2, 1, 2, 1, 1])
  # After the last step (5 and 1 loaded/used): the two most used among the
  # cached {0, 3} and the loaded {5, 1}: 0 (3 uses), then 3 (cached, 2 uses)
  # before 1 (loaded, 2 uses): ties go to the cached expert.
  np.testing.assert_array_equal(np.asarray(res.resident[0]), [1, 0, 0, 1, 0, 0])


def test_nothing_is_cached_at_zero_budget_and_cached_experts_are_hits():
  model = "mixtral-8x7b"
  r0 = U.run(model, "dynande", params=pb.PolicyParams(resident_fraction=0.0))
  r1 = U.run(model, "dynande", params=pb.PolicyParams(resident_fraction=1.0))
  assert float(np.sum(r0.gpu_hits)) == 0.0
  assert float(np.sum(r1.gpu_hits)) > 0.0
  assert np.all(np.asarray(r1.peak_gpu_bytes) <= np.asarray(r1.gpu_capacity_bytes))
