"""The lanes of one layer (``ndpsim/lanes.py``) by hand: each lane's end in the
``LayerTimes`` record against a closed form, and the soft operator set
converging to the hard one as the temperature falls."""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from ndpsim import engine, lanes
from ndpsim.policies import base as pb

pytestmark = pytest.mark.analytic

N = 2
PC = engine.PhaseCosts(gpu_s=jnp.zeros(4), tp_s=jnp.zeros(4), ep_s=jnp.zeros(4),
                       bcast_s=jnp.float32(0.5), ret_s=jnp.asarray([0.0, 0.3, 0.4]),
                       red_s=jnp.asarray([0.0, 0.1, 0.2]))


def _slots(valid=(True, True, True)):
  f = lambda x: jnp.asarray(x, jnp.float32)
  n = len(valid)
  return pb.Slots(ids=jnp.arange(n, dtype=jnp.int32), tokens=f([1] * n),
                  valid=jnp.asarray(valid), resident=jnp.asarray([True, False, False]),
                  gpu_s=f([1.0, 2.0, 4.0]), fetch_s=f([3.0] * n), ndp_tp_s=f([5.0, 6.0, 7.0]),
                  ndp_ep_s=f([10.0, 12.0, 14.0]), gpu_pre_s=f(0.0), link_delay_s=f(0.0),
                  bcast_s=f(0.5), post_s=f(0.6))


def _times(ops, gfrac, phi, mode="tp", tr=10.0, link_free=0.0):
  s = _slots()
  g = jnp.asarray(gfrac, jnp.float32)
  loads = lanes.ndp_unit_loads(mode, N, s, g, jnp.asarray([0, 1, 0], jnp.int32))
  return lanes.layer_times(ops, mode, N, s, g, jnp.asarray(phi), loads, None, PC,
                           jnp.float32(tr), jnp.float32(tr), jnp.float32(0.25),
                           jnp.float32(link_free), jnp.float32(0.0), jnp.float32(3.0))


def test_gpu_only_layer():
  # Slot 0 resident, slot 1 fetched, slot 2 fetched: GPU from 10.25; loads
  # 3 s each from 10; the last arrives at 16 and computes 4 s: end 20.
  t = _times(lanes.hard_ops(), [1.0, 1.0, 1.0], [False, True, True])
  assert not bool(t.w)
  assert float(t.fetch_busy) == 6.0 and float(t.fetch_end) == 16.0
  assert float(t.gpu_end) == 20.0
  assert float(t.end) == 20.0 + float(PC.red_s[0])
  assert int(t.n_partials) == 0 and float(t.bcast) == 0.0


def test_ndp_tp_layer():
  # Everything on the NDP units, TP: each unit carries 5 + 6 + 7 = 18 s.
  t = _times(lanes.hard_ops(), [0.0, 0.0, 0.0], [False, False, False])
  assert bool(t.w) and int(t.n_partials) == N
  np.testing.assert_allclose(np.asarray(t.loads), [18.0, 18.0])
  assert float(t.ndp_end) == 10.0 + 0.5 + 18.0
  assert float(t.ret_end) == pytest.approx(28.5 + 0.4)
  assert float(t.end) == pytest.approx(28.9 + 0.2)
  assert float(t.link_gpu_free) == pytest.approx(28.9)


def test_mixed_ep_layer():
  # Slot 0 (resident) on the GPU; slots 1 and 2 EP on units 1 and 0.
  t = _times(lanes.hard_ops(), [1.0, 0.0, 0.0], [False, False, False], mode="ep")
  np.testing.assert_allclose(np.asarray(t.loads), [14.0, 12.0])
  assert float(t.gpu_end) == 10.25 + 1.0
  assert float(t.ndp_end) == 10.0 + 0.5 + 14.0
  assert float(t.end) == pytest.approx(24.5 + 0.4 + 0.2)


@pytest.mark.parametrize("mode", ["tp", "ep"])
def test_soft_ops_converge_to_hard(mode):
  gfrac, phi = [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]
  hard = _times(lanes.hard_ops(), gfrac, [bool(x) for x in phi], mode)
  for temp, tol in ((1e-2, 0.05), (1e-4, 5e-4)):
    soft = _times(lanes.soft_ops(temp), gfrac, phi, mode)
    for field in ("gpu_end", "ndp_end", "ret_end", "end", "link_gpu_free"):
      assert abs(float(getattr(soft, field)) - float(getattr(hard, field))) <= tol, field
