"""System presets: composition, unit counts, overrides, capacities, vmap and grad."""
from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ndpsim import base, config
from ndpsim.hw import gpu, link, ndp, system

SYSTEMS = ("paper_rtx5080_ndp_dimm", "edge_orin_lpddr5_pim")


@pytest.mark.parametrize("name", SYSTEMS)
@pytest.mark.inputs
def test_presets_load(name):
  s = system.load_system(name)
  hash(s.spec)
  assert s.spec.min_ndp_units <= s.spec.num_ndp_units <= s.spec.max_ndp_units
  assert s.info["ndp_total_capacity_bytes"] == system.ndp_total_capacity_bytes(s.spec)
  for part in ("system", "gpu", "ndp", "link"):
    assert s.info["provenance"][part], part
  # The same preset through the generic loader.
  pre = config.load("system", name)
  assert pre.spec == s.spec
  assert name in config.available("system")


@pytest.mark.analytic
def test_paper_system_matches_the_paper_setup():
  s = system.load_system("paper_rtx5080_ndp_dimm")
  assert (s.spec.gpu_name, s.spec.ndp_name, s.spec.link_name) == (
      "rtx5080", "ddr5_rank_ndp_dimm", "pcie5_x16")
  assert s.spec.num_ndp_units == 4
  assert system.ndp_total_capacity_bytes(s.spec) == 4 * 64 * 2 ** 30
  assert float(gpu.memory_capacity_bytes(s.params.gpu)) == 16 * 2 ** 30
  # Qwen3-30B-A3B: 48 layers x 128 experts x 9.44 MB do not fit the GPU but fit 2 DIMMs.
  experts = 48 * 128 * 9.437184e6
  assert experts > float(system.gpu_usable_bytes(s.spec, s.params))
  for n in (2, 6):
    sn = system.load_system("paper_rtx5080_ndp_dimm", num_ndp_units=n)
    assert sn.spec.num_ndp_units == n
    assert experts <= system.ndp_total_capacity_bytes(sn.spec)
    _validate(sn, "qwen3-30b-a3b")  # fits: no error


@pytest.mark.parametrize("n", [0, 9, -1])
@pytest.mark.inputs
def test_num_ndp_units_outside_range_is_rejected(n):
  with pytest.raises(base.ConfigError, match=f"num_ndp_units is {n}.*1 to 8") as e:
    system.load_system("paper_rtx5080_ndp_dimm", num_ndp_units=n)
  assert "paper_rtx5080_ndp_dimm.json" in str(e.value)


@pytest.mark.inputs
def test_num_ndp_units_must_be_an_integer():
  with pytest.raises(base.ConfigError, match="integer"):
    system.load_system("paper_rtx5080_ndp_dimm", num_ndp_units=2.5)


@pytest.mark.inputs
def test_overrides_reach_every_part():
  s = system.load_system("paper_rtx5080_ndp_dimm", overrides={
      "gpu": {"memory_bandwidth_gbps": 800},
      "link": {"per_transfer_overhead_us": 0.0},
      "ndp": {"clock_mhz": 1200.0},
      "dram": {"t_rcd_cycles": 40},
      "system": {"gpu_reserved_bytes": 1e9, "num_ndp_units": 3}})
  assert float(s.params.gpu.memory_bandwidth_gbps) == 800
  assert float(s.params.link.per_transfer_overhead_us) == 0.0
  assert float(s.params.ndp.clock_mhz) == 1200.0
  assert float(s.params.ndp.dram.t_rcd_cycles) == 40
  assert float(s.params.gpu_reserved_bytes) == 1e9 and s.spec.num_ndp_units == 3
  # Untouched fields keep their preset values.
  ref = system.load_system("paper_rtx5080_ndp_dimm")
  assert float(s.params.ndp.dram.t_rp_cycles) == float(ref.params.ndp.dram.t_rp_cycles)
  # --set strings go through the same path.
  s2 = system.load_system("paper_rtx5080_ndp_dimm", overrides=config.parse_set_overrides(
      ["gpu.memory_bandwidth_gbps=800", "dram.t_rcd_cycles=40"]))
  assert float(s2.params.gpu.memory_bandwidth_gbps) == 800
  assert float(s2.params.ndp.dram.t_rcd_cycles) == 40


@pytest.mark.parametrize("overrides,match", [
    ({"cpu": {"cores": 8}}, "override group 'cpu'"),
    ({"gpu": {"memory_bandwith_gbps": 800}}, "memory_bandwith_gbps"),
    ({"gpu": {"memory_bandwidth_gbps": -800}}, "memory_bandwidth_gbps is -800"),
    ({"link": {"protocol_efficiency": 2.0}}, "protocol_efficiency"),
    ({"dram": {"t_faw_cycles": "long"}}, "t_faw_cycles must be a number"),
    ({"ndp": {"pe_level": "socket"}}, "pe_level"),
    ({"system": {"gpu": "rtx4090"}}, "cannot be overridden field by field"),
    ({"system": {"gpu_reserved_bytes": 1e12}}, "gpu_reserved_bytes"),
    ({"gpu": 800}, "must map field names"),
])
@pytest.mark.inputs
def test_bad_overrides(overrides, match):
  with pytest.raises(base.ConfigError, match=match) as e:
    system.load_system("paper_rtx5080_ndp_dimm", overrides=overrides)
  assert "\n" not in str(e.value)


