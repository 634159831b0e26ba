"""Hardware sensitivity (issue 6): d(latency)/d(log p) for every traced
hardware parameter, ranked, checked against finite differences."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ndpsim import base, engine, sensitivity
from ndpsim.workload import models as M
from tests import engine_util as U

pytestmark = pytest.mark.gradient

MODEL = "olmoe-1b-7b"
# Routing: ``engine_util.numpy_routing`` (NumPy, no compile of the routing
# generator), 2 sequences of 16 + 8 tokens -- the engine shapes of
# test_engine.py, test_engine_golden.py and test_reference.py.


@pytest.fixture(scope="module")
def ranked():
  r = U.numpy_routing(MODEL, 2, 16, 8)
  return r, sensitivity.rank(U.load(), M.get_model(MODEL), r, "tp_lb_prefetch")


def test_every_leaf_ranked_by_magnitude(ranked):
  _, rows = ranked
  n_leaves = sum(np.size(x) for x in jax.tree_util.tree_leaves(U.load()[1]))
  assert len(rows) == n_leaves
  mags = [abs(r.d_latency_d_log_param) for r in rows]
  assert mags == sorted(mags, reverse=True)
  by = {r.param: r for r in rows}
  # Faster parts lower latency; a slower launch raises it.
  assert by["link.bandwidth_gbps"].d_latency_d_log_param < 0
  assert by["gpu.memory_bandwidth_gbps"].d_latency_d_log_param < 0
  assert by["gpu.kernel_launch_us"].d_latency_d_log_param > 0
  assert mags[0] > 0
  md = sensitivity.table(rows, e2e_s=0.06, top=5)
  assert md.count("\n") == 6 and rows[0].param in md


@pytest.fixture(scope="module")
def ranked_tp():
  with jax.enable_x64(True):
    r = U.numpy_routing(MODEL, 2, 16, 8)
    ss, sp = U.load()
    sp = base.as_arrays(sp, jnp.float64)
    yield r, (ss, sp), sensitivity.rank((ss, sp), M.get_model(MODEL), r, "ndp_tp")


@pytest.mark.parametrize("param", ["link.bandwidth_gbps", "gpu.memory_bandwidth_gbps",
                                   "ndp.host_bus_bandwidth_gbps"])
def test_elasticity_matches_finite_differences(ranked_tp, param):
  """On ``ndp_tp`` (no placement decisions, so latency is smooth in these
  parameters) the hard-mode elasticity equals a central difference in log p.
  (Policies with discrete decisions get the derivative with decisions held:
  a finite difference there also sees the jumps where a decision flips.)"""
  r, (ss, sp), rows = ranked_tp
  by = {x.param: x for x in rows}
  model = M.get_model(MODEL)
  path = param.split(".")

  def at(scale):
    part = getattr(sp, path[0])
    p = base.replace(sp, **{path[0]: base.replace(part, **{path[1]: getattr(part, path[1])
                                                          * scale})})
    return float(np.mean(np.asarray(engine.simulate((ss, p), model, r, "ndp_tp")
                                    .e2e_s, np.float64)))

  h = 1e-3
  with jax.enable_x64(True):
    fd = (at(np.exp(h)) - at(np.exp(-h))) / (2 * h)
  g = by[param].d_latency_d_log_param
  assert g != 0.0
  assert abs(g - fd) <= 1e-4 * abs(fd), (g, fd)


def test_unknown_mode_is_refused():
  with pytest.raises(ValueError, match="mode='sideways'.*'reverse' or 'forward'"):
    sensitivity.elasticities(U.load(), M.get_model(MODEL), None, "ndp_tp", mode="sideways")


def test_the_binary_study_runs_the_same_elasticities():
  """``--studies=sensitivity`` (:func:`ndpsim.studies.sensitivity`: forward
  mode, the first ``num_groups`` groups) reports what the library's
  reverse-mode :func:`sensitivity.elasticities` gives on the study's own
  workload, leaf by leaf: one implementation, two modes that agree."""
  import pathlib

  from ndpsim import studies
  tiny = str(pathlib.Path(__file__).parent / "data" / "exp_tiny_model.json")
  cfg = studies.StudyConfig(models=(tiny,), policies=("monde", "ndp_tp"), prompt_len=8,
                            output_len=4, num_seqs=2, num_ndp_units=(2,),
                            studies=("sensitivity",))
  res = studies.resolve(cfg)
  doc = studies.sensitivity(res)
  assert doc["policy"] == "ndp_tp"
  model = res.sweep_models[0]
  wl = studies.make_workload(res, model, studies.routing_label(cfg.routing))
  from ndpsim.workload import routing as R
  r = R.Routing(wl.prefill_ids, None, wl.decode_ids, None)
  sysp = res.systems[2]
  e2e, el = sensitivity.elasticities((sysp.spec, sysp.params), res.models[model], r,
                                     "ndp_tp", profile_counts=jnp.asarray(wl.profile_counts))
  assert set(doc["elasticities"]) == set(el)
  assert np.isclose(doc["e2e_latency_s_mean"], e2e, rtol=1e-6)
  for k, (v, d) in el.items():
    assert doc["values"][k] == v
    assert abs(doc["elasticities"][k] - d) <= 1e-3 * abs(d) + 1e-9, k
