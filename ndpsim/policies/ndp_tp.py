"""``ndp_tp``: every activated expert tensor-parallel over all NDP units.

Contract: reads nothing but the slots; never uses the GPU for routed experts;
moves no weights.  Each unit computes its 1/N slice (gate and up by column,
down by row) and returns a partial sum reduced on the GPU.
"""
from __future__ import annotations

import jax.numpy as jnp

from ndpsim.policies import base as pb


def init(ctx, params):
  return pb.empty_state(ctx.num_layers, ctx.num_experts, 0.0)


def place(ctx, state, layer, slots, params, phase):
  return pb.no_fetch_placement(slots, jnp.zeros_like(slots.valid)), state


POLICY = pb.Policy(name="ndp_tp", ndp_mode="tp", init=init, place=place)
