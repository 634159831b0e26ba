"""``tp_lb_adaptive`` (ndpsim's own): ``tp_lb_prefetch`` whose resident set
keeps adapting during decode by recency and frequency.

Contract: as ``tp_lb_prefetch`` during prefill (the prefill counts of the
current prompt seed the resident set, the background queue's order and the
score).  The score of each expert is an exponentially weighted activation
count per layer: ``score <- decay x score + activations``, once per decode
step (its own state, [L, E]; knobs in :class:`AdaptiveParams`).  When the
background link queue is empty (no load pending), a layer
may swap one expert: the best-scoring expert not resident replaces the
worst-scoring resident one if it beats it by ``adapt_margin``; the victim's
memory is freed at once and the newcomer arrives through the background
queue, in link time the demand traffic leaves idle.  Reads only the current
and past activations of the sequence; never more than M residents per layer.
"""
from __future__ import annotations

from typing import Any

import jax.numpy as jnp

from ndpsim import base
from ndpsim.policies import balance
from ndpsim.policies import base as pb
from ndpsim.policies import tp_lb_prefetch


@base.params_dataclass
class AdaptiveParams:
  """Own knobs of ``tp_lb_adaptive`` (``PolicyParams.own``).

  adapt_decay: per-step decay of the exponentially weighted activation count
    (0 < decay < 1; closer to 1 = longer memory).
  adapt_margin: a candidate replaces the weakest resident expert only when its
    score exceeds the resident's by this margin (activations, >= 0).
  """
  adapt_decay: Any = 0.99
  adapt_margin: Any = 2.0


RANGES = (("adapt_decay", 0.0, 1.0, False, False),
          ("adapt_margin", 0.0, None, True, None))


def init(ctx, params):
  start = tp_lb_prefetch.init(ctx, params)
  return start._replace(own=jnp.zeros((ctx.num_layers, ctx.num_experts)))


def swap_pair(res, layer, score_row):
  """The decode swap's two ends in one layer, shared by the swapping policies.

  score_row: [E] score of each expert.  Returns ``(row_res, pending, cand_ok,
  cand, victim, idle)``: [E] resident and queued-not-arrived masks, [E]
  experts that may be loaded (neither), the best such candidate and the
  weakest resident (ids), and whether the copy queue is drained (a swap only
  uses idle link time)."""
  row_res = res.resident[layer]
  q = res.queue_end_s[layer]
  pending = jnp.isfinite(q) & (q > res.drained_s)
  cand_ok = ~row_res & ~pending
  cand = jnp.argmax(jnp.where(cand_ok, score_row, -jnp.inf))
  victim = jnp.argmin(jnp.where(row_res, score_row, jnp.inf))
  idle = res.queued_s - res.drained_s <= 1e-12
  return row_res, pending, cand_ok, cand, victim, idle


def _swap(ctx, res, score_row, layer, params):
  """At most one swap of this layer as :class:`~ndpsim.residency.Requests`."""
  row_res, pending, cand_ok, cand, victim, idle = swap_pair(res, layer, score_row)
  n_held = jnp.sum(row_res | pending)
  full = n_held >= res.capacity
  better = score_row[cand] > jnp.where(full, score_row[victim], -jnp.inf) + params.adapt_margin
  do = jnp.any(cand_ok) & better & idle & (res.capacity >= 1)
  evict = do & full
  ids = jnp.arange(ctx.num_experts)
  return pb.Requests(evict=(ids == victim) & evict, load=(ids == cand) & do,
                     load_key=score_row, at_most_one=True)


def place(ctx, res, own, layer, slots, params, phase):
  knobs = params.own
  gpu = balance.greedy_split(slots, params.gpu_bias, params.ndp_bias)
  p = pb.no_fetch_placement(slots, gpu)
  if phase == "prefill":
    # Every layer routes the same prompt tokens, so the seeds are one common
    # multiple of the counts: they order the background queue as the counts do.
    counts = tp_lb_prefetch.prefill_counts(ctx, slots)
    per_token = counts / jnp.maximum(jnp.sum(counts) / ctx.top_k, 1.0)
    seed = per_token / (1.0 - knobs.adapt_decay)
    req, _ = tp_lb_prefetch.choose_from_prefill(ctx, res, slots, gpu, key_row=seed)
    return p._replace(requests=req), own.at[layer].set(seed)
  act = jnp.zeros((ctx.num_experts,)).at[slots.ids].add(
      jnp.where(slots.valid, slots.tokens, 0.0))
  row = knobs.adapt_decay * own[layer] + act
  return p._replace(requests=_swap(ctx, res, row, layer, knobs)), own.at[layer].set(row)


POLICY = pb.Policy(name="tp_lb_adaptive", ndp_mode="tp", init=init, place=place,
                   default_params=AdaptiveParams(), param_ranges=RANGES)
