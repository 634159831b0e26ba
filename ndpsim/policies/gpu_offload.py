"""``gpu_offload``: every routed expert runs on the GPU; misses are loaded on
demand over the link into an LRU cache.

Contract: reads the slots and its own LRU stamps.  Each activated expert that
is not resident pays T_w before it computes; afterwards the layer's cache
holds the ``capacity`` most recently used experts (capacity =
``floor(resident_fraction x GPU expert budget)`` per layer, the budget split
evenly over layers; ties keep lower ids).  Never uses the NDP units.
"""
from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from ndpsim.policies import base as pb


def init(ctx, params):
  cap = jnp.floor(params.resident_fraction * ctx.capacity + 1e-6)
  st = pb.empty_state(ctx.num_layers, ctx.num_experts, cap)
  return dataclasses.replace(st, score=jnp.full_like(st.score, -1.0))


def place(ctx, state, layer, slots, params, phase):
  row = state.score[layer]
  stamp = jnp.max(row) + 1.0
  row = row.at[slots.ids].max(jnp.where(slots.valid, stamp, -1.0))
  keep = pb.top_m_mask(row, state.capacity, eligible=row >= 0)
  state = dataclasses.replace(state, score=state.score.at[layer].set(row),
                              resident=state.resident.at[layer].set(keep))
  return pb.no_fetch_placement(slots, slots.valid), state


POLICY = pb.Policy(name="gpu_offload", ndp_mode="tp", init=init, place=place)
