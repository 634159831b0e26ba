"""``tp_lb_prefetch``: the paper's full framework -- TP + load balancing +
dataset-free prefetch.

Contract: ``init`` reads only sizes and params (no dataset, no profile).
During prefill, after each layer's router, it reads that layer's activation
counts of the *current* prompt and chooses the top-M experts (M =
``floor(resident_fraction x capacity)``, ties by lower id); those the load
balancer already loaded for the prefill GEMMs stay resident, the rest join
the background load queue (the engine moves them in idle link time,
overlapping compute, and never lets them delay a demand load).  The queue is
kept in descending prefill counts across layers (ties: earlier layer, then
lower id): each layer's new loads are merged into the loads not started yet,
so the most-activated experts of the whole model arrive first and a larger
budget only adds loads behind those of a smaller one in their layer's
order.  During decode the resident set is fixed; every layer is split by
:func:`balance.greedy_split`, where resident experts cost no transfer and a
miss falls back to NDP unless loading it on demand lowers the makespan.
It never reads future routing and never holds more than M experts per layer.
``state.score`` holds each layer's prefill counts (the queue's order key).
"""
from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from ndpsim.policies import balance
from ndpsim.policies import base as pb


def init(ctx, params):
  cap = jnp.floor(params.resident_fraction * ctx.capacity + 1e-6)
  return pb.empty_state(ctx.num_layers, ctx.num_experts, cap)


def prefill_counts(ctx, slots):
  """[E] tokens routed to each expert of this layer (prefill slots)."""
  return jnp.zeros((ctx.num_experts,)).at[slots.ids].add(
      jnp.where(slots.valid, slots.tokens, 0.0))


def _cumsum_rows(x):
  """Inclusive cumsum of ``x`` [R, C] in row-major order (two short cumsums:
  XLA:CPU's cumsum of one long row is several times slower)."""
  rows = jnp.cumsum(x, axis=-1)
  return rows + (jnp.cumsum(rows[:, -1]) - rows[:, -1])[:, None]


def merge_enqueue(ctx, state, layer, want, key_row, order):
  """Queues background loads of ``want`` [E] experts of ``layer``, merged
  into the loads not started yet by descending key.

  ``state.score`` rows of earlier layers hold the keys of their queued loads
  (this layer's row is set to ``key_row``); the loads not started yet must
  already be in descending key order (every prefill merge keeps it), and
  ``order`` is ``argsort(-key_row, stable=True)``.  Ties go to the load
  queued first, then to the lower id.  Loads already started or done keep
  their place; each load costs ``ctx.fetch_s``.  O(L E) plus a binary search
  per new load (prefill only).
  """
  f = ctx.fetch_s
  L, E = ctx.num_layers, ctx.num_experts
  n = L * E
  score = state.score.at[layer].set(key_row)
  q = state.queue_end_s
  new = want & ~state.resident[layer] & jnp.isinf(q[layer])
  # Loads not started yet form the queue's tail, contiguous after ``front``;
  # their keys descend along it.
  pend = jnp.isfinite(q) & (q - f >= state.drained_s - 1e-6 * f)
  front = state.queued_s - jnp.sum(pend) * f
  idx = jnp.clip(jnp.round((q - front) / f) - 1.0, 0, n - 1).astype(jnp.int32)
  pkeys = jnp.full((n,), -jnp.inf).at[jnp.where(pend, idx, n).reshape(-1)].set(
      score.reshape(-1), mode="drop")
  # A new load goes after every pending load with a key at least its own; a
  # pending load moves back by the new loads placed before it.
  ahead = jnp.searchsorted(-pkeys, -key_row, side="right").astype(jnp.int32)
  placed = jnp.zeros((n,), jnp.int32).at[jnp.where(new, ahead, n)].add(1, mode="drop")
  shift = _cumsum_rows(placed.reshape(L, E)).reshape(-1)[idx]
  new_sorted = new[order].astype(jnp.int32)
  before = jnp.cumsum(new_sorted) - new_sorted
  rank = jnp.zeros((E,), jnp.int32).at[order].set(before, unique_indices=True)
  q = jnp.where(pend, front + (idx + shift + 1.0) * f, q)
  q = q.at[layer].set(jnp.where(new, front + (rank + ahead + 1.0) * f, q[layer]))
  return dataclasses.replace(
      state, score=score, queue_end_s=q, queued_s=state.queued_s + jnp.sum(new) * f,
      prefetched=state.prefetched.at[layer].set(state.prefetched[layer] | new))


