"""Lane arithmetic of the engine's relaxed mode (``simulate(..., relaxed=True)``).

In relaxed mode every max over lanes and units becomes a temperature
log-sum-exp (``PolicyParams.temperature_s``, seconds), the GPU share of each
activated expert is continuous, and -- for policies with a
:class:`~ndpsim.policies.base.SoftResidency` (``tuned``) -- so is the fraction
of each expert's columns resident in GPU memory.  Discrete indicators of the
hard engine ("some slot is fetched", "some work runs on the NDP side") become
the largest continuous share, so the layer time is continuous in every
ratio.  Everything converges to the hard engine as the temperatures fall.

Background copies never delay demand loads (the hard engine lets demand
loads pre-empt them), so no lane waits for a copy in flight; soft residency
arrives through the same queue as the hard one, merged across layers by
descending prefill counts (``residency.soft_merge_enqueue``).

Not relaxed (piecewise linear, so gradients exist almost everywhere): the
background queue's ``min``/``max`` bookkeeping and which of its loads have
started, the ordering of slots inside the balancer and of the queue, the
expert-parallel unit map.  Not modelled in relaxed mode: the GPU staging
room (``Slots.stage_room``) -- the soft balancer does not price it and the
relaxed lanes do not cap loads by it, so the limit matches the hard engine
only where the room does not bind.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

BIG = 1e30


def smax(x, temperature, mask=None, log_w=None, axis=0):
  """Weighted log-sum-exp max along ``axis``: ``T log sum_i w_i exp(x_i / T)``.

  Entries with ``mask`` False are ignored (at least one must be kept);
  ``log_w`` (default 0) down-weights entries continuously (an entry of weight
  w -> 0 vanishes smoothly).  Computed relative to the (stop-gradient) max,
  so absolute times of seconds keep their precision at microsecond
  temperatures.  Upper-bounds the max of the kept entries by at most
  ``T log n`` (for unit weights) and converges to it as ``T`` -> 0.
  """
  x = jnp.asarray(x)
  t = jnp.asarray(temperature)
  keep = jnp.ones(x.shape, bool) if mask is None else mask
  m = jnp.max(jnp.where(keep, x, -jnp.inf), axis=axis, keepdims=True)
  m = jax.lax.stop_gradient(jnp.where(jnp.isfinite(m), m, 0.0))
  z = (jnp.where(keep, x, m) - m) / t
  if log_w is not None:
    z = z + log_w
  z = jnp.where(keep, z, -BIG)
  return jnp.squeeze(m, axis) + t * jax.nn.logsumexp(z, axis=axis)


def smax2(a, b, temperature):
  """Element-wise soft max of two arrays."""
  a, b = jnp.broadcast_arrays(jnp.asarray(a), jnp.asarray(b))
  return smax(jnp.stack([a, b]), temperature)


def safe_log(w):
  """log(w) for w > 0, a large negative finite number at w == 0 (no NaN
  gradients)."""
  pos = w > 0
  return jnp.where(pos, jnp.log(jnp.where(pos, w, 1.0)), -BIG)


def gpu_lane_end(start, fetch_start, gpu_s, frac, phi, fetch_s, temperature):
  """Relaxed :func:`ndpsim.lanes.gpu_lane_end`.

  ``frac`` [n]: GPU share of each slot; ``phi`` [n]: fetched fraction of that
  share (1 - resident fraction; 0/1 for hard residency).  The resident part
  of every slot runs first from ``start``; the fetched parts run in slot
  order, each after its share of the serialized loads from ``fetch_start``.
  The max over the chain is a weighted log-sum-exp (weight = fetched share),
  so a share that falls to 0 leaves continuously.  Returns (end, link busy).
  """
  work = gpu_s * frac
  fw = work * phi
  res_work = jnp.sum(work - fw)
  ft = fetch_s * frac * phi
  arrive = fetch_start + jnp.cumsum(ft)
  suffix = jnp.sum(fw) - jnp.cumsum(fw) + fw
  share = frac * phi
  x = jnp.concatenate([(start + res_work + jnp.sum(fw))[None], arrive + suffix])
  mask = jnp.concatenate([jnp.ones((1,), bool), share > 0])
  log_w = jnp.concatenate([jnp.zeros((1,)), safe_log(share)])
  return smax(x, temperature, mask=mask, log_w=log_w), jnp.sum(ft)


def slot_residency(soft, layer, ids, drained_s, temperature):
  """[n] resident fraction of each slot's expert now: ``keep`` plus its
  queued part once the background queue has drained to its end position,
  with a linear ramp of ``temperature`` link seconds before it (the hard
  engine flips at ``end``; the ramp keeps the weight continuous in queue
  positions and vanishes as the temperature falls)."""
  keep = soft.keep[layer, ids]
  q = soft.queued[layer, ids]
  end = soft.end_s[layer, ids]
  a = jnp.clip((drained_s - end) / temperature + 1.0, 0.0, 1.0)
  return jnp.clip(keep + q * a, 0.0, 1.0)


def mix(w, a, b):
  """``w a + (1 - w) b``: the relaxed ``where(flag, a, b)``."""
  return w * a + (1.0 - w) * b
