"""``gpu_offload``: every routed expert runs on the GPU; misses are loaded on
demand over the link into an LRU cache.

Contract: reads the slots and its own LRU stamps (its state, [L, E]).  Asks the
engine to keep the layer's cache (``Requests.keep``/``evict``).  Each activated expert that
is not resident pays T_w before it computes; afterwards the layer's cache
holds the ``capacity`` most recently used experts (capacity =
``floor(resident_fraction x GPU expert budget)`` per layer, the budget split
evenly over layers; ties keep lower ids).  Never uses the NDP units.
"""
from __future__ import annotations

import jax.numpy as jnp

from ndpsim.policies import base as pb


def init(ctx, params):
  cap = pb.budget_slots(ctx, params)
  return pb.Start(own=jnp.full((ctx.num_layers, ctx.num_experts), -1.0), capacity=cap)


def place(ctx, res, own, layer, slots, params, phase):
  row = own[layer]
  stamp = jnp.max(row) + 1.0
  row = row.at[slots.ids].max(jnp.where(slots.valid, stamp, -1.0))
  keep = pb.top_m_mask(row, res.capacity, eligible=row >= 0)
  p = pb.no_fetch_placement(slots, slots.valid)
  return p._replace(requests=pb.Requests(evict=~keep, keep=keep)), own.at[layer].set(row)


POLICY = pb.Policy(name="gpu_offload", ndp_mode="tp", init=init, place=place)
