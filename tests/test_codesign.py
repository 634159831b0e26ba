"""Hardware co-design (issue 15, item 2): the cost/power model's closed forms,
gradients of latency and cost against central finite differences, the budget
respected by every returned point, every projection exact and never worse
than the uniform one, and a co-design point within 1 % of a brute-force grid
of equal cost on a tiny model.

Compiles: one vmapped relaxed value-and-gradient (two budgets x three
starts; the gradient check reuses it) and one hard chunk of 32 points (the co-design's candidates
and the grid share it), and one chunk of 32 points of codesign.energy_of."""
from __future__ import annotations

import functools
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ndpsim import codesign as C
from ndpsim import energy, engine
from ndpsim.base import ConfigError
from ndpsim.hw import system as system_mod
from ndpsim.workload import model_io
from ndpsim.workload import models as M
from ndpsim.workload import routing as R

TINY = pathlib.Path(__file__).parent / "data" / "exp_tiny_model.json"
COST_FILE = pathlib.Path(C.cost_path("default"))
ENERGY = COST_FILE.parent.parent / "energy"
SEQS, PROMPT, OUTPUT, UNITS = 2, 8, 4, 2
CHUNK = 32
# The tiny model's layers take microseconds: the relaxation's temperatures are
# scaled down from the defaults (which suit the zoo's models).
CFG = C.CodesignConfig(steps=12, candidates_every=3, temperature_s=(1e-5, 1e-6))


@functools.lru_cache(maxsize=None)
def _setup():
  model = model_io.model_from_any(TINY)
  s = system_mod.load_system("paper_rtx5080_ndp_dimm", num_ndp_units=UNITS)
  L, E, k = M.num_moe_layers(model), model.num_experts, model.top_k
  rng = np.random.default_rng(5)
  # Skewed routing (a few hot experts) so that residency matters.
  logits = -1.5 * np.log(np.arange(1, E + 1))[rng.permutation(E)] + rng.gumbel(
      size=(SEQS, PROMPT + OUTPUT, L, E))
  ids = np.argsort(-logits, axis=-1)[..., :k].astype(np.int32)
  g = np.full(ids.shape, 1.0 / k, np.float32)
  r = R.Routing(prefill_ids=ids[:, :PROMPT], prefill_gates=g[:, :PROMPT],
                decode_ids=ids[:, PROMPT:], decode_gates=g[:, PROMPT:])
  system = (s.spec, s.params)
  cp = C.load_cost(s.spec.gpu_name, s.spec.ndp_name, s.spec.link_name)
  m = C.machine(system, model, PROMPT + OUTPUT)
  return model, system, r, cp, m


def _budgets():
  model, system, _, cp, _ = _setup()
  lo, hi = C.spend_range(system, model, PROMPT + OUTPUT, cp)
  return np.array([lo + 0.3 * (hi - lo), lo + 0.7 * (hi - lo)])


@functools.lru_cache(maxsize=None)
def _codesign():
  model, system, r, cp, _ = _setup()
  return C.codesign(system, model, r, _budgets(), cp, CFG, chunk=CHUNK)


@functools.lru_cache(maxsize=None)
def _grid():
  model, system, r, _, _ = _setup()
  b = C.Space().bounds(system[1])
  axes = {"macs_per_cycle": np.geomspace(*b[0], 3), "link_bandwidth_gbps": np.geomspace(*b[1], 4),
          "dram_rate": np.geomspace(*b[2], 3), "resident_fraction": [0.0, 0.5, 1.0]}
  pts = C.grid_points(system, axes)
  return pts, C.hard_latency(system, model, r, pts, chunk=CHUNK)


# ---------------------------------------------------------------------------
# The cost model.

