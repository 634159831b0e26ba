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
The engine applies the keep/queue requests (``ndpsim/residency.py``); the
queue's order key is each layer's prefill counts.
"""
from __future__ import annotations

import jax.numpy as jnp

from ndpsim.policies import balance
from ndpsim.policies import base as pb


def init(ctx, params):
  return pb.Start(capacity=pb.budget_slots(ctx, params))


def prefill_counts(ctx, slots):
  """[E] tokens routed to each expert of this layer (prefill slots: one per
  expert in id order, ``pb.Slots``; no scatter).  The same expression as the
  engine's issue order reads (``engine_layer._issue_order``), so XLA computes
  the count order once for both."""
  del ctx
  return pb.prefill_tokens(slots)


def choose_from_prefill(ctx, res, slots, gpu, key_row=None):
  """Top-M of this layer's prefill counts: keep the ones the balancer loads
  anyway, queue the rest merged by ``key_row`` (the counts unless given --
  any positive multiple of the counts common to all layers orders alike).
  Returns ``(Requests, counts)``."""
  counts = prefill_counts(ctx, slots)
  loaded = gpu & ~slots.resident  # prefill slots are the experts in id order
  # Integer counts: one packed int32 sort gives the top-M and the queue order
  # (= top_m_mask(counts, capacity, eligible=counts > 0) and its ranks).
  corder = pb.count_order(counts)
  want = corder.first(jnp.clip(jnp.floor(res.capacity + 1e-6), 0, ctx.num_experts)) & (
      counts > 0)
  keep = want & loaded
  key = counts if key_row is None else key_row
  req = pb.Requests(keep=keep, keep_is_prefetch=True, load=want & ~keep, load_key=key,
                    load_order=corder.order, merge=True)
  return req, counts


def place(ctx, res, own, layer, slots, params, phase):
  gpu = balance.greedy_split(slots, params.gpu_bias, params.ndp_bias)
  p = pb.no_fetch_placement(slots, gpu)
  if phase == "prefill":
    req, _ = choose_from_prefill(ctx, res, slots, gpu)
    p = p._replace(requests=req)
  return p, own


POLICY = pb.Policy(name="tp_lb_prefetch", ndp_mode="tp", init=init, place=place)
