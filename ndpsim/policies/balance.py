"""Load-balancing-aware GPU/NDP split of one layer's activated experts.

The paper's technique 2 (exact algorithm not public): a greedy makespan
balance.  Slots are ordered resident-first, then by tokens (most NDP work per
transferred byte first); for every prefix length j the layer's makespan is
evaluated in closed form with cumulative sums (the first j slots on the GPU,
the rest tensor-parallel on the NDP units) and the best j is taken.  The GPU
lane uses the engine's own max-plus form (residents first, fetched experts
after their serialized loads), so the estimate equals the engine's layer time
when nothing else shares the link.  O(n log n) for n slots, no Python loops.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from ndpsim.policies.base import Slots


def prefix_makespans(slots: Slots, order_key, gpu_bias=1.0, ndp_bias=1.0):
  """Makespan (relative to the router) of each prefix split, [n + 1].

  ``order_key`` [n]: larger goes to the GPU first.  Entry j puts the first j
  slots of that order on the GPU.  Prefixes longer than the number of valid
  slots get +inf.
  """
  order = jnp.argsort(-order_key, stable=True)
  g = slots.gpu_s[order] * gpu_bias
  h = slots.ndp_tp_s[order] * ndp_bias
  valid = slots.valid[order]
  res = slots.resident[order] & valid
  fl = ~slots.resident[order] & valid
  z = jnp.zeros((1,))
  cat = lambda x: jnp.concatenate([z, jnp.cumsum(x)])
  r = cat(jnp.where(res, g, 0.0))
  q = cat(jnp.where(fl, slots.fetch_s[order], 0.0))
  c = cat(jnp.where(fl, g, 0.0))
  term = jnp.where(fl, q[1:] - c[:-1], -jnp.inf)
  m = jnp.concatenate([jnp.full((1,), -jnp.inf), jax.lax.cummax(term)])
  gpu_end = jnp.maximum(slots.gpu_pre_s + r + c, slots.link_delay_s + c + m)
  nvalid = jnp.sum(valid)
  count = jnp.arange(g.shape[0] + 1)
  ndp_left = jnp.sum(jnp.where(valid, h, 0.0)) - cat(jnp.where(valid, h, 0.0))
  has_ndp = count < nvalid
  ndp_end = jnp.maximum(slots.bcast_s + ndp_left, slots.link_delay_s + q) + slots.post_s
  span = jnp.maximum(gpu_end, jnp.where(has_ndp, ndp_end, 0.0))
  return jnp.where(count <= nvalid, span, jnp.inf), order


def greedy_split(slots: Slots, gpu_bias=1.0, ndp_bias=1.0) -> jax.Array:
  """[n] bool: slots the balancer puts on the GPU (ties -> fewer on the GPU)."""
  key = jnp.where(slots.resident, 1e6, 0.0) + slots.tokens
  key = jnp.where(slots.valid, key, -1.0)
  span, order = prefix_makespans(slots, key, gpu_bias, ndp_bias)
  j = jnp.argmin(span)
  rank = jnp.argsort(order)
  return (rank < j) & slots.valid
