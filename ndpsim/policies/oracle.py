"""``oracle``: a lower bound on every policy under the same hardware model.

Contract: per layer it may use any split of the activated experts between the
GPU -- as if every expert's weights were already resident (no transfer, no
memory limit) -- and the NDP units, with the same attention, router and
shared-expert time as everyone else.  For a split with j experts on the GPU
the bound takes the j experts cheapest on the GPU and the n - j cheapest on
the NDP side (each at the better of its tensor-parallel slice time and 1/N of
its whole-expert time), one partial-sum return and one reduction, and
minimises over j.  Any real placement with j experts on the GPU is at least
as slow in every term, so no policy can beat it.  The bound is the policy's
``layer_bound`` (:func:`layer_bound`), which the engine takes as the layer's
end; the placement returned is for statistics only.
"""
from __future__ import annotations

import jax.numpy as jnp

from ndpsim.policies import base as pb


def init(ctx, params):
  del ctx, params
  return pb.Start()


def bound_makespan(slots, num_units: int, post_min_s):
  """(makespan relative to the router, number of slots on the GPU).

  The j cheapest GPU times and the n - j cheapest NDP times are summed in full,
  whatever their size: invalid slots sort last (keyed +inf) and are masked by
  position (the first n sorted entries are exactly the valid ones), so no valid
  time can be mistaken for padding.  (A finite "big" sentinel did that: with an
  absurdly slow NDP every slot time exceeded it and the NDP lane counted as 0 s,
  putting the bound below its own all-GPU split.)
  """
  m = slots.valid.shape[0]
  n = jnp.sum(slots.valid)
  first = jnp.arange(m) < n
  g = jnp.sort(jnp.where(slots.valid, slots.gpu_s, jnp.inf))
  h = jnp.sort(jnp.where(slots.valid, jnp.minimum(slots.ndp_tp_s,
                                                  slots.ndp_ep_s / num_units), jnp.inf))
  z = jnp.zeros((1,), g.dtype)
  gcum = jnp.concatenate([z, jnp.cumsum(jnp.where(first, g, 0.0))])
  hcum = jnp.concatenate([z, jnp.cumsum(jnp.where(first, h, 0.0))])
  j = jnp.arange(m + 1)
  h_left = hcum[jnp.clip(n - j, 0, m)]
  gpu_end = slots.gpu_pre_s + gcum
  ndp_end = jnp.where(j < n, slots.bcast_s + h_left + post_min_s, 0.0)
  span = jnp.where(j <= n, jnp.maximum(gpu_end, ndp_end), jnp.inf)
  best = jnp.argmin(span)
  return span[best], best


def place(ctx, res, own, layer, slots, params, phase):
  rank = jnp.argsort(jnp.argsort(jnp.where(slots.valid, slots.gpu_s, jnp.inf)))
  _, best = bound_makespan(slots, ctx.num_units, 0.0)
  gpu = (rank < best) & slots.valid
  p = pb.Placement(gpu_frac=gpu.astype(jnp.float32), fetch=jnp.zeros_like(gpu),
                   ep_unit=jnp.zeros_like(slots.ids))
  return p, own


def layer_bound(ctx, slots, post_min_s):
  """The layer's span from the router's decision (the contract's
  ``Policy.layer_bound``)."""
  span, _ = bound_makespan(slots, ctx.num_units, post_min_s)
  return span


POLICY = pb.Policy(name="oracle", ndp_mode="tp", init=init, place=place,
                   layer_bound=layer_bound)