@pytest.mark.analytic
def test_cost_and_power_closed_forms():
  """breakdown() equals the formulas worked by hand from the JSON figures."""
  _, system, _, cp, m = _setup()
  d = json.loads(COST_FILE.read_text())
  v = lambda *path: functools.reduce(lambda o, k: o[k], path, d)["value"]  # noqa: E731
  g, n, lo, li = ("gpu", "rtx5080"), ("ndp", "ddr5_rank_ndp_dimm"), ("ndp_logic",), (
      "link", "pcie5_x16")
  x = np.array([512.0, 20.0, 1.2, 0.4, 1.0, 1.0])
  mem = v(*g, "memory_spot_usd_per_gb") * v(*g, "memory_retail_factor")
  gpu_usd = v(*g, "list_price_usd") - mem * (1 - 0.4) * m.max_expert_gb
  mac_usd = 512 * v(*lo, "mac_area_um2") * 1e-6 * v(*lo, "mac_overhead_factor") * v(
      *lo, "logic_usd_per_mm2")
  unit_usd = (m.unit_capacity_gb * v(*n, "dram_usd_per_gb") * (1 + v(*n, "speed_premium_per_rate")
                                                               * 0.2)
              + v(*n, "module_board_usd") + v(*lo, "base_usd") + mac_usd)
  cost = gpu_usd + v(*li, "usd_per_gbps") * 20.0 + UNITS * unit_usd
  # Power: every figure but the GPU's board power from the energy presets.
  e = {k: json.loads((ENERGY / k / f"{n_}.json").read_text())["params"]
       for k, n_ in (("ndp", "ddr5_rank_ndp_dimm"), ("link", "pcie5_x16"))}
  dram = json.loads((ENERGY / "dram" / f"{e['ndp']['dram']}.json").read_text())["params"]
  ss = system[0]
  stream_pj = (dram["read_pj_per_bit"] + e["ndp"]["pe_path_pj_per_bit"]
               + dram["act_energy_pj"] / (8 * ss.ndp.dram.row_bytes))
  unit_w = (ss.ndp.dram_parts * dram["background_power_mw"] * 1e-3
            + stream_pj * 8 * m.stream_gbps_0 * 1.2 * 1e-3 + e["ndp"]["logic_static_power_w"]
            + 512 * m.clock_ghz * e["ndp"]["mac_pj"] * 1e-3)
  link_w = (20.0 * 8 * (e["link"]["to_gpu_pj_per_bit"] + e["link"]["to_ndp_pj_per_bit"]) * 1e-3
            + e["link"]["static_power_w"] * 20.0 / float(system[1].link.bandwidth_gbps))
  power = v(*g, "board_power_w") + link_w + UNITS * unit_w
  b = C.breakdown(cp, m, x)
  assert float(b["cost_usd"]) == pytest.approx(cost, rel=1e-5)
  assert float(b["power_w"]) == pytest.approx(power, rel=1e-5)
  # The machine: 64 GiB DDR5 DIMMs, the preset's stream bandwidth and clock.
  assert m.unit_capacity_gb == pytest.approx(4 * 16 * 2 ** 30 / 1e9)
  assert m.num_units == UNITS
  # At resident_fraction 1 the GPU costs its list price.
  full = C.breakdown(cp, m, np.array([128.0, 63.0, 1.0, 1.0, 1.0, 1.0]))
  assert float(full["gpu_usd"]) == pytest.approx(v(*g, "list_price_usd"), rel=1e-6)


@pytest.mark.inputs
def test_cost_file_errors_name_the_field(tmp_path):
  d = json.loads(COST_FILE.read_text())
  with pytest.raises(ConfigError, match="ndp.hbm_pim.*missing"):
    C.load_cost("rtx5080", "hbm_pim", "pcie5_x16")
  bad = json.loads(json.dumps(d))
  bad["link"]["pcie5_x16"]["usd_per_gbps"]["unit"] = "USD/Gbps"
  p = tmp_path / "c.json"
  p.write_text(json.dumps(bad))
  with pytest.raises(ConfigError, match="usd_per_gbps.unit.*USD per GB/s"):
    C.load_cost("rtx5080", "ddr5_rank_ndp_dimm", "pcie5_x16", name=str(p))
  bad = json.loads(json.dumps(d))
  del bad["ndp_logic"]["mac_area_um2"]["source"]
  p.write_text(json.dumps(bad))
  with pytest.raises(ConfigError, match="mac_area_um2.*source"):
    C.load_cost("rtx5080", "ddr5_rank_ndp_dimm", "pcie5_x16", name=str(p))
  with pytest.raises(ConfigError, match="kind"):
    C.CodesignConfig(kind="energy_j").check()
  with pytest.raises(ConfigError, match="projections.*uniform"):
    C.CodesignConfig(projections=("nearest",)).check()
  # A part without an energy preset has no power figures: the error names the file.
  with pytest.raises(ConfigError, match="energy/link/cxl9_x4.json"):
    C.power_figures("ddr5_rank_ndp_dimm", "cxl9_x4")


