"""The lazy prefill merge (``ndpsim/lazy_queue.py``) against the eager one.

``residency.merge_enqueue`` rewrites every queued position per merge;
``lazy_merge_enqueue`` keeps per-row sorted loads and ``settle`` writes the
positions once.  Random merge sequences (integer keys with many ties, drains
that stop inside a load, exactly at a load's start, past the queue's end,
kept experts, experts resident from the start) must give the same queue
positions, totals and flags (the engine's prefill merges lazily; the NumPy
reference, golden and clock tests check it end to end).  Groups run in
chunks (``engine.CHUNK_GROUPS``) give the outputs of one vmapped call.
"""
from __future__ import annotations

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ndpsim import lazy_queue
from ndpsim import residency as rs

L, E = 7, 12
F = 0.25  # fetch_s, exact in binary: slot boundaries are exact


def _ctx():
  return types.SimpleNamespace(num_layers=L, num_experts=E, fetch_s=jnp.float32(F))


def _drain(rng):
  """Idle link seconds: none, inside a load, exactly k loads, or a lot."""
  kind = rng.integers(4)
  return [0.0, rng.uniform(0, 2) * F, rng.integers(1, 3) * F, 40 * F][kind]


def _run(seed, lazy):
  rng = np.random.default_rng(seed)
  resident = rng.random((L, E)) < 0.15
  res = rs.empty(L, E, 4.0, resident, lazy=lazy)
  ctx = _ctx()
  started = []
  for layer in range(L):
    res = rs.drain(res, _drain(rng))
    want = rng.random(E) < 0.6
    keep = want & (rng.random(E) < 0.2)
    key = rng.integers(0, 4, E).astype(np.float32)  # many ties
    req = rs.Requests(keep=jnp.asarray(keep), keep_is_prefetch=True,
                      load=jnp.asarray(want & ~keep), load_key=jnp.asarray(key),
                      load_order=jnp.argsort(-jnp.asarray(key), stable=True), merge=True)
    res = rs.apply(ctx, res, layer, req)
    if lazy:
      started.append(int(res.lazy.n_started))
    else:  # loads whose slot starts before the drain, as the eager merge tests it
      q = np.asarray(res.queue_end_s)
      started.append(int(np.sum(np.isfinite(q) & (q > 0) & (q - F < float(res.drained_s)
                                                            - 1e-6 * F))))
    res = rs.drain(res, _drain(rng))
  return rs.settle(ctx, res), started


@pytest.mark.reference
@pytest.mark.parametrize("seed", range(12))
def test_lazy_merge_gives_the_eager_queue(seed):
  eager, _ = _run(seed, lazy=False)
  lazy, _ = _run(seed, lazy=True)
  assert lazy.lazy is None
  np.testing.assert_allclose(np.asarray(lazy.queue_end_s), np.asarray(eager.queue_end_s),
                             rtol=1e-6, atol=0)
  for name in ("resident", "prefetched", "queue_key"):
    np.testing.assert_array_equal(np.asarray(getattr(lazy, name)),
                                  np.asarray(getattr(eager, name)), err_msg=name)
  for name in ("queued_s", "drained_s", "held_n"):
    np.testing.assert_allclose(float(getattr(lazy, name)), float(getattr(eager, name)),
                               rtol=1e-6, err_msg=name)
  assert float(lazy.held_n) == float(rs.count_held(lazy))


@pytest.mark.reference
def test_started_loads_are_counted_like_the_eager_merge():
  """Before each merge the lazy queue has given slots to exactly the loads
  the eager merge treats as started (drains stop inside loads, at their
  starts and past the queue's end)."""
  for seed in range(12):
    # The eager count is taken after the merge from positions; the lazy one
    # counts loads started before the merge (new loads never have).
    _, lazy_started = _run(seed, lazy=True)
    _, eager_started = _run(seed, lazy=False)
    assert lazy_started == eager_started, seed


@pytest.mark.reference
def test_start_upto_takes_the_best_head_and_never_overruns():
  """Row heads by (key, earlier layer); a target past the queued loads stops
  at them; a merged residency jits and vmaps (the engine's use)."""
  lz = lazy_queue.empty(3, 4)
  keys = jnp.asarray([[3.0, 1.0, 0.0, 0.0], [3.0, 2.0, 0.0, 0.0], [5.0, 0.0, 0.0, 0.0]])
  lz = lazy_queue.LazyQueue(
      row_ids=jnp.asarray([[0, 1, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0]], jnp.int32),
      row_n=jnp.asarray([2, 2, 1], jnp.int32), started=jnp.zeros((3,), jnp.int32),
      head_key=jnp.asarray([3.0, 3.0, 5.0]), slot=jnp.full((3, 4), -1, jnp.int32),
      n_started=jnp.zeros((), jnp.int32))
  assert int(lazy_queue.n_queued(lz)) == 5
  out = jax.jit(lazy_queue.start_upto)(lz, jnp.asarray(99, jnp.int32), keys)
  # 5 (row 2), 3 (row 0, earlier), 3 (row 1), 2 (row 1), 1 (row 0)
  np.testing.assert_array_equal(np.asarray(out.slot)[:, :2], [[1, 4], [2, 3], [0, -1]])
  assert int(out.n_started) == 5
  batch = jax.tree_util.tree_map(lambda x: jnp.stack([x, x]), lz)
  two = jax.vmap(lambda z, t: lazy_queue.start_upto(z, t, keys))(
      batch, jnp.asarray([1, 3], jnp.int32))
  np.testing.assert_array_equal(np.asarray(two.n_started), [1, 3])


