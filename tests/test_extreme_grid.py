"""Extreme-but-legal hardware (issue 13 items 5 and 7): for every shipped system
preset, every numeric hardware leaf at each end of its hard range
(``config.Range``) and at 0 where 0 is allowed, loaded through the validator,
gives a finite, positive end-to-end latency with a finite gradient w.r.t.
every leaf, and latency is monotone where physics says so (more bandwidth,
clock, rate or memory is never slower; more latency, overhead or cycles is
never faster).  One ``value_and_grad`` compile per system, run at every
setting (tiny model, 8 + 4 tokens, 2 sequences; about 30 s of CPU each); the
relaxed engine's gradients (the tuner's path) under ``-m slow``."""
from __future__ import annotations

import functools
import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ndpsim import base, config, engine, policies
from ndpsim.hw import system as system_mod
from ndpsim.workload import models as M
from tests import engine_util as U
from tests import extreme_util as X

TINY = str(pathlib.Path(__file__).parent / "data" / "exp_tiny_model.json")
POLICY = "tp_lb_prefetch"
SYSTEMS = config.available("system")
RTOL = 1e-5  # float32 rounding between settings

# Leaves whose growth can only speed the run up / only slow it down.
FASTER = re.compile(r"(_gbps|_mhz|flops_per_cycle_per_sm(\[\d+\])?|macs_per_cycle|_fraction|"
                    r"protocol_efficiency|memory_capacity_bytes|buffer_bytes|l2_bytes|"
                    r"t_refi_cycles)$")  # a longer refresh interval: less refresh
SLOWER = re.compile(r"(_us|_ns|_cycles|gpu_reserved_bytes)$")  # but t_refi: FASTER


@functools.lru_cache(maxsize=None)
def _model_and_routing():
  """The tiny model and skewed NumPy routing with prompt locality
  (``engine_util.numpy_routing``: no routing-generator compile)."""
  model = M.model_from_any(TINY)
  return model, U.numpy_routing(model, num_seqs=2, prompt_len=8, output_len=4, seed=0)


@functools.lru_cache(maxsize=None)
def _grid(system: str, policy: str = POLICY, relaxed: bool = False):
  """(settings [(path, end, value)], e2e [n], grads {leaf: [n]}), row 0 = preset."""
  model, r = _model_and_routing()
  units = 2
  base_sys = system_mod.load_system(system, units)
  ex = X.extremes(system, units)
  settings = [("preset", "preset", None)] + [e[:3] for e in ex]
  points = [base.as_arrays(base_sys.params)] + [base.as_arrays(e[3].params) for e in ex]

  def e2e(sp):
    res = engine.simulate((base_sys.spec, sp), model, r, policy, policies.PolicyParams(),
                          check=False, **({"relaxed": True} if relaxed else {}))
    return jnp.mean(res.e2e_s)

  # The hardware params are traced: one compile serves every setting, and the
  # loop runs them all in about a second (it compiles a little faster than one
  # vmapped call: 25 s vs 27 s of CPU, measured in one process, loop first).
  f = jax.jit(jax.value_and_grad(e2e))
  vs, gs = zip(*(f(sp) for sp in points))
  g = jax.tree_util.tree_map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *gs)
  grads = {jax.tree_util.keystr(p): np.asarray(x).reshape(len(settings), -1)
           for p, x in jax.tree_util.tree_flatten_with_path(g)[0]}
  return settings, np.array([float(x) for x in vs], np.float64), grads


@pytest.mark.parametrize("system", SYSTEMS)
@pytest.mark.inputs
def test_every_leaf_has_legal_extremes(system):
  """Both ends of every leaf's hard range are reached (or refused by a cross-field
  rule the loader names, e.g. tRAS >= tRCD), so the grid is not vacuous."""
  settings, _, _ = _grid(system)
  leaves = config.leaf_ranges(system_mod.load_system(system, 2).params)
  reached = {p for p, _, _ in settings}
  missing = {p for p in set(leaves) - reached if not re.search(r"\[[1-9]\d*\]$", p)}
  assert not missing, sorted(missing)


@pytest.mark.parametrize("system", SYSTEMS)
@pytest.mark.gradient
def test_latency_finite_positive_and_gradients_finite(system):
  settings, v, grads = _grid(system)
  bad = [(s, float(x)) for s, x in zip(settings, v) if not (np.isfinite(x) and x > 0)]
  assert not bad, bad
  for leaf, g in grads.items():
    rows = [settings[i] for i in np.flatnonzero(~np.isfinite(g).all(axis=1))]
    assert not rows, (leaf, rows)


@pytest.mark.slow  # one more compile (~70 s of CPU); the hard engine's is above
@pytest.mark.gradient
def test_relaxed_tuned_gradients_finite_at_every_legal_extreme():
  """The tuner's path (relaxed engine, ``tuned`` policy): finite latency and
  finite gradient w.r.t. every hardware leaf at every legal extreme."""
  settings, v, grads = _grid("paper_rtx5080_ndp_dimm", "tuned", True)
  assert np.all(np.isfinite(v) & (v > 0)), [s for s, x in zip(settings, v) if not x > 0]
  for leaf, g in grads.items():
    rows = [settings[i] for i in np.flatnonzero(~np.isfinite(g).all(axis=1))]
    assert not rows, (leaf, rows)


@pytest.mark.parametrize("system", SYSTEMS)
@pytest.mark.policy
def test_latency_monotone_in_each_leaf(system):
  settings, v, _ = _grid(system)
  preset_params = system_mod.load_system(system, 2).params
  leaves = config.leaf_ranges(preset_params)
  flat = {jax.tree_util.keystr(p).lstrip("."): float(x) for p, x in
          jax.tree_util.tree_flatten_with_path(preset_params)[0]}
  wrong = []
  for path in leaves:
    pts = sorted([(val, v[i]) for i, (p, _, val) in enumerate(settings) if p == path]
                 + [(flat[path], v[0])])
    ys = [y for _, y in pts]
    if FASTER.search(path):
      ok = all(b <= a * (1 + RTOL) for a, b in zip(ys, ys[1:]))
    elif SLOWER.search(path):
      ok = all(b >= a * (1 - RTOL) for a, b in zip(ys, ys[1:]))
    else:
      pytest.fail(f"{path}: no monotonicity rule; add it to FASTER or SLOWER")
    if not ok:
      wrong.append((path, pts))
  assert not wrong, wrong
