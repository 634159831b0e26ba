"""``ndp_tp``: every activated expert tensor-parallel over all NDP units.

Contract: reads nothing but the slots; never uses the GPU for routed experts;
moves no weights.  Each unit computes its 1/N slice (gate and up by column,
down by row) and returns a partial sum reduced on the GPU.
"""
from __future__ import annotations

import jax.numpy as jnp

from ndpsim.policies import base as pb


def init(ctx, params):
  del ctx, params
  return pb.Start()


def place(ctx, res, own, layer, slots, params, phase):
  return pb.no_fetch_placement(slots, jnp.zeros_like(slots.valid)), own


POLICY = pb.Policy(name="ndp_tp", ndp_mode="tp", init=init, place=place)