@pytest.mark.gradient
def test_cost_gradients_match_finite_differences():
  _, _, _, cp, m = _setup()
  x = np.array([300.0, 25.0, 1.1, 0.6, 1.2, 0.9])
  with jax.enable_x64(True):  # float64: totals of ~$1000 change by cents
    cp64 = jax.tree_util.tree_map(lambda v: jnp.asarray(v, jnp.float64), cp)
    for kind in C.BUDGET_KINDS:
      f = lambda x, kind=kind: C.spend(cp64, m, x, kind)  # noqa: E731
      g = np.asarray(jax.grad(f)(jnp.asarray(x)))
      for i in range(6):
        h = 1e-3 * x[i]
        e = np.eye(6)[i] * h
        fd = (float(f(jnp.asarray(x + e))) - float(f(jnp.asarray(x - e)))) / (2 * h)
        assert g[i] == pytest.approx(fd, rel=1e-6, abs=1e-9), (kind, i)
      # Biases cost nothing.
      assert g[4] == 0 and g[5] == 0
    gc = np.asarray(jax.grad(lambda x: C.spend(cp64, m, x))(jnp.asarray(x)))
  assert (gc[:4] > 0).all(), gc  # everything else costs money


@pytest.mark.analytic
def test_projection_meets_the_budget_exactly():
  """Every projection lands on the budget (to bisection precision), leaves
  the free knobs alone and reports a budget below the cheapest point
  infeasible; the cost-weighted one cuts the nearly free MAC lanes least."""
  model, system, _, cp, m = _setup()
  b = C.Space().bounds(system[1])
  x = np.asarray(C.to_point(jnp.full(6, 0.9), b), np.float64)
  budget = float(C.spend(cp, m, x)) - 30.0
  grad = np.array([-1.0, -1.0, -1.0, -1.0, 0.0, 0.0])  # d latency / d s
  lo, _ = C.spend_range(system, model, PROMPT + OUTPUT, cp)
  got = {}
  for method in C.PROJECTIONS:
    xp, ok = C.project(cp, m, x, budget, b, method=method, latency_grad_s=grad)
    assert ok and float(C.spend(cp, m, xp)) <= budget, method
    assert float(C.spend(cp, m, xp)) == pytest.approx(budget, abs=0.05), method
    assert xp[4:] == pytest.approx(x[4:]), method  # the free knobs are untouched
    assert (xp[:4] <= x[:4] * (1 + 1e-6)).all(), method  # nothing grows
    _, ok = C.project(cp, m, x, lo - 1.0, b, method=method, latency_grad_s=grad)
    assert not ok, method
    got[method] = xp
  s = {k: C.to_unit(v, b) for k, v in got.items()}
  assert s["cost_weighted"][0] > s["uniform"][0]  # MAC lanes: cut least
  # Greedy with equal latency gradients cuts the coordinate with the most
  # dollars per unit of s first, and only it (30 USD is less than its range).
  w = C.spend_gradient(cp, m, C.to_unit(x, b)[None], b)[0]
  first = int(np.argmax(w[:4]))
  cut = [i for i in range(4) if s["greedy"][i] < C.to_unit(x, b)[i] - 1e-6]
  assert cut == [first], (cut, w)
  with pytest.raises(ConfigError, match="greedy.*latency_grad_s"):
    C.project(cp, m, x, budget, b, method="greedy")
  # Whole experts: the hard engine keeps floor(fraction x slots) per layer.
  y = C.whole_experts(np.array([[1.0, 1.0, 1.0, 0.55, 1.0, 1.0]]), 4.0)
  assert y[0, 3] == 0.5 and C.whole_experts(y, 4.0, up=True)[0, 3] == 0.5
  assert C.whole_experts(np.array([0, 0, 0, 0.55, 0, 0.0]), 4.0, up=True)[3] == 0.75
  # A held resident fraction is not cut (the others pay for it).
  out = C.project_all(cp, m, x[None], [budget], b, hold_resident=[True])
  assert out["uniform"][1][0] and out["uniform"][0][0, 3] == pytest.approx(x[3])


