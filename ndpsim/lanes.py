"""The lanes of one MoE layer, written once against a small operator set.

:func:`layer_times` composes the GPU lane, the demand loads on the link, the
NDP lane, the partial-sum return and the reduction by their dependencies (see
``ndpsim/engine.py`` for the timeline).  It is written against :class:`Ops`
-- max of two, the slowest unit, mix/where, gating by "some NDP work", the
partial-count tables and the GPU lane -- with two sets (the diffrax/gymnax
pattern: one loop, the differentiable variant passed in):

* :func:`hard_ops`: exact maxima and ``where`` on booleans (the engine);
* :func:`soft_ops`: log-sum-exp maxima at a temperature and continuous
  mixing (``simulate(..., relaxed=True)``, ``ndpsim/relaxed.py``).

Hard residency is the soft weight in {0, 1}: the fetched share ``phi`` is a
boolean in hard mode, a fraction in soft mode.  Times are seconds; arrays are
[n] over slots, ``loads`` [N] over NDP units.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from ndpsim import relaxed
from ndpsim.policies import base as pb


class Ops(NamedTuple):
  """Operators of the lanes (see the module docstring).

  max2(a, b); slowest(loads, mode) -> the slowest unit's time; ndp_weight(valid,
  gfrac) -> "some work runs on the NDP units" (bool, or the largest NDP share);
  mix(w, a, b) -> a where w else b; gate(w, x) -> x where w else 0;
  partials(w, table, n) -> table entry for n partial sums (0 partials without
  NDP work); gpu_lane(start, fetch_start, gpu_s, frac, phi, fetch_s) -> (end,
  link busy for loads).
  """
  max2: Callable
  slowest: Callable
  ndp_weight: Callable
  mix: Callable
  gate: Callable
  partials: Callable
  gpu_lane: Callable
  soft: bool


def gpu_lane_end(start, fetch_start, gpu_s, frac, fetch, fetch_s):
  """End of the GPU expert lane.  Residents run first from ``start``; fetched
  slots run in slot order, each after its load (loads serialized from
  ``fetch_start``).  [n] arrays; returns (end, link busy for loads)."""
  work = gpu_s * frac
  res_work = jnp.sum(jnp.where(fetch, 0.0, work))
  fw = jnp.where(fetch, work, 0.0)
  ft = jnp.where(fetch, fetch_s * frac, 0.0)
  arrive = fetch_start + pb.cumsum(ft)
  suffix = jnp.sum(fw) - pb.cumsum(fw) + fw
  chain = jnp.max(jnp.where(fetch, arrive + suffix, -jnp.inf), initial=-jnp.inf)
  end = jnp.maximum(start + res_work + jnp.sum(fw), chain)
  return end, jnp.sum(ft)


def hard_ops() -> Ops:
  return Ops(
      max2=jnp.maximum, slowest=lambda loads, mode: jnp.max(loads),
      ndp_weight=lambda valid, gfrac: jnp.any(valid & (gfrac < 1.0)),
      mix=jnp.where, gate=lambda w, x: jnp.where(w, x, 0.0),
      partials=lambda w, table, n: table[jnp.where(w, n, 0).astype(jnp.int32)],
      gpu_lane=gpu_lane_end, soft=False)


def soft_ops(temperature) -> Ops:
  """Relaxed operators at ``temperature`` seconds.  TP units carry equal loads,
  so their max stays exact."""
  def slowest(loads, mode):
    return jnp.max(loads) if mode == "tp" else relaxed.smax(loads, temperature)

  return Ops(
      max2=lambda a, b: relaxed.smax2(a, b, temperature), slowest=slowest,
      ndp_weight=lambda valid, gfrac: jnp.max(jnp.where(valid, 1.0 - gfrac, 0.0),
                                              initial=0.0),
      mix=relaxed.mix, gate=lambda w, x: w * x,
      partials=lambda w, table, n: w * table[n],
      gpu_lane=lambda *a: relaxed.gpu_lane_end(*a, temperature), soft=True)


def ndp_unit_loads(mode: str, num_units: int, slots: pb.Slots, gfrac, ep_unit):
  """[N] busy time of each NDP unit for this layer (``gfrac`` [n]: GPU share of
  each slot, the rest runs on the units; ``ep_unit`` [n]: each slot's unit
  under expert parallelism)."""
  ndp_frac = jnp.where(slots.valid, 1.0 - gfrac, 0.0)
  if mode == "tp":
    return jnp.broadcast_to(jnp.sum(ndp_frac * slots.ndp_tp_s), (num_units,))
  return jax.ops.segment_sum(ndp_frac * slots.ndp_ep_s, ep_unit, num_segments=num_units)


class LayerTimes(NamedTuple):
  """Every lane's times for one layer (seconds; absolute unless said).

  gpu_end: GPU expert lane end.  fetch_busy / fetch_end: demand loads' link
  time and end.  w: NDP work present (bool or weight).  loads: [N] unit busy.
  slowest: the slowest unit's time.  bcast: activation broadcast.  ndp_end:
  NDP lane end.  idle_s: link time between the demand loads and the return
  (background loads use it).  ret / ret_end: partial-sum return time and end.
  red: reduction on the GPU.  end: the layer's end.  n_partials: partial sums
  returned.  link_gpu_free / bg_clock / link_ndp_free: link bookkeeping for the
  next layer.
  """
  gpu_end: Any
  fetch_busy: Any
  fetch_end: Any
  w: Any
  loads: Any
  slowest: Any
  bcast: Any
  ndp_end: Any
  idle_s: Any
  ret: Any
  ret_end: Any
  red: Any
  end: Any
  n_partials: Any
  link_gpu_free: Any
  bg_clock: Any
  link_ndp_free: Any


def layer_times(ops: Ops, mode: str, num_units: int, slots: pb.Slots, gfrac, phi,
                loads, order, pc, tr, bcast_start, shared_s, link_gpu_free,
                link_ndp_free, fetch_s) -> LayerTimes:
  """The lanes of one layer.  ``gfrac`` [n]: GPU share per slot; ``phi`` [n]:
  fetched part of it (bool hard, fraction soft); ``loads`` [N]: unit busy
  times; ``order``: demand-load issue order (None = slot order); ``pc``: the
  phase's :class:`~ndpsim.engine.PhaseCosts`; ``tr``: the router's decision."""
  ordered = (lambda x: x) if order is None else (lambda x: x[order])
  # Demand loads pre-empt background loads (no wait for one in flight).
  fetch_start = jnp.maximum(tr, link_gpu_free)
  gpu_end, fetch_busy = ops.gpu_lane(tr + shared_s, fetch_start, ordered(slots.gpu_s),
                                     ordered(gfrac), ordered(phi), fetch_s)
  fetch_end = fetch_start + fetch_busy
  w = ops.ndp_weight(slots.valid, gfrac)
  n_part = num_units if mode == "tp" else jnp.sum(loads > 0)
  slowest = ops.slowest(loads, mode)
  bcast = ops.gate(w, pc.bcast_s)
  ndp_end = bcast_start + bcast + slowest
  # Background loads use the idle link between demand loads and the return;
  # the small partial-sum message is not queued behind a bulk copy.
  idle = ops.gate(w, ndp_end - jnp.maximum(fetch_end, link_gpu_free))
  ret = ops.partials(w, pc.ret_s, n_part)
  ret_end = ops.max2(ndp_end, fetch_end) + ret
  red = ops.partials(w, pc.red_s, n_part)
  end = ops.max2(gpu_end, ops.mix(w, ret_end, tr)) + red
  return LayerTimes(
      gpu_end=gpu_end, fetch_busy=fetch_busy, fetch_end=fetch_end, w=w, loads=loads,
      slowest=slowest, bcast=bcast, ndp_end=ndp_end, idle_s=idle, ret=ret, ret_end=ret_end,
      red=red, end=end, n_partials=ops.gate(w, n_part) if ops.soft
      else jnp.where(w, n_part, 0).astype(jnp.int32),
      link_gpu_free=ops.mix(w, ret_end, jnp.maximum(fetch_end, link_gpu_free)),
      bg_clock=ops.mix(w, ret_end, fetch_end),
      link_ndp_free=ops.mix(w, bcast_start + bcast, link_ndp_free))
