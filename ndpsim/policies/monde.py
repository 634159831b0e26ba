"""``monde``: MoNDE (DAC 2024) -- profiled hot experts on the GPU, the rest EP.

Contract: ``init`` reads the offline profile ``ctx.profile_counts`` [L, E]
(activation counts measured on a profiling set of routing samples -- the
dataset this baseline needs) and pins, per layer, the ``capacity`` most
popular experts in GPU memory (loaded once at model-load time, before the
run, so no link time is charged).  ``place`` runs activated hot experts on the
GPU and every other activated expert whole on its NDP unit (round-robin
expert parallelism).  Activations move instead of weights: it never fetches.
It must not read the current sequence's routing to choose residents.
"""
from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from ndpsim.policies import base as pb


def init(ctx, params):
  cap = jnp.floor(params.resident_fraction * ctx.capacity + 1e-6)
  st = pb.empty_state(ctx.num_layers, ctx.num_experts, cap)
  hot = pb.top_m_mask(ctx.profile_counts, cap)
  return dataclasses.replace(st, resident=hot)


def place(ctx, state, layer, slots, params, phase):
  p = pb.no_fetch_placement(slots, slots.resident)
  return p._replace(ep_unit=pb.ep_units(slots.ids, ctx.num_units)), state


POLICY = pb.Policy(name="monde", ndp_mode="ep", init=init, place=place)