@pytest.mark.reference
def test_chunked_groups_match_one_chunk(monkeypatch):
  """Groups simulated in chunks (``engine.CHUNK_GROUPS``) give every output of
  one vmapped call: 5 groups of batch 2 in chunks of 2 (3 chunks, the last
  overlapping the one before: one group run twice) and in chunks of 1 (they
  tile the groups: the scan's xs), the latter with uint8 ids (the routing
  generator's narrow ``id_dtype``; the engine narrows ids to int8 itself)."""
  from ndpsim import engine  # pylint: disable=import-outside-toplevel
  from ndpsim.workload import models as M  # pylint: disable=import-outside-toplevel
  from tests import engine_util as U  # pylint: disable=import-outside-toplevel
  model = M.get_model("olmoe-1b-7b")
  r = U.numpy_routing(model, 10, 16, 4)
  ss, sp = U.load()
  from ndpsim import policies  # pylint: disable=import-outside-toplevel
  pol = policies.get("tp_lb_prefetch")
  pp = policies.make_params(pol)
  outs = []
  for chunk, dt in ((engine.CHUNK_GROUPS, np.int32), (2, np.int32), (1, np.uint8)):
    monkeypatch.setattr(engine, "CHUNK_GROUPS", chunk)
    fn = jax.jit(engine.simulate_core, static_argnames=engine.STATIC_ARGNAMES)  # fresh trace
    outs.append(fn(ss, sp, model, pol, pp, jnp.asarray(r.prefill_ids.astype(dt)),
                   jnp.asarray(r.decode_ids.astype(dt)), None, 2))
  one = outs[0]
  assert np.asarray(one.e2e_s).shape == (5,)
  assert engine.ids_dtype(model.num_experts) == jnp.int8
  for chunked in outs[1:]:
    for a, b in zip(jax.tree_util.tree_leaves(one), jax.tree_util.tree_leaves(chunked)):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.reference
def test_lazy_merge_under_x64():
  """The lazy queue keeps its int32 counters and key dtype with x64 on (the
  gradient tests run the engine in x64; a sum there is int64)."""
  with jax.enable_x64(True):
    eager, _ = _run(5, lazy=False)
    lazy, _ = _run(5, lazy=True)
  np.testing.assert_allclose(np.asarray(lazy.queue_end_s), np.asarray(eager.queue_end_s),
                             rtol=1e-12)


@pytest.mark.analytic
@pytest.mark.parametrize("num_experts", [12, 32, 40, 128])
def test_bit_rows_match_bool_rows(num_experts):
  """``prefetched`` / ``used`` bit rows (``residency.pack_bits``): packing,
  unpacking, testing and setting bits agree with the [E] bool rows they
  stand for, across word boundaries and a partial last word."""
  rng = np.random.default_rng(num_experts)
  w = rs.bit_words(num_experts)
  assert w == -(-num_experts // 32)
  for _ in range(5):
    row = rng.random(num_experts) < 0.4
    bits = rs.pack_bits(jnp.asarray(row))
    assert bits.shape == (w,) and bits.dtype == jnp.uint32
    want = [sum(1 << (e - 32 * i) for e in range(32 * i, min(32 * i + 32, num_experts))
                if row[e]) for i in range(w)]
    np.testing.assert_array_equal(np.asarray(bits, np.uint64), want)
    np.testing.assert_array_equal(np.asarray(rs.unpack_bits(bits, num_experts)), row)
    ids = rng.choice(num_experts, size=min(8, num_experts), replace=False).astype(np.int32)
    np.testing.assert_array_equal(np.asarray(rs.bits_at(bits, jnp.asarray(ids))), row[ids])
    on = rng.random(ids.size) < 0.5
    set_ = np.zeros(num_experts, bool)
    set_[ids[on]] = True
    got = rs.bits_of(jnp.asarray(ids), jnp.asarray(on), w)
    np.testing.assert_array_equal(np.asarray(rs.unpack_bits(got, num_experts)), set_)
    assert int(rs.count_bits(bits | got)) == int(np.sum(row | set_))
    grid = jnp.zeros((3, w), jnp.uint32)
    grid = rs.or_bits(rs.or_bits(grid, 1, jnp.asarray(row)), 1, jnp.asarray(set_))
    np.testing.assert_array_equal(np.asarray(rs.unpack_bits(grid, num_experts)),
                                  np.stack([np.zeros_like(row), row | set_,
                                            np.zeros_like(row)]))
