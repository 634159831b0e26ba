"""``oracle``: a lower bound on every policy under the same hardware model.

Contract: per layer it may use any split of the activated experts between the
GPU -- as if every expert's weights were already resident (no transfer, no
memory limit) -- and the NDP units, with the same attention, router and
shared-expert time as everyone else.  For a split with j experts on the GPU
the bound takes the j experts cheapest on the GPU and the n - j cheapest on
the NDP side (each at the better of its tensor-parallel slice time and 1/N of
its whole-expert time), one partial-sum return and one reduction, and
minimises over j.  Any real placement with j experts on the GPU is at least
as slow in every term, so no policy can beat it.  The engine evaluates it with
:func:`bound_makespan`; the placement returned is for statistics only.
"""
from __future__ import annotations

import jax.numpy as jnp

from ndpsim.policies import base as pb


def init(ctx, params):
  return pb.empty_state(ctx.num_layers, ctx.num_experts, 0.0)


def bound_makespan(slots, num_units: int, post_min_s):
  """(makespan relative to the router, number of slots on the GPU)."""
  big = 1e30
  g = jnp.sort(jnp.where(slots.valid, slots.gpu_s, big))
  h = jnp.sort(jnp.where(slots.valid, jnp.minimum(slots.ndp_tp_s,
                                                  slots.ndp_ep_s / num_units), big))
  n = jnp.sum(slots.valid)
  z = jnp.zeros((1,))
  gcum = jnp.concatenate([z, jnp.cumsum(jnp.where(g < big, g, 0.0))])
  hcum = jnp.concatenate([z, jnp.cumsum(jnp.where(h < big, h, 0.0))])
  j = jnp.arange(g.shape[0] + 1)
  h_left = hcum[jnp.clip(n - j, 0, g.shape[0])]
  gpu_end = slots.gpu_pre_s + gcum
  ndp_end = jnp.where(j < n, slots.bcast_s + h_left + post_min_s, 0.0)
  span = jnp.where(j <= n, jnp.maximum(gpu_end, ndp_end), jnp.inf)
  best = jnp.argmin(span)
  return span[best], best


def place(ctx, state, layer, slots, params, phase):
  rank = jnp.argsort(jnp.argsort(jnp.where(slots.valid, slots.gpu_s, jnp.inf)))
  _, best = bound_makespan(slots, ctx.num_units, 0.0)
  gpu = (rank < best) & slots.valid
  p = pb.Placement(gpu_frac=gpu.astype(jnp.float32), fetch=jnp.zeros_like(gpu),
                   ep_unit=jnp.zeros_like(slots.ids))
  return p, state


POLICY = pb.Policy(name="oracle", ndp_mode="tp", init=init, place=place,
                   lower_bound=True)
