"""``ndp_ep``: expert parallelism on the NDP units.

Contract: reads nothing but the slots; never uses the GPU for routed experts;
moves activations, not weights.  Expert e lives whole on unit e mod N
(round-robin, the usual static map); the layer waits for the most loaded unit.
"""
from __future__ import annotations

import jax.numpy as jnp

from ndpsim.policies import base as pb


def init(ctx, params):
  return pb.empty_state(ctx.num_layers, ctx.num_experts, 0.0)


def place(ctx, state, layer, slots, params, phase):
  p = pb.no_fetch_placement(slots, jnp.zeros_like(slots.valid))
  return p._replace(ep_unit=pb.ep_units(slots.ids, ctx.num_units)), state


POLICY = pb.Policy(name="ndp_ep", ndp_mode="ep", init=init, place=place)
