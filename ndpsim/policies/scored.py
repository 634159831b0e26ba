"""``scored`` (ndpsim's own, issue 15): ``tp_lb_prefetch`` whose resident
experts are chosen by a learned linear score of features every policy may
read, fitted by :mod:`ndpsim.tune_scored`.

Score of expert e of layer l, ``s = w . f`` (:class:`ScoredParams`), with
features in activations per token (rates in [0, 1], so one weight scale
serves every model):

* ``f_prefill``: the expert's prefill count in the current prompt divided by
  the prompt's tokens (``count / (sum(counts) / top_k)``);
* ``f_decode``: its decode activation rate so far, an exponentially weighted
  count ``d <- decode_decay x d + activations`` per decode step, times
  ``1 - decode_decay``;
* ``f_recency``: recency of its last decode use, ``recency_decay ** (steps
  since it was last routed)`` (0 before its first decode use);
* ``f_layer``: the layer's position ``l / L`` (constant within a layer: it
  only moves the layer's loads in the cross-layer background queue).

The engine hands prefill policies per-expert counts only, not token
positions, so recency *within the prompt* is not readable here.

Hard mode (the default, how ``scored`` is evaluated).  Prefill: keep the
top-M experts of the layer by score among those the prompt routed to (M =
``floor(resident_fraction x capacity)``, ties by lower id), exactly as
``tp_lb_prefetch`` does by counts; the background queue is merged across
layers by descending score.  Decode: every layer updates ``f_decode`` and
``f_recency``; when the background link queue is empty, the best-scoring
expert not resident replaces the worst-scoring resident one if it beats it by
``margin`` (score units); the victim is evicted at once (only if the layer is
full), the newcomer arrives through the background queue.  With the default
weights (``w_prefill = 1``, the others 0) the decode score never changes, no
swap fires and the policy is ``tp_lb_prefetch`` bit for bit
(``tests/test_scored.py``).  Never reads future routing; never holds more
than M experts per layer.

Relaxed mode (``simulate(..., relaxed=True)``; only for fitting).  Prefill:
soft top-M by a soft rank, ``r_i = sum_{j != i} sigmoid((s_j - s_i) / tau)``
over the prompt's experts with ``tau = rank_temperature x SCORE_UNIT``, and
the resident weight ``sigmoid((M - r_i - 1 + 1e-3) / rank_temperature)``
(as ``tuned``'s soft top-M, with the soft rank in place of the hard one), so
``d e2e / d w`` is defined.  The balancer is the softmin
:func:`balance.soft_split`.  Decode: no swaps (the soft residency has no
evictions), so the decode weights get no relaxed gradient; the fit scores
its candidates in hard mode.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from ndpsim import base
from ndpsim.policies import balance
from ndpsim.policies import base as pb
from ndpsim.policies import tp_lb_adaptive
from ndpsim.policies import tp_lb_prefetch

WEIGHTS = ("w_prefill", "w_decode", "w_recency", "w_layer")
# Score units of the soft rank's temperature: rank_temperature x this.
SCORE_UNIT = 0.01


@base.params_dataclass
class ScoredParams:
  """Own knobs of ``scored`` (``PolicyParams.own``), scalars.

  w_prefill, w_decode, w_recency, w_layer: weights of the features in the
    module docstring (any real; default 1, 0, 0, 0 = ``tp_lb_prefetch``).
  margin: a decode candidate replaces the weakest resident only when its
    score exceeds the resident's by this much (score units, >= 0).
  decode_decay: per-step decay of the decode activation count (0, 1).
  recency_decay: per-step decay of the recency feature (0, 1).
  """
  w_prefill: Any = 1.0
  w_decode: Any = 0.0
  w_recency: Any = 0.0
  w_layer: Any = 0.0
  margin: Any = 0.02
  decode_decay: Any = 0.99
  recency_decay: Any = 0.7


RANGES = (("margin", 0.0, None, True, None),
          ("decode_decay", 0.0, 1.0, False, False),
          ("recency_decay", 0.0, 1.0, False, False))


def init(ctx, params):
  """Own state: [3, L, E] prefill rate, decayed decode count, recency."""
  start = tp_lb_prefetch.init(ctx, params)
  return start._replace(own=jnp.zeros((3, ctx.num_layers, ctx.num_experts)))


def score(own_state, layer, num_layers: int, knobs: ScoredParams) -> jax.Array:
  """[E] score of layer ``layer``'s experts from the policy's own state."""
  pre, dec, rec = own_state[0, layer], own_state[1, layer], own_state[2, layer]
  s = knobs.w_prefill * pre
  s = s + knobs.w_decode * (1.0 - knobs.decode_decay) * dec + knobs.w_recency * rec
  return s + knobs.w_layer * (layer / num_layers)


def prefill_rate(ctx, slots) -> jax.Array:
  """[E] prefill count / prompt tokens (every token routes to top_k experts)."""
  counts = tp_lb_prefetch.prefill_counts(ctx, slots)
  return counts, counts / jnp.maximum(jnp.sum(counts) / ctx.top_k, 1.0)


def _choose_hard(ctx, res, slots, gpu, s, counts):
  """Top-M of this layer by score among the prompt's experts: keep the ones
  the balancer loads anyway, queue the rest merged by score."""
  elig = counts > 0
  m = jnp.clip(jnp.floor(res.capacity + 1e-6), 0, ctx.num_experts)
  key = jnp.where(elig, s, -jnp.inf)
  want = (pb.rank_desc(key) < m) & elig
  loaded = jnp.zeros((ctx.num_experts,), bool).at[slots.ids].max(gpu & ~slots.resident)
  keep = want & loaded
  return pb.Requests(keep=keep, keep_is_prefetch=True, load=want & ~keep, load_key=s,
                     load_order=pb.order_desc(key), merge=True)


def soft_rank(s, elig, tau):
  """[E] soft descending rank: sum over the other eligible experts of
  ``sigmoid((s_j - s_i) / tau)`` (-> the hard rank, ties counting 1/2)."""
  d = jax.nn.sigmoid((s[None, :] - s[:, None]) / tau)
  mask = elig[None, :] & ~jnp.eye(s.shape[0], dtype=bool)
  return jnp.sum(jnp.where(mask, d, 0.0), axis=-1)


def _choose_soft(ctx, slots, gfrac, params, s, counts):
  """Relaxed :func:`_choose_hard`: soft top-M weights by the soft rank."""
  E = ctx.num_experts
  elig = counts > 0
  m = params.resident_fraction * ctx.capacity
  rank = soft_rank(s, elig, params.rank_temperature * SCORE_UNIT)
  want = jnp.where(elig, jax.nn.sigmoid((m - rank - 1.0 + 1e-3) / params.rank_temperature),
                   0.0)
  res_w = slots.res_w if slots.res_w is not None else jnp.zeros_like(gfrac)
  loaded = jnp.zeros((E,)).at[slots.ids].max(
      jnp.where(slots.valid, gfrac * (1.0 - res_w), 0.0))
  keep = jnp.minimum(want, loaded)
  key = jnp.where(elig, s, -jnp.inf)
  return pb.Requests(keep=keep, load=want - keep, load_key=jax.lax.stop_gradient(s),
                     load_order=pb.order_desc(jax.lax.stop_gradient(key)), merge=True,
                     keep_is_prefetch=True)


def _swap(ctx, res, s, layer, margin):
  """At most one decode swap of this layer as Requests (hard mode)."""
  row_res, pending, cand_ok, cand, victim, idle = tp_lb_adaptive.swap_pair(res, layer, s)
  any_res = jnp.any(row_res)
  full = jnp.sum(row_res | pending) >= jnp.floor(res.capacity + 1e-6)
  # Against the weakest resident (0 in an empty layer), full or not: with
  # constant scores nothing ever beats it.
  bar = jnp.where(any_res, s[victim], 0.0) + margin
  do = jnp.any(cand_ok) & (s[cand] > bar) & idle & (res.capacity >= 1)
  ids = jnp.arange(ctx.num_experts)
  return pb.Requests(evict=(ids == victim) & do & full & any_res,
                     load=(ids == cand) & do, load_key=s, at_most_one=True)


def _decode_update(own, layer, slots, knobs, num_experts):
  act = jnp.zeros((num_experts,)).at[slots.ids].add(
      jnp.where(slots.valid, slots.tokens, 0.0))
  dec = knobs.decode_decay * own[1, layer] + act
  rec = jnp.where(act > 0, 1.0, knobs.recency_decay * own[2, layer])
  return own.at[1, layer].set(dec).at[2, layer].set(rec)


def place(ctx, res, own, layer, slots, params, phase):
  knobs = params.own
  L = ctx.num_layers
  if ctx.relaxed:
    gfrac = balance.soft_split(slots, params.gpu_bias, params.ndp_bias,
                               params.temperature_s)
    p = pb.Placement(gpu_frac=gfrac, fetch=(gfrac > 0) & ~slots.resident & slots.valid,
                     ep_unit=jnp.zeros_like(slots.ids))
  else:
    gpu = balance.greedy_split(slots, params.gpu_bias, params.ndp_bias)
    p = pb.no_fetch_placement(slots, gpu)
  if phase == "prefill":
    counts, rate = prefill_rate(ctx, slots)
    own = own.at[0, layer].set(rate)
    s = score(own, layer, L, knobs)
    req = (_choose_soft(ctx, slots, gfrac, params, s, counts) if ctx.relaxed
           else _choose_hard(ctx, res, slots, gpu, s, counts))
    return p._replace(requests=req), own
  own = _decode_update(own, layer, slots, knobs, ctx.num_experts)
  if ctx.relaxed:
    return p, own
  s = score(own, layer, L, knobs)
  return p._replace(requests=_swap(ctx, res, s, layer, knobs.margin)), own


POLICY = pb.Policy(name="scored", ndp_mode="tp", init=init, place=place,
                   default_params=ScoredParams(), param_ranges=RANGES,
                   soft_residency=True)