# ---------------------------------------------------------------------------
# Gradients through the relaxed engine.

@pytest.mark.gradient
def test_latency_gradient_matches_finite_differences():
  """d (relaxed e2e) / d z per co-designed coordinate (z: the unconstrained
  variable the optimiser moves; x = lo (hi/lo)^sigmoid(z)) against central
  differences, with the same compiled call the co-design uses (mu = 0)."""
  model, system, r, cp, m = _setup()
  ss, sp = system
  b = jnp.asarray(C.Space().bounds(sp), jnp.float32)
  pre, dec = C._ids(r)  # pylint: disable=protected-access
  m_arr = jnp.asarray(np.array(m, np.float64), jnp.float32)
  cpj = jax.tree_util.tree_map(lambda v: jnp.asarray(v, jnp.float32), cp)
  # K budgets x S starts rows, the shape the co-design compiles (one compile).
  S = len(CFG.starts)
  bud = jnp.asarray(np.repeat(_budgets(), S), jnp.float32)

  def call(z):
    lat, g, _, _ = C._step_values(ss, sp, model, pre, dec, cpj, m_arr, b,  # pylint: disable=protected-access
                                  jnp.asarray(z, jnp.float32), bud, jnp.float32(0.0),
                                  jnp.float32(2e-5), jnp.float32(1.0), 1, "cost_usd")
    return None, lat, g

  z0 = np.array([0.3, -0.2, 0.1, 0.4, 0.1, -0.1])
  _, lat, g = call(np.stack([z0] * 2 * S))
  g = np.asarray(g)[0]
  h = 0.002  # the relaxation is smooth but sharply curved at this temperature
  nonzero = 0
  for i in range(6):
    e = np.eye(6)[i] * h
    _, lp, _ = call(np.stack([z0 + e, z0 - e] * S))
    fd = (float(lp[0]) - float(lp[1])) / (2 * h)
    assert g[i] == pytest.approx(fd, rel=0.05, abs=2e-3 * float(lat[0])), (C.NAMES[i], g[i], fd)
    nonzero += abs(fd) > 1e-3 * float(lat[0])
  assert nonzero >= 3  # the check is not vacuous


# ---------------------------------------------------------------------------
# The co-design itself.

@pytest.mark.policy
def test_returned_points_respect_the_budget():
  res = _codesign()
  _, _, _, cp, m = _setup()
  assert res.feasible.all()
  spent = np.asarray(C.spend(cp, m, res.points), np.float64)
  assert (spent <= res.budgets * (1 + 1e-6)).all(), (spent, res.budgets)
  assert np.isfinite(res.e2e_s).all()
  # More budget never hurts.
  assert res.e2e_s[1] <= res.e2e_s[0] * (1 + 1e-3), res.e2e_s


@pytest.mark.policy
def test_codesign_within_one_percent_of_an_equal_cost_grid():
  res = _codesign()
  pts, e2e = _grid()
  _, _, _, cp, m = _setup()
  for k, budget in enumerate(res.budgets):
    i, best = C.grid_best(cp, m, pts, e2e, budget)
    assert i >= 0
    assert res.e2e_s[k] <= best * 1.01, (k, budget, res.e2e_s[k], best, pts[i], res.points[k])


