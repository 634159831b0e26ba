"""Prefill merges into the background copy queue, kept lazily.

``residency.merge_enqueue`` merges a layer's loads into the loads not started
yet by descending key and rewrites every queued position: O(L E) gathers,
scatters and cumsums per layer over the [L, E] state, two thirds of a
prefill's run time.  During the prefill every layer merges once, in layer
order, and nothing else touches the queue (a layer's loads are queued in its
own ``apply``; nothing is evicted from the queue then), so the queue is
fully described by its order, and that order by a few per-row facts:

* every load costs ``fetch_s``, so the queue is slots ``0, 1, ...`` (a load
  in slot ``k`` occupies link seconds ``[k f, (k + 1) f]``);
* the loads not started yet are sorted by (descending key, earlier layer,
  lower id) -- the merge's order -- and each layer's loads were sorted so
  when merged, so the loads of a row not started yet are a suffix of its
  sorted loads;
* a load keeps its slot once started; the started loads are the first
  ``n_started`` slots, and loads start in queue order, so the next one to
  start is the best head of the rows' suffixes.

:class:`LazyQueue` keeps each row's sorted loads and how many have started;
:func:`merge` first gives slots to the loads that started since the last
merge (:func:`start_upto`: the queue's drain says how many, a while loop
takes the best row head each time -- usually 0-2 per layer), then appends the
layer's sorted row: O(E) per layer plus O(L) per started load.  After the
prefill, :func:`settle` gives the loads not started their slots (the same
loop, as if they all started) and writes ``queue_end_s = (slot + 1) x fetch_s``; the
decode reads positions as before.  Until then merged loads hold
``PENDING_S`` in ``queue_end_s`` (finite: queued; never arrived).  Equal to
the eager merge in exact arithmetic (``tests/test_lazy_queue.py`` checks it
against ``merge_enqueue`` and the engine end to end).

Positions and counts take no gradient: they are piecewise constant in keys
and drain; ``queue_end_s`` keeps its gradient through ``fetch_s``.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from ndpsim import base

# queue_end_s of a merged load whose slot is not known yet (finite: queued).
PENDING_S = 3.0e38
# The engine vmaps sequence groups under this axis name (engine._simulate_chunk).
GROUP_AXIS = "ndpsim_groups"


def _any_group(flag):
  """``flag`` or-reduced over the engine's group axis when tracing under it:
  a while loop with one predicate for all groups runs its body without the
  per-group select of the whole carry that a batched predicate costs (each
  group's body masks its own updates).  Outside the engine, ``flag``."""
  try:
    return jax.lax.pmax(flag.astype(jnp.int32), GROUP_AXIS) > 0
  except NameError:  # not under the engine's named vmap
    return flag


@base.params_dataclass
class LazyQueue:
  """Per-sequence prefill merges (module docstring); L layers, E experts.

  row_ids: [L, E] int32 expert ids of row l's merged loads in queue order
    (descending key, ties lower id); entries from ``row_n[l]`` on unused.
  row_n: [L] int32 loads merged in row l.
  started: [L] int32 loads of row l started (a prefix of its ``row_ids``).
  head_key: [L] key of row l's first load not started (-inf if none).
  slot: [L, E] int32 queue slot of each started load, -1 otherwise.
  n_started: int32 loads started (= slots given out).
  (Loads merged: :func:`n_queued`, the sum of ``row_n``.)
  """
  row_ids: jax.Array
  row_n: jax.Array
  started: jax.Array
  head_key: jax.Array
  slot: jax.Array
  n_started: jax.Array


def n_queued(lz: LazyQueue):
  """Loads merged so far, int32 (the sum of ``row_n``)."""
  return jnp.sum(lz.row_n, dtype=jnp.int32)


def empty(num_layers: int, num_experts: int) -> LazyQueue:
  """Nothing merged."""
  zl = jnp.zeros((num_layers,), jnp.int32)
  return LazyQueue(row_ids=jnp.zeros((num_layers, num_experts), jnp.int32), row_n=zl,
                   started=zl, head_key=jnp.full((num_layers,), -jnp.inf),
                   slot=jnp.full((num_layers, num_experts), -1, jnp.int32),
                   n_started=jnp.zeros((), jnp.int32))


def _start_one(lz: LazyQueue, keys, target) -> LazyQueue:
  """The best row head (largest key, ties: earlier layer) takes the next slot,
  if fewer than ``target`` loads have started (else ``lz`` unchanged)."""
  go = lz.n_started < target
  has = lz.started < lz.row_n
  best = jnp.max(jnp.where(has, lz.head_key, -jnp.inf))
  j = jnp.argmax(has & (lz.head_key >= best))
  i = lz.started[j]
  e = lz.row_ids[j, i]
  nxt = jnp.minimum(i + 1, lz.row_ids.shape[1] - 1)
  head = jnp.where(i + 1 < lz.row_n[j], keys[j, lz.row_ids[j, nxt]],
                   -jnp.inf).astype(lz.head_key.dtype)
  return dataclasses.replace(
      lz, slot=lz.slot.at[j, e].set(jnp.where(go, lz.n_started, lz.slot[j, e])),
      started=lz.started.at[j].add(go.astype(jnp.int32)),
      head_key=lz.head_key.at[j].set(jnp.where(go, head, lz.head_key[j])),
      n_started=lz.n_started + go.astype(jnp.int32))


def start_upto(lz: LazyQueue, target, keys) -> LazyQueue:
  """Loads start in queue order until ``target`` (int32) have started.
  keys: [L, E] the merged loads' keys (``Residency.queue_key``)."""
  keys = jax.lax.stop_gradient(keys)
  target = jnp.minimum(target, n_queued(lz)).astype(jnp.int32)
  return jax.lax.while_loop(lambda z: _any_group(z.n_started < target),
                            lambda z: _start_one(z, keys, target), lz)


def started_by(drained_s, fetch_s, queued):
  """Loads started once the queue has drained ``drained_s`` link seconds:
  slots k with ``k x fetch_s < drained_s - 1e-6 x fetch_s`` (the eager
  merge's test), int32."""
  k = jnp.ceil(jax.lax.stop_gradient(drained_s / fetch_s) - 1e-6)
  return jnp.clip(k, 0, queued).astype(jnp.int32)


def merge(res, layer, new, key_row, order, fetch_s):
  """Merges the loads ``new`` [E] bool of ``layer`` (keys ``key_row`` [E],
  ``order`` = argsort(-key_row, stable)) into ``res`` (a ``Residency`` with
  ``lazy`` set).  Returns (lazy queue, this layer's queue_end_s row)."""
  lz = res.lazy
  e_n = new.shape[0]
  key_row = jax.lax.stop_gradient(key_row)
  keys = res.queue_key.at[layer].set(key_row)
  lz = start_upto(lz, started_by(res.drained_s, fetch_s, n_queued(lz)), keys)
  new_sorted = new[order].astype(jnp.int32)
  before = jnp.cumsum(new_sorted, dtype=jnp.int32) - new_sorted
  row = jnp.zeros((e_n,), jnp.int32).at[jnp.where(new_sorted > 0, before, e_n)].set(
      order.astype(jnp.int32), mode="drop")
  n_new = jnp.sum(new_sorted, dtype=jnp.int32)
  head = jnp.where(n_new > 0, key_row[row[0]], -jnp.inf).astype(lz.head_key.dtype)
  lz = dataclasses.replace(
      lz, row_ids=lz.row_ids.at[layer].set(row), row_n=lz.row_n.at[layer].set(n_new),
      head_key=lz.head_key.at[layer].set(head))
  return lz, jnp.where(new, PENDING_S, res.queue_end_s[layer])


def settle(res, fetch_s):
  """Gives the merged loads not started their slots, in queue order after the
  started ones (as if all of them started now), and writes every merged
  load's ``queue_end_s``; returns the ``Residency`` without ``lazy``
  (positions as the eager merge has them)."""
  lz = start_upto(res.lazy, n_queued(res.lazy), res.queue_key)
  q = res.queue_end_s
  merged = (q >= PENDING_S) & jnp.isfinite(q)
  q = jnp.where(merged, (lz.slot + 1.0) * fetch_s, q)
  return dataclasses.replace(res, queue_end_s=q, lazy=None)
