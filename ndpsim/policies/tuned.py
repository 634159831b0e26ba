"""``tuned`` (ndpsim's own): ``tp_lb_prefetch`` whose continuous knobs are
fitted by gradient descent on the relaxed engine (:mod:`ndpsim.tune`).

Shared knobs (``PolicyParams``): ``resident_fraction`` (the prefetch budget,
in expert slots per layer on average: B = floor(resident_fraction x GPU
expert budget per layer)), ``gpu_bias`` and ``ndp_bias`` (the load
balancer's lane estimates).  Own knobs (:class:`TunedParams`,
``PolicyParams.own``), each a scalar or an [L] array over MoE layers:

* ``layer_share``: how the total budget L x B is split over the layers --
  layer l may hold ``floor(L x B x share_l / sum(share) + 1e-6)`` experts
  (resident or queued), so the layers together never hold more than the
  uniform budget's L x B;
* ``layer_gpu_bias``, ``layer_ndp_bias``: per-layer multipliers of
  ``gpu_bias`` and ``ndp_bias``.

All equal (the default, 1) is exactly ``tp_lb_prefetch`` at the shared
knobs.

Contract, hard mode (the default, and how ``tuned`` is evaluated):
``tp_lb_prefetch`` with the given params -- dataset-free prefetch of the
top-M_l experts of the current prompt's prefill counts in layer l, greedy
makespan balance per layer with layer l's biases.  It never reads future
routing; a layer may hold more than ``res.capacity`` (= B) experts when
others hold fewer, but never more than L x B over all layers (the engine's
decode memory accounting, ``L x capacity``, stays an upper bound).

Relaxed mode (``simulate(..., relaxed=True)``), used only to fit the knobs:

* the balancer is the softmin :func:`balance.soft_split` (continuous GPU
  share of each activated expert, a column split between GPU and NDP units);
* the top-M is soft: the expert of prefill rank r in layer l gets the
  resident weight ``sigmoid((m_l - r - 1 + 1e-3) / rank_temperature)`` with
  ``m_l = resident_fraction x budget x L x share_l / sum(share)`` (no
  floor), read as the fraction of its columns held in GPU memory.  The part
  the prefill balancer already loaded (its GPU share) is kept at once; the
  rest joins the background queue with a load of ``weight x T_w`` link
  seconds, merged into the loads not started yet by descending prefill
  counts as in ``tp_lb_prefetch`` (:func:`ndpsim.residency.soft_merge_enqueue`),
  and arrives progressively as the queue drains (never delaying a demand
  load).
Both converge to the hard policy as the temperatures fall.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from ndpsim import base
from ndpsim.base import ConfigError
from ndpsim.policies import balance
from ndpsim.policies import base as pb
from ndpsim.policies import tp_lb_prefetch


@base.params_dataclass
class TunedParams:
  """Own knobs of ``tuned`` (``PolicyParams.own``); each a scalar (every
  layer alike) or an [L] array over MoE layers, > 0.

  layer_share: relative prefetch budget of each layer (normalised: only the
    ratios matter; the total stays L x the uniform budget).
  layer_gpu_bias: multiplies ``PolicyParams.gpu_bias`` in layer l.
  layer_ndp_bias: multiplies ``PolicyParams.ndp_bias`` in layer l.
  """
  layer_share: Any = 1.0
  layer_gpu_bias: Any = 1.0
  layer_ndp_bias: Any = 1.0


LAYER_KNOBS = ("layer_share", "layer_gpu_bias", "layer_ndp_bias")
RANGES = tuple((name, 0.0, None, False, None) for name in LAYER_KNOBS)


def layer_arrays(own: TunedParams, num_layers: int) -> TunedParams:
  """Each knob as an [L] array; ConfigError naming the field if its shape is
  neither a scalar nor [L] (static shapes: checked while tracing)."""
  out = {}
  for name in LAYER_KNOBS:
    v = jnp.asarray(getattr(own, name), jnp.result_type(float))
    if v.shape not in ((), (num_layers,)):
      raise ConfigError(f"policy parameter tuned.{name} has shape {tuple(v.shape)}; "
                        f"write a scalar or an array of shape ({num_layers},), one "
                        "value per MoE layer")
    out[name] = jnp.broadcast_to(v, (num_layers,))
  return TunedParams(**out)


def layer_budgets(ctx, params, hard: bool) -> jax.Array:
  """[L] experts each layer may hold: hard ``floor(L B share_l / sum + 1e-6)``
  with B = floor(resident_fraction x capacity + 1e-6); relaxed
  ``resident_fraction x capacity x L share_l / sum(share)`` (no floor)."""
  own = layer_arrays(params.own, ctx.num_layers)
  w = own.layer_share * (ctx.num_layers / jnp.sum(own.layer_share))
  if hard:
    b = jnp.floor(params.resident_fraction * ctx.capacity + 1e-6)
    return jnp.floor(b * w + 1e-6)
  return params.resident_fraction * ctx.capacity * w


def _biases(ctx, params, layer):
  own = layer_arrays(params.own, ctx.num_layers)
  return (params.gpu_bias * own.layer_gpu_bias[layer],
          params.ndp_bias * own.layer_ndp_bias[layer])


def init(ctx, params):
  layer_arrays(params.own, ctx.num_layers)  # shape check before the scans
  return tp_lb_prefetch.init(ctx, params)


def soft_top_m(counts, m, temperature):
  """[E] soft top-M weights of ``counts`` (0 where a count is 0)."""
  rank = pb.rank_desc(jnp.where(counts > 0, counts, -jnp.inf)).astype(jnp.float32)
  w = jax.nn.sigmoid((m - rank - 1.0 + 1e-3) / temperature)
  return jnp.where(counts > 0, w, 0.0), rank


def _soft_choose(ctx, slots, gfrac, params, m):
  """Relaxed :func:`tp_lb_prefetch.choose_from_prefill`: soft requests."""
  E = ctx.num_experts
  counts = pb.prefill_tokens(slots)  # prefill slots are the experts in id order
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
  gpu_bias, ndp_bias = _biases(ctx, params, layer)
  m = layer_budgets(ctx, params, hard=not ctx.relaxed)[layer]
  if not ctx.relaxed:
    gpu = balance.greedy_split(slots, gpu_bias, ndp_bias)
    p = pb.no_fetch_placement(slots, gpu)
    if phase == "prefill":
      req, _ = tp_lb_prefetch.choose_from_prefill(
          ctx, dataclasses.replace(res, capacity=m), slots, gpu)
      p = p._replace(requests=req)
    return p, own
  gfrac = balance.soft_split(slots, gpu_bias, ndp_bias, params.temperature_s)
  p = pb.Placement(gpu_frac=gfrac, fetch=(gfrac > 0) & ~slots.resident & slots.valid,
                   ep_unit=jnp.zeros_like(slots.ids))
  if phase == "prefill":
    p = p._replace(requests=_soft_choose(ctx, slots, gfrac, params, m))
  return p, own


POLICY = pb.Policy(name="tuned", ndp_mode="tp", init=init, place=place,
                   default_params=TunedParams(), param_ranges=RANGES,
                   soft_residency=True)
