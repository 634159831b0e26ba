"""``tp_lb_adaptive`` (ndpsim's own): ``tp_lb_prefetch`` whose resident set
keeps adapting during decode by recency and frequency.

Contract: as ``tp_lb_prefetch`` during prefill (the prefill counts of the
current prompt seed the resident set, the background queue's order and the
score).  The score of each expert is an exponentially weighted activation
count per layer: ``score <- decay x score + activations``, once per decode
step.  When the background link queue is empty (no load pending), a layer
may swap one expert: the best-scoring expert not resident replaces the
worst-scoring resident one if it beats it by ``adapt_margin``; the victim's
memory is freed at once and the newcomer arrives through the background
queue, in link time the demand traffic leaves idle.  Reads only the current
and past activations of the sequence; never more than M residents per layer.
"""
from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from ndpsim.policies import balance
from ndpsim.policies import base as pb
from ndpsim.policies import tp_lb_prefetch


def init(ctx, params):
  return tp_lb_prefetch.init(ctx, params)


def _swap(ctx, state, layer, params):
  res = state.resident[layer]
  q = state.queue_end_s[layer]
  pending = jnp.isfinite(q) & (q > state.drained_s)
  score = state.score[layer]
  cand_ok = ~res & ~pending
  cand = jnp.argmax(jnp.where(cand_ok, score, -jnp.inf))
  victim = jnp.argmin(jnp.where(res, score, jnp.inf))
  n_held = jnp.sum(res | pending)
  full = n_held >= state.capacity
  better = score[cand] > jnp.where(full, score[victim], -jnp.inf) + params.adapt_margin
  idle = state.queued_s - state.drained_s <= 1e-12
  do = jnp.any(cand_ok) & better & idle & (state.capacity >= 1)
  evict = do & full
  res = res.at[victim].set(jnp.where(evict, False, res[victim]))
  q = q.at[victim].set(jnp.where(evict, jnp.inf, q[victim]))
  state = dataclasses.replace(state, resident=state.resident.at[layer].set(res),
                              queue_end_s=state.queue_end_s.at[layer].set(q))
  want = jnp.zeros_like(res).at[cand].set(do)
  return pb.enqueue(state, layer, want, score, ctx.fetch_s)


def place(ctx, state, layer, slots, params, phase):
  gpu = balance.greedy_split(slots, params.gpu_bias, params.ndp_bias)
  if phase == "prefill":
    # Every layer routes the same prompt tokens, so the seeds are one common
    # multiple of the counts: they order the background queue as the counts do.
    counts = tp_lb_prefetch.prefill_counts(ctx, slots)
    per_token = counts / jnp.maximum(jnp.sum(counts) / ctx.top_k, 1.0)
    seed = per_token / (1.0 - params.adapt_decay)
    state, _ = tp_lb_prefetch.choose_from_prefill(ctx, state, layer, slots, gpu,
                                                  key_row=seed)
  else:
    act = jnp.zeros((ctx.num_experts,)).at[slots.ids].add(
        jnp.where(slots.valid, slots.tokens, 0.0))
    row = params.adapt_decay * state.score[layer] + act
    state = dataclasses.replace(state, score=state.score.at[layer].set(row))
    state = _swap(ctx, state, layer, params)
  return pb.no_fetch_placement(slots, gpu), state


POLICY = pb.Policy(name="tp_lb_adaptive", ndp_mode="tp", init=init, place=place)