def _obj(**changes):
  obj = json.load(open(config.config_root() / "systems" / "paper_rtx5080_ndp_dimm.json"))
  for key, val in changes.items():
    section, field = key.split("__")
    obj[section][field] = val
  return obj


@pytest.mark.parametrize("changes,match", [
    ({"spec__gpu": "rtx5090"}, "spec.gpu.*did you mean 'rtx5080'"),
    ({"spec__ndp": 3}, "spec.ndp must name"),
    ({"spec__min_ndp_units": 6, "spec__max_ndp_units": 2}, "min_ndp_units"),
    ({"spec__gpu_name": "x"}, "gpu_name is set from spec.gpu"),
    ({"params__gpu_reserved_bytes": -1}, "gpu_reserved_bytes"),
    ({"params__gpu": {"clock_mhz": 0}}, "clock_mhz is 0"),
    ({"spec__link": "pcie7_x16"}, "unknown link preset"),
])
@pytest.mark.inputs
def test_bad_system_configs(changes, match):
  with pytest.raises(base.ConfigError, match=match):
    config.load("system", _obj(**changes))


def _validate(s, model_name, prompt_len=4, output_len=2):
  """engine.validate (what every simulation checks first) on a tiny routing."""
  from ndpsim import engine  # pylint: disable=import-outside-toplevel
  from ndpsim.workload import models as M  # pylint: disable=import-outside-toplevel
  model = M.get_model(model_name)
  L, k = M.num_moe_layers(model), model.top_k
  row = np.broadcast_to(np.arange(k, dtype=np.int32), (1, 1, L, k))
  engine.validate(s.spec, s.params, model, np.repeat(row, prompt_len, axis=1),
                  np.repeat(row, output_len, axis=1), 1)


@pytest.mark.analytic
def test_capacity_checks():
  one = system.load_system("paper_rtx5080_ndp_dimm", num_ndp_units=1)
  # Mixtral's routed experts (~90 GB) do not fit one 64 GiB DIMM; two hold them.
  with pytest.raises(base.ConfigError, match="use more NDP units"):
    _validate(one, "mixtral-8x7b")
  _validate(system.load_system("paper_rtx5080_ndp_dimm", num_ndp_units=2), "mixtral-8x7b")
  # A context whose KV cache exceeds the GPU's memory is refused.
  s = system.load_system("paper_rtx5080_ndp_dimm")
  with pytest.raises(base.ConfigError, match="GPU memory .* is smaller than"):
    _validate(s, "mixtral-8x7b", prompt_len=200_000)
  budget = float(system.gpu_expert_budget_bytes(s.spec, s.params, 3e9, 1e9))
  assert budget == pytest.approx(16 * 2 ** 30 - 1.5e9 - 3e9 - 1e9)


def _moe_layer_time(spec, params):
  """A toy MoE step: 4 experts on NDP (TP over the units) vs 2 fetched to the GPU."""
  n = spec.num_ndp_units
  ndp_t = 4 * ndp.matmul_time_s(spec.ndp, params.ndp, 2048, 3 * 768 // n, 1)
  gpu_t = (link.transfers_time_s(spec.link, params.link, 9437184.0, 2)
           + 2 * gpu.matmul_time_s(spec.gpu, params.gpu, 1, 3 * 768, 2048))
  return jnp.maximum(ndp_t, gpu_t)


@pytest.mark.analytic
def test_system_params_vmap_over_1000_sets_equals_loop():
  s = system.load_system("paper_rtx5080_ndp_dimm")
  rng = np.random.default_rng(3)
  ps = []
  for bw, lk, clk in zip(rng.uniform(300, 1500, 1000), rng.uniform(8, 128, 1000),
                         rng.uniform(200, 2000, 1000)):
    ps.append(base.replace(s.params, gpu=base.replace(s.params.gpu, memory_bandwidth_gbps=bw),
                           link=base.replace(s.params.link, bandwidth_gbps=lk),
                           ndp=base.replace(s.params.ndp, clock_mhz=clk)))
  stacked = base.stack([base.as_arrays(p) for p in ps])
  f = lambda p: _moe_layer_time(s.spec, p)  # noqa: E731
  batched = np.asarray(jax.jit(jax.vmap(f))(stacked))
  jf = jax.jit(f)
  # All 1,000 vmapped; every 10th set also run on its own (one jitted call
  # each: dispatching all 1,000 took ~12 s of the suite and checks no more).
  looped = np.array([float(jf(base.as_arrays(p))) for p in ps[::10]])
  np.testing.assert_allclose(batched[::10], looped, rtol=1e-6)
  assert batched.std() > 0


@pytest.mark.gradient
def test_system_gradient_flows_to_the_binding_part():
  with jax.enable_x64(True):
    s = system.load_system("paper_rtx5080_ndp_dimm")
    p = base.as_arrays(s.params, jnp.float64)
    g = jax.grad(lambda q: _moe_layer_time(s.spec, q))(p)
    # Two 9.4 MB copies with 330 us each dominate: the link binds, the NDP does not.
    assert float(g.link.per_transfer_overhead_us) == pytest.approx(2e-6)
    assert float(g.ndp.clock_mhz) == 0.0
    eff, bw = float(p.link.protocol_efficiency), float(p.link.bandwidth_gbps)
    assert float(g.link.bandwidth_gbps) == pytest.approx(
        -2 * 9437184.0 / (eff * bw ** 2 * 1e9), rel=1e-9)