def soft_merge_enqueue(ctx, state, layer, queued_row, key_row, order):
  """Relaxed :func:`merge_enqueue` for a :class:`~ndpsim.policies.base.SoftResidency`
  queue (``tuned`` in relaxed mode): this layer's loads of weights
  ``queued_row`` [E] (each ``weight x fetch_s`` link seconds) merged by
  descending key into the soft loads not started yet (ties: queued first).

  ``state.soft`` must not yet hold this layer's loads; ``order`` is
  ``argsort(-key_row, stable=True)``.  Returns ``(end_s, queued_s, score)``:
  the [L, E] end positions of every soft load after the merge (this layer's
  included), the new queue total and ``state.score`` with this layer's row
  set to ``key_row``.  Which loads count as not started is a hard test (the
  queue bookkeeping is piecewise linear, see ``ndpsim/relaxed.py``).
  """
  f = ctx.fetch_s
  soft = state.soft
  score = state.score.at[layer].set(key_row)
  dur = soft.queued * f
  pend = (dur > 0) & (soft.end_s - dur >= state.drained_s - 1e-6 * f)
  # Loads not started yet, in queue order (their keys descend).
  porder = jnp.argsort(jnp.where(pend, soft.end_s, jnp.inf).reshape(-1))
  pmask = pend.reshape(-1)[porder]
  pkeys = jnp.where(pmask, score.reshape(-1)[porder], -jnp.inf)
  pcum = jnp.cumsum(jnp.where(pmask, dur.reshape(-1)[porder], 0.0))
  front = state.queued_s - pcum[-1]
  ndur = jnp.where(queued_row > 0, queued_row * f, 0.0)[order]
  ncum = jnp.cumsum(ndur)
  prefix = lambda cum, i: jnp.where(i > 0, cum[jnp.maximum(i - 1, 0)], 0.0)
  # A pending load moves back by the new loads with a larger key; a new load
  # goes after every pending load with a key at least its own.
  shift = prefix(ncum, jnp.searchsorted(-key_row[order], -score, side="left"))
  ahead = prefix(pcum, jnp.searchsorted(-pkeys, -key_row, side="right"))
  own = jnp.zeros_like(ncum).at[order].set(ncum)
  end = jnp.where(pend, soft.end_s + shift, soft.end_s)
  end = end.at[layer].set(front + ahead + own)
  return end, state.queued_s + ncum[-1], score


def choose_from_prefill(ctx, state, layer, slots, gpu, key_row=None):
  """Top-M of this layer's prefill counts: keep loaded ones, queue the rest
  (:func:`merge_enqueue`, key ``key_row``: the counts unless given -- any
  positive multiple of the counts common to all layers orders alike)."""
  counts = prefill_counts(ctx, slots)
  loaded = jnp.zeros((ctx.num_experts,), bool).at[slots.ids].max(gpu & ~slots.resident)
  # Integer counts: one packed int32 sort gives the top-M and the queue order
  # (= top_m_mask(counts, capacity, eligible=counts > 0) and its ranks).
  corder = pb.count_order(counts)
  want = corder.first(jnp.clip(jnp.floor(state.capacity + 1e-6), 0, ctx.num_experts)) & (
      counts > 0)
  keep = want & loaded
  row_q = jnp.where(keep, 0.0, state.queue_end_s[layer])
  state = dataclasses.replace(
      state, resident=state.resident.at[layer].set(state.resident[layer] | keep),
      queue_end_s=state.queue_end_s.at[layer].set(row_q),
      prefetched=state.prefetched.at[layer].set(state.prefetched[layer] | keep))
  key = counts if key_row is None else key_row
  return merge_enqueue(ctx, state, layer, want & ~keep, key, corder.order), counts


def place(ctx, state, layer, slots, params, phase):
  gpu = balance.greedy_split(slots, params.gpu_bias, params.ndp_bias)
  if phase == "prefill":
    state, _ = choose_from_prefill(ctx, state, layer, slots, gpu)
  return pb.no_fetch_placement(slots, gpu), state


POLICY = pb.Policy(name="tp_lb_prefetch", ndp_mode="tp", init=init, place=place)
