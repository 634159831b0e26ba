"""``tuned`` (ndpsim's own): ``tp_lb_prefetch`` whose continuous knobs are
fitted by gradient descent on the relaxed engine (:mod:`ndpsim.tune`).

Knobs (``PolicyParams``): ``resident_fraction`` (the prefetch budget M =
resident_fraction x GPU expert budget per layer), ``gpu_bias`` and
``ndp_bias`` (the load balancer's lane estimates).

Contract, hard mode (the default, and how ``tuned`` is evaluated): exactly
``tp_lb_prefetch`` with the given params -- dataset-free prefetch of the top-M
experts of the current prompt's prefill counts, greedy makespan balance per
layer.  It never reads future routing and never holds more than M experts per
layer.

Relaxed mode (``simulate(..., relaxed=True)``), used only to fit the knobs:

* the balancer is the softmin :func:`balance.soft_split` (continuous GPU
  share of each activated expert, a column split between GPU and NDP units);
* the top-M is soft: the expert of prefill rank r (descending counts, ties
  by lower id) gets the resident weight
  ``sigmoid((M - r - 1 + 1e-3) / rank_temperature)`` (no floor on M), read as
  the fraction of its columns held in GPU memory.  The part the prefill
  balancer already loaded (its GPU share) is kept at once; the rest joins
  the background queue with a load of ``weight x T_w`` link seconds,
  merged into the loads not started yet by descending prefill counts as in
  ``tp_lb_prefetch`` (:func:`ndpsim.residency.soft_merge_enqueue`), and
  arrives progressively as the queue drains (never delaying a demand load).
Both converge to the hard policy as the temperatures fall.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from ndpsim.policies import balance
from ndpsim.policies import base as pb
from ndpsim.policies import tp_lb_prefetch

def init(ctx, params):
  return tp_lb_prefetch.init(ctx, params)


def soft_top_m(counts, m, temperature):
  """[E] soft top-M weights of ``counts`` (0 where a count is 0)."""
  rank = pb.rank_desc(jnp.where(counts > 0, counts, -jnp.inf)).astype(jnp.float32)
  w = jax.nn.sigmoid((m - rank - 1.0 + 1e-3) / temperature)
  return jnp.where(counts > 0, w, 0.0), rank


def _soft_choose(ctx, slots, gfrac, params):
  """Relaxed :func:`tp_lb_prefetch.choose_from_prefill`: soft requests."""
  E = ctx.num_experts
  counts = jnp.zeros((E,)).at[slots.ids].add(jnp.where(slots.valid, slots.tokens, 0.0))
  m = params.resident_fraction * ctx.capacity
  want, rank = soft_top_m(counts, m, params.rank_temperature)
  res_w = slots.res_w if slots.res_w is not None else jnp.zeros_like(gfrac)
  loaded = jnp.zeros((E,)).at[slots.ids].max(
      jnp.where(slots.valid, gfrac * (1.0 - res_w), 0.0))
  keep = jnp.minimum(want, loaded)
  # Merged into the loads not started yet by descending prefill counts (ties:
  # queued first, then lower id), each load taking its weight x T_w link
  # seconds: the relaxed merge (residency.soft_merge_enqueue).
  return pb.Requests(keep=keep, load=want - keep, load_key=counts,
                     load_order=jnp.argsort(rank), merge=True, keep_is_prefetch=True)


def place(ctx, res, own, layer, slots, params, phase):
  if not ctx.relaxed:
    return tp_lb_prefetch.place(ctx, res, own, layer, slots, params, phase)
  gfrac = balance.soft_split(slots, params.gpu_bias, params.ndp_bias,
                             params.temperature_s)
  p = pb.Placement(gpu_frac=gfrac, fetch=(gfrac > 0) & ~slots.resident & slots.valid,
                   ep_unit=jnp.zeros_like(slots.ids))
  if phase == "prefill":
    p = p._replace(requests=_soft_choose(ctx, slots, gfrac, params))
  return p, own


POLICY = pb.Policy(name="tuned", ndp_mode="tp", init=init, place=place,
                   soft_residency=True)
