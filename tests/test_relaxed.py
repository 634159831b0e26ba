"""Relaxed engine (issue 6): convergence to the hard engine as the temperature
falls, and gradients of every differentiable path against central finite
differences (x64)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ndpsim import base, engine, relaxed
from ndpsim.policies import balance
from ndpsim.policies import base as pb
from ndpsim.policies.base import PolicyParams
from ndpsim.workload import models as M
from tests import engine_util as U

pytestmark = pytest.mark.gradient

MODEL = "olmoe-1b-7b"


def _routing():
  return U.routing(MODEL, num_seqs=2, prompt_len=16, output_len=8)


def _sim(policy, params, relaxed_mode, system=None):
  return U.e2e(engine.simulate(system or U.load(), M.get_model(MODEL), _routing(), policy,
                               params, relaxed=relaxed_mode))


@pytest.mark.parametrize("policy", ["tuned", "tp_lb_prefetch", "ndp_ep"])
def test_relaxed_converges_to_hard_as_temperature_falls(policy):
  hard = _sim(policy, PolicyParams(resident_fraction=0.5), False)
  errs = []
  for t in (1e-4, 1e-6, 1e-9, 1e-13):
    pp = PolicyParams(resident_fraction=0.5, temperature_s=t, rank_temperature=min(1e3 * t, 1.0))
    errs.append(np.max(np.abs(_sim(policy, pp, True) / hard - 1)))
  assert errs[0] > 1e-3, errs          # the relaxation does change the numbers
  assert errs[-1] < 1e-5, errs         # ... and vanishes at low temperature
  assert errs[-1] < errs[0] / 100, errs


def test_tuned_hard_mode_is_tp_lb_prefetch():
  pp = PolicyParams(resident_fraction=0.3, gpu_bias=1.2, ndp_bias=0.9)
  np.testing.assert_array_equal(_sim("tuned", pp, False), _sim("tp_lb_prefetch", pp, False))


def test_smax_bounds_and_limits():
  x = jnp.array([1.0, 3.0, 2.0, -5.0])
  for t in (1.0, 0.1, 1e-3):
    s = float(relaxed.smax(x, t))
    assert 3.0 <= s <= 3.0 + t * np.log(4) + 1e-6
  assert abs(float(relaxed.smax(x, 1e-4)) - 3.0) < 1e-3
  mask = jnp.array([True, False, True, True])
  assert abs(float(relaxed.smax(x, 1e-4, mask=mask)) - 2.0) < 1e-3
  # A weight falling to 0 removes its entry continuously.
  lw = relaxed.safe_log(jnp.array([1.0, 1e-30, 1.0, 1.0]))
  assert abs(float(relaxed.smax(x, 0.1, log_w=lw)) - float(relaxed.smax(x, 0.1, mask=mask))) < 1e-5
  # Absolute times of seconds keep microsecond resolution (relative form).
  big = jnp.array([10.0, 10.0 + 2e-6])
  assert abs(float(relaxed.smax(big, 1e-8)) - (10.0 + 2e-6)) < 2e-6


def _slots(n=6, seed=0, resident_frac=None):
  rng = np.random.default_rng(seed)
  tok = rng.integers(1, 4, n).astype(np.float32)
  res = rng.random(n) < 0.4
  return pb.Slots(ids=jnp.arange(n, dtype=jnp.int32), tokens=jnp.asarray(tok),
                  valid=jnp.asarray(np.arange(n) < n - 1), resident=jnp.asarray(res),
                  gpu_s=jnp.asarray(2e-5 * tok + 1e-5), fetch_s=jnp.full((n,), 8e-5),
                  ndp_tp_s=jnp.asarray(3e-5 * tok), ndp_ep_s=jnp.asarray(1.2e-4 * tok),
                  gpu_pre_s=jnp.asarray(5e-6), link_delay_s=jnp.asarray(1e-5),
                  bcast_s=jnp.asarray(4e-6), post_s=jnp.asarray(6e-6),
                  res_w=None if resident_frac is None else jnp.asarray(resident_frac))


# Jitted once for every seed and temperature (the same slot shapes; the
# temperature is traced): op-by-op dispatch compiled each primitive apart.
_greedy_split = jax.jit(balance.greedy_split)
_soft_split = jax.jit(balance.soft_split)


@pytest.mark.parametrize("seed", range(4))
def test_soft_split_converges_to_greedy_split(seed):
  s = _slots(seed=seed)
  hard = np.asarray(_greedy_split(s)).astype(float)
  soft = np.asarray(_soft_split(s, temperature=1e-14))
  np.testing.assert_allclose(soft, hard, atol=1e-6)
  mid = np.asarray(_soft_split(s, temperature=2e-5))
  assert np.all((mid >= 0) & (mid <= 1)) and np.all(mid[~np.asarray(s.valid)] == 0)


def _fd(f, x, h):
  return (f(x + h) - f(x - h)) / (2 * h)


def _check(grad, fd, rtol=1e-3):
  assert abs(grad - fd) <= rtol * max(abs(fd), 1e-12), (grad, fd)


def test_soft_split_and_gpu_lane_gradients_match_finite_differences():
  with jax.enable_x64(True):
    s = jax.tree_util.tree_map(lambda a: a.astype(jnp.float64)
                               if getattr(a, "dtype", None) == jnp.float32 else a,
                               _slots(seed=1))
    rho = jnp.array([0.9, 0.3, 0.0, 0.6, 1.0, 0.0], jnp.float64)

    def lane(b):
      frac = balance.soft_split(s, gpu_bias=b, temperature=1e-5, res_w=rho)
      end, _ = relaxed.gpu_lane_end(0.0, 2e-5, s.gpu_s, frac, 1.0 - rho, s.fetch_s, 1e-5)
      return end

    # One compile per function: the finite-difference values are the forward
    # values of the same jitted value_and_grad (op-by-op dispatch compiled
    # every primitive of the forward and backward passes apart).
    vg = jax.jit(jax.value_and_grad(lane))
    g = float(vg(1.1)[1])
    _check(g, float(_fd(lambda b: vg(b)[0], 1.1, 1e-6)))
    assert abs(g) > 0

    def by_rho(r3):
      w = rho.at[3].set(r3)
      frac = balance.soft_split(s, temperature=1e-5, res_w=w)
      return relaxed.gpu_lane_end(0.0, 2e-5, s.gpu_s, frac, 1.0 - w, s.fetch_s, 1e-5)[0]

    vg = jax.jit(jax.value_and_grad(by_rho))
    g = float(vg(0.6)[1])
    _check(g, float(_fd(lambda r: vg(r)[0], 0.6, 1e-7)))
    assert abs(g) > 0


@pytest.fixture(scope="module")
def x64_relaxed():
  """Relaxed mean e2e of ``tuned`` in x64 as a function of (knobs, link bw)."""
  with jax.enable_x64(True):
    ss, sp = U.load()
    sp = base.as_arrays(sp, jnp.float64)
    model = M.get_model(MODEL)
    r = _routing()

    def f(x):
      link = base.replace(sp.link, bandwidth_gbps=x[3])
      pp = PolicyParams(resident_fraction=x[0], gpu_bias=x[1], ndp_bias=x[2],
                        temperature_s=jnp.float64(2e-5), rank_temperature=jnp.float64(1.0))
      res = engine.simulate((ss, base.replace(sp, link=link)), model, r, "tuned", pp,
                            relaxed=True, check=False)
      return jnp.mean(res.e2e_s)

    x0 = jnp.array([0.4, 1.0, 1.0, float(sp.link.bandwidth_gbps)], jnp.float64)
    # One compile: the finite-difference values are the forward values of the
    # same compiled value_and_grad (no separate forward program), as in
    # tests/test_policy_api.py and tests/test_tune_per_layer.py.
    vg = jax.jit(jax.value_and_grad(f))
    value = lambda x: vg(x)[0]  # noqa: E731
    grad = lambda x: vg(x)[1]  # noqa: E731
    yield value, x0, np.asarray(grad(x0)), grad


@pytest.mark.parametrize("i,h", [(0, 1e-6), (1, 1e-6), (2, 1e-6), (3, 1e-5)])
def test_relaxed_engine_gradients_match_finite_differences(x64_relaxed, i, h):
  with jax.enable_x64(True):
    f, x0, g, _ = x64_relaxed
    e = jnp.zeros(4, jnp.float64).at[i].set(h * float(x0[i]))
    fd = float((f(x0 + e) - f(x0 - e)) / (2 * e[i]))
    _check(float(g[i]), fd)
    assert g[i] != 0.0


def test_resident_fraction_gradient_follows_the_hard_budget_slope(x64_relaxed):
  """The relaxed gradient in the prefetch budget says what the hard engine
  does: 'prefetch more', with about the hard slope, where a larger budget is
  faster; ~0 on the plateau where a larger budget changes nothing.  (Since
  demand loads pre-empt background copies (issue 10), a larger budget no
  longer delays demand loads: the budget optimum is no longer interior.)"""
  _, x0, _, grad = x64_relaxed
  hard = lambda rf: float(np.mean(_sim("tuned", PolicyParams(resident_fraction=rf), False)))
  lo, hi, d = 0.1, 0.7, 0.1
  slope_lo = (hard(lo + d) - hard(lo - d)) / (2 * d)
  assert abs(slope_lo) * d > 1e-2 * hard(lo), slope_lo            # steep here ...
  assert abs(hard(hi + d) - hard(hi - d)) <= 1e-4 * hard(hi)      # ... flat there
  with jax.enable_x64(True):
    g_lo = float(grad(x0.at[0].set(lo))[0])
    g_hi = float(grad(x0.at[0].set(hi))[0])
  assert 0.5 <= g_lo / slope_lo <= 2.0, (g_lo, slope_lo)
  assert abs(g_hi) <= 1e-3 * abs(g_lo), (g_hi, g_lo)