@pytest.mark.policy
def test_projections_never_worse_than_uniform_and_within_budget():
  """Every candidate is scored under every projection and resident rounding
  in the same hard call: each feasible projected point meets its budget, and
  the returned point is at least as fast as the best uniformly projected
  candidate (the only projection of the first version), never slower."""
  res = _codesign()
  _, _, _, cp, m = _setup()
  h = res.history
  pts, e2e = np.asarray(h["candidates"]), np.asarray(h["candidates_e2e_s"])
  ok = np.asarray(h["candidates_feasible"])
  labels = [p + r for r in C.RESIDENT_ROUNDING for p in C.PROJECTIONS]
  assert h["projections"] == labels and pts.shape[2] == len(labels)
  spent = np.asarray(C.spend(cp, m, pts), np.float64)
  assert ok[:, :, :len(C.PROJECTIONS)].all()  # without rounding up, every budget admits
  assert (spent[ok] <= np.broadcast_to(res.budgets[:, None, None], ok.shape)[ok]
          * (1 + 1e-6)).all()
  u = labels.index("uniform")
  best_uniform = e2e[:, :, u].min(axis=1)
  assert (res.e2e_s <= best_uniform).all(), (res.e2e_s, best_uniform)
  for k in range(len(res.budgets)):
    assert h["best_projection"][k] in labels
  # Resident fractions of the scored points are whole expert slots per layer.
  model, system, r, _, _ = _setup()
  slots = C.expert_slots(system, model, PROMPT + OUTPUT)
  f = pts[..., 3] * slots
  assert np.allclose(f, np.round(f), atol=1e-4), slots


# ---------------------------------------------------------------------------
# Energy per token at co-design points and the latency-vs-energy front.

@functools.lru_cache(maxsize=None)
def _grid_energy():
  model, system, r, _, _ = _setup()
  s = system_mod.load_system("paper_rtx5080_ndp_dimm", num_ndp_units=UNITS)
  ep = energy.for_system(s)
  pts, _ = _grid()
  return ep, C.energy_of(system, model, r, pts, ep, chunk=CHUNK)


def _direct_energy_j(x, ep):
  """energy.per_token_j of a plain engine.simulate run at point x."""
  model, (ss, sp0), r, _, _ = _setup()
  sp = C.with_hardware(sp0, jnp.asarray(x, jnp.float32))
  res = engine.simulate((ss, sp), model, r, "tuned", C.policy_params(jnp.asarray(x)))
  e = energy.per_token_j(res, (ss, sp), model, ep, prompt_len=PROMPT, batch_size=1)
  return float(np.mean(np.asarray(e.total_j, np.float64))), float(np.mean(res.e2e_s))


@pytest.mark.policy
def test_energy_of_a_point_equals_a_direct_engine_run():
  """energy_of equals energy.per_token_j of engine.simulate at the same
  hardware: at the preset's own point with the preset's figures unchanged,
  elsewhere with the link's idle power scaled by bandwidth / preset bandwidth."""
  model, system, r, _, _ = _setup()
  ep, (lat, ej) = _grid_energy()
  pts, e2e = _grid()
  np.testing.assert_allclose(lat, e2e, rtol=1e-5)
  x0 = C.point_of(system)
  (lat0,), (e0,) = C.energy_of(system, model, r, [x0], ep, chunk=CHUNK)
  d0, t0 = _direct_energy_j(x0, ep)
  assert e0 == pytest.approx(d0, rel=1e-4) and lat0 == pytest.approx(t0, rel=1e-4)
  for i in (0, len(pts) // 3, len(pts) - 1):
    bw = float(pts[i][1])
    ep_x = C.energy_params_at(ep, system[1], pts[i])
    assert float(ep_x.link.static_power_w) == pytest.approx(
        float(ep.link.static_power_w) * bw / float(system[1].link.bandwidth_gbps), rel=1e-6)
    d, t = _direct_energy_j(pts[i], ep_x)
    assert ej[i] == pytest.approx(d, rel=1e-4), (i, pts[i])
    assert lat[i] == pytest.approx(t, rel=1e-4)
  assert np.all(np.isfinite(ej)) and np.all(ej > 0)
  with pytest.raises(ConfigError, match=r"\[K, 6\]"):
    C.energy_of(system, model, r, np.ones((2, 5)), ep)


@pytest.mark.policy
def test_latency_energy_front_is_non_dominated_and_complete():
  _, (lat, ej) = _grid_energy()
  front = C.pareto(ej, lat)
  assert len(front) >= 2 and np.all(np.diff(ej[front]) >= 0)
  for i in front:  # no point is at least as good on both axes and better on one
    dom = (ej <= ej[i]) & (lat <= lat[i]) & ((ej < ej[i]) | (lat < lat[i]))
    assert not dom.any(), (i, np.flatnonzero(dom))
  for j in set(range(len(ej))) - set(front.tolist()):  # every other point is dominated
    assert ((ej[front] <= ej[j]) & (lat[front] <= lat[j])).any(), j
