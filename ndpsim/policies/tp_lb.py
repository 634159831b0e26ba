"""``tp_lb``: tensor parallelism plus load-balancing-aware GPU/NDP scheduling.

Contract: per layer, reads the activated experts and their costs (slots) and
moves a prefix of them (resident first, then most tokens first) to the GPU
while that lowers the layer's makespan (:func:`balance.greedy_split`); moved
experts that are not resident pay T_w on the link before computing.  Keeps no
residency: weights loaded for one layer are dropped after it.  Never reads
future routing.  The makespan is priced as the engine runs the layer (exactly,
or from above for splits with work on both sides) and the all-NDP split is
a candidate, so no layer -- hence no run -- is slower than ``ndp_tp``.
"""
from __future__ import annotations

from ndpsim.policies import balance
from ndpsim.policies import base as pb


def init(ctx, params):
  del ctx, params
  return pb.Start()


def place(ctx, res, own, layer, slots, params, phase):
  gpu = balance.greedy_split(slots, params.gpu_bias, params.ndp_bias)
  return pb.no_fetch_placement(slots, gpu), own


POLICY = pb.Policy(name="tp_lb", ndp_mode="tp", init=init, place=place)
