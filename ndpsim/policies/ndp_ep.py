"""``ndp_ep``: expert parallelism on the NDP units.

Contract: reads nothing but the slots; never uses the GPU for routed experts;
moves activations, not weights.  Expert e lives whole on unit e mod N
(round-robin, the usual static map); the layer waits for the most loaded unit.
"""
from __future__ import annotations

import jax.numpy as jnp

from ndpsim.policies import base as pb


def init(ctx, params):
  del ctx, params
  return pb.Start()


def place(ctx, res, own, layer, slots, params, phase):
  p = pb.no_fetch_placement(slots, jnp.zeros_like(slots.valid))
  return p._replace(ep_unit=pb.ep_units(slots.ids, ctx.num_units)), own


POLICY = pb.Policy(name="ndp_ep", ndp_mode="ep", init=init, place=place)
