"""Sharding one study's sequences over every device (and every host).

The sequence axis is padded to a multiple of (batch x devices) by repeating
its first rows and placed with ``NamedSharding(Mesh(devices, ("seq",)),
PartitionSpec("seq"))``; results are gathered across processes and the
padding dropped, so numbers do not depend on the device count -- up to float32
rounding: each device runs its S / devices sequences as one batch, and XLA
vectorises a batch of 1 and a batch of 4 differently, so a long sum (a lane's
busy time over layers and steps) may round differently.  The bound is
:data:`DEVICE_COUNT_RTOL` on every number of a result row (measured: at most
6e-7 relative, one field of 20 in 1 of 6 rows, on the tiny test model with 1
vs 4 forced host devices); ``tests/test_device_count.py`` holds it.  Decisions
(which expert goes where) are the same; a tie that one rounding flips would
show as a larger difference and fail that test.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from ndpsim import base, engine, policies, results
from ndpsim.hw import system as system_mod
from ndpsim.workload import models as M
from ndpsim.workload import routing as R

SEQ_AXIS = "seq"
DEVICE_COUNT_RTOL = 1e-5  # results on any device count agree to this (relative)


def device_mesh() -> Mesh:
  """A 1-D mesh over every device (all hosts' after jax.distributed.initialize)."""
  return Mesh(np.asarray(jax.devices()), (SEQ_AXIS,))


def shard_sequences(x: np.ndarray, mesh: Mesh, multiple: int) -> jax.Array:
  """``x`` [S, ...] padded (repeating its first rows) to a multiple of
  ``multiple`` x devices and sharded on axis 0 over ``mesh``."""
  if mesh.devices.size == 1:  # nothing to shard: the plain (uncommitted) array
    return jnp.asarray(x)
  n = multiple * mesh.devices.size
  pad = (-x.shape[0]) % n
  if pad:
    reps = np.concatenate([x] + [x[: min(pad, x.shape[0])]] * math.ceil(pad / x.shape[0]))
    x = reps[: x.shape[0] + pad]
  sharding = NamedSharding(mesh, PartitionSpec(SEQ_AXIS))
  return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])


# What this process simulated of the evaluation sequences, summed over
# simulate_sharded calls and their budgets: ``sequences`` rows of its own
# (addressable) shards, padding included, of ``total`` rows in all; ``rows``
# the [start, stop) ranges of those shards.  The binary prints it per process
# under --distributed, so that a test can see each process ran only its shard.
LOCAL_WORK: dict = {"sequences": 0, "total": 0, "rows": set()}


def _count_local(x: jax.Array, budgets: int) -> None:
  shards = getattr(x, "addressable_shards", None)
  if not shards or len(getattr(x.sharding, "device_set", ())) <= 1:
    spans = [(0, x.shape[0])]  # one device: every row is this process's
  else:
    spans = [(s.index[0].start or 0, x.shape[0] if s.index[0].stop is None
              else s.index[0].stop) for s in shards]
  LOCAL_WORK["sequences"] += budgets * sum(b - a for a, b in spans)
  LOCAL_WORK["total"] += budgets * x.shape[0]
  LOCAL_WORK["rows"].update(spans)


def to_host(tree):
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
    tree = multihost_utils.process_allgather(tree, tiled=True)
  return jax.tree_util.tree_map(np.asarray, tree)


def simulate_sharded(sysp: system_mod.SystemPreset, model: M.MoeModelSpec, wl,
                     policy: str, budgets: list[float], batch_size: int,
                     mesh: Mesh | None = None,
                     extra_params: dict[str, float] | None = None
                     ) -> list[results.SimResult]:
  """One SimResult (numpy, G = S / batch groups) per budget, sequences sharded.

  One budget: a plain call; several: one compiled call under ``jax.vmap``
  over ``PolicyParams``.  ``extra_params``: other ``PolicyParams`` fields
  (e.g. the ``tuned`` biases), the same for every budget.
  """
  extra = dict(extra_params or {})
  mesh = mesh or device_mesh()
  S = wl.prefill_ids.shape[0]
  G = S // batch_size
  engine.validate(sysp.spec, sysp.params, model, wl.prefill_ids, wl.decode_ids, batch_size)
  routing = R.Routing(shard_sequences(wl.prefill_ids, mesh, batch_size), None,
                      shard_sequences(wl.decode_ids, mesh, batch_size), None)
  _count_local(routing.prefill_ids, len(budgets))
  system = (sysp.spec, sysp.params)
  prof = jnp.asarray(wl.profile_counts)

  def run(pp):
    return engine.simulate(system, model, routing, policy, pp, batch_size=batch_size,
                           profile_counts=prof, check=False)

  if len(budgets) == 1:
    out = [to_host(run(policies.PolicyParams(resident_fraction=float(budgets[0]),
                                              **extra)))]
  else:
    stacked = base.stack([base.as_arrays(policies.PolicyParams(resident_fraction=float(b),
                                                               **extra))
                          for b in budgets])
    host = to_host(jax.vmap(run)(stacked))
    out = [jax.tree_util.tree_map(lambda x, i=i: x[i], host) for i in range(len(budgets))]
  return [jax.tree_util.tree_map(lambda x: x[:G], r) for r in out]
