"""``monde_resident``: an ablation of MoNDE -- a profiled hot set kept resident.

Not MoNDE as published (that is ``monde``: hot experts are chosen at runtime
and copied per use, nothing stays resident; MoNDE §3.2-3.3).  This is the
round-1 reading, kept to show what residency adds: a profiled hot set pinned
in GPU memory, the rest expert-parallel on the NDP units.

Contract: ``init`` reads the offline profile ``ctx.profile_counts`` [L, E]
(activation counts measured on a profiling set of routing samples -- the
dataset this baseline needs) and pins, per layer, the ``capacity`` most
popular experts in GPU memory (loaded once at model-load time, before the
run, so no link time is charged).  ``place`` runs activated hot experts on the
GPU and every other activated expert whole on its NDP unit (round-robin
expert parallelism).  Activations move instead of weights: it never fetches.
It must not read the current sequence's routing to choose residents.
"""
from __future__ import annotations

from ndpsim.policies import base as pb


def init(ctx, params):
  cap = pb.budget_slots(ctx, params)
  return pb.Start(capacity=cap, resident=pb.top_m_mask(ctx.profile_counts, cap))


def place(ctx, res, own, layer, slots, params, phase):
  p = pb.no_fetch_placement(slots, slots.resident)
  return p._replace(ep_unit=pb.ep_units(slots.ids, ctx.num_units)), own


POLICY = pb.Policy(name="monde_resident", ndp_mode="ep", init=init, place=place)
