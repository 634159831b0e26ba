"""Energy per token (issue 14 item 3): ndpsim/energy.py and hw_configs/energy/.

* analytic: one toy layer's energy written out by hand from the preset figures
  and compared with energy.per_group_j on a hand-built SimResult; monotonicity
  (more bytes over a link -> more link energy, longer runs -> more static
  energy, more NDP work -> more NDP energy).
* inputs: every energy figure of every shipped energy preset has a provenance
  label, a reason or source, and every shipped system has figures for all its
  parts; bad figures are refused naming the field.
* gradient: d energy / d figure and d energy / d e2e against finite
  differences.
* smoke: a tiny engine run gives finite, positive energies whose components
  add up, and result-row fields.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ndpsim import base, config, energy, engine
from ndpsim.hw import system as system_mod
from ndpsim.results import SimResult
from ndpsim.workload import model_io
from ndpsim.workload import models as M
from ndpsim.workload import routing as R

DATA = pathlib.Path(__file__).parent / "data"
SYSTEM = "paper_rtx5080_ndp_dimm"
EB = 786432.0  # bytes of one toy expert: 3 x 256 x 512 bf16


@functools.lru_cache(maxsize=None)
def _toy_model():
  """exp_tiny_model.json cut to one (MoE) layer: hidden 256, 8 experts of ffn
  512, top-2, GQA 4 q heads / 2 kv heads of 64, vocab 1024, all bf16."""
  return model_io.model_from_any(dataclasses.replace(
      model_io.model_from_any(DATA / "exp_tiny_model.json"), num_layers=1,
      name="toy-one-layer"))


@functools.lru_cache(maxsize=None)
def _system():
  return system_mod.load_system(SYSTEM)


def _result(**kw) -> SimResult:
  """A hand-built SimResult of one group: one prompt token, one output token."""
  z = jnp.zeros((1,), jnp.float32)
  fields = {f.name: z for f in dataclasses.fields(SimResult)}
  fields.update(step_s=jnp.full((1, 1), 0.5e-3), ndp_unit_busy_s=jnp.zeros((1, 4)))
  fields.update({k: jnp.asarray([v], jnp.float32) for k, v in kw.items()})
  return SimResult(**fields)


TOY = dict(  # one expert on each side in the prefill, both decode experts on NDP
    e2e_s=1e-3, prefill_expert_bytes_gpu=EB, prefill_expert_bytes_ndp=EB,
    expert_bytes_gpu=EB, expert_bytes_ndp=3 * EB,
    bytes_to_gpu=EB + 512.0, prefetched_bytes=0.0, bytes_to_ndp=1024.0)


def _figures():
  raw = lambda kind, name: json.loads(  # noqa: E731
      (config.config_root() / config.folder_of(kind) / f"{name}.json").read_text())["params"]
  return (raw("gpu_energy", "rtx5080"), raw("link_energy", "pcie5_x16"),
          raw("ndp_energy", "ddr5_rank_ndp_dimm"), raw("dram_energy", "DDR5_16Gb_x8_4800"))


@pytest.mark.analytic
def test_one_toy_layer_by_hand():
  """Prompt 1 + output 1 token, batch 1, one MoE layer, top-2, 4 DDR5 NDP-DIMMs."""
  g, ln, nd, dr = _figures()
  # FLOPs.  Attention projections: q, o 256 x 256, k, v 256 x 128 -> 196,608
  # weights, 2 FLOPs each; scores + values: 2 x 4 heads x (64 + 64) per key.
  proj = 2 * 196608
  attn = (proj + 1024 * 1) + (proj + 1024 * 2)          # prefill (1 key), decode (2 keys)
  router = 2 * 256 * 8 * 2                              # two tokens
  lm_head = 2 * 1024 * 256 * 2                          # once per pass, two passes
  per_pair = 2 * 3 * 256 * 512                          # one expert, one token
  pairs = 2                                             # top-2 per token
  gpu_exp = per_pair * pairs * (0.5 + 0.0)              # prefill half, decode none
  ndp_exp = per_pair * pairs * (0.5 + 1.0)
  gpu_flops = attn + router + lm_head + gpu_exp
  # GPU memory: non-routed weights per pass = attention 196,608 + norms 512 +
  # router 2,048 + final norm 256 + LM head 262,144 + one embedding row 256
  # elements of 2 B, read twice; KV 2 x 2 heads x 64 x 2 B = 512 B per token:
  # one read (the prompt token) and two writes; experts on the GPU; link writes.
  weights = 2 * (196608 + 512 + 2048 + 256 + 262144 + 256)
  to_gpu = EB + 512.0
  gpu_mem = 2 * weights + 512 * 3 + EB + to_gpu
  # NDP DRAM: streams 3 experts, reads 1 copy (+ partials); rows of 4096 B.
  read = 3 * EB + to_gpu
  ndp_dram = (read / 4096 * dr["act_energy_pj"] + 8 * read * dr["read_pj_per_bit"]
              + 8 * read * nd["pe_path_pj_per_bit"] + 8 * to_gpu * nd["host_bus_pj_per_bit"]
              + 8 * 1024 * 4 * nd["host_bus_pj_per_bit"]) * 1e-12
  static_unit_w = 4 * dr["background_power_mw"] * 1e-3 + nd["logic_static_power_w"]
  want = {
      "gpu_compute_j": gpu_flops * g["compute_pj_per_flop"] * 1e-12,
      "gpu_memory_j": 8 * gpu_mem * g["memory_pj_per_bit"] * 1e-12,
      "link_to_gpu_j": 8 * to_gpu * ln["to_gpu_pj_per_bit"] * 1e-12,
      "link_to_ndp_j": 8 * 1024 * ln["to_ndp_pj_per_bit"] * 1e-12,
      "ndp_dram_j": ndp_dram,
      "ndp_mac_j": ndp_exp / 2 * nd["mac_pj"] * 1e-12,
      "static_gpu_j": g["static_power_w"] * 1e-3,
      "static_link_j": ln["static_power_w"] * 1e-3,
      "static_ndp_j": 4 * static_unit_w * 1e-3,
  }
  s = _system()
  got = energy.per_group_j(_result(**TOY), (s.spec, s.params), _toy_model(),
                           energy.for_system(s), prompt_len=1, batch_size=1)
  for k, v in want.items():
    np.testing.assert_allclose(float(getattr(got, k)[0]), v, rtol=2e-5, err_msg=k)
  np.testing.assert_allclose(float(got.total_j[0]), sum(want.values()), rtol=2e-5)
  per_tok = energy.per_token_j(_result(**TOY), (s.spec, s.params), _toy_model(),
                               energy.for_system(s), prompt_len=1, batch_size=1)
  np.testing.assert_allclose(float(per_tok.total_j[0]), sum(want.values()), rtol=2e-5)


def _total(**changes):
  s = _system()
  e = energy.per_group_j(_result(**{**TOY, **changes}), (s.spec, s.params), _toy_model(),
                         energy.for_system(s), prompt_len=1, batch_size=1)
  return e


@pytest.mark.analytic
@pytest.mark.parametrize("field,component", [
    ("bytes_to_gpu", "link_to_gpu_j"), ("prefetched_bytes", "link_to_gpu_j"),
    ("bytes_to_ndp", "link_to_ndp_j"), ("e2e_s", "static_ndp_j"),
    ("expert_bytes_ndp", "ndp_dram_j"), ("expert_bytes_gpu", "gpu_memory_j")])
def test_more_activity_costs_more(field, component):
  base_e = _total()
  more = _total(**{field: 2 * TOY[field] + 1e3})
  assert float(getattr(more, component)[0]) > float(getattr(base_e, component)[0])
  assert float(more.total_j[0]) > float(base_e.total_j[0])


@pytest.mark.analytic
def test_moving_decode_experts_to_the_gpu_moves_their_flops():
  """FLOPs follow the token-expert pairs; the GPU/NDP split follows the bytes."""
  ndp_only = _total()
  half = _total(expert_bytes_gpu=2 * EB, expert_bytes_ndp=2 * EB)
  assert float(half.gpu_compute_j[0]) > float(ndp_only.gpu_compute_j[0])
  assert float(half.ndp_mac_j[0]) < float(ndp_only.ndp_mac_j[0])
  moved = float(ndp_only.ndp_mac_j[0] - half.ndp_mac_j[0])
  np.testing.assert_allclose(moved, 0.5 * (2 * 2 * 3 * 256 * 512) / 2 * 1.5e-12, rtol=1e-5)


@pytest.mark.analytic
def test_per_token_divides_by_output_tokens():
  s = _system()
  r = _result(**TOY)
  r2 = dataclasses.replace(r, step_s=jnp.full((1, 4), 0.5e-3))
  e1 = energy.per_group_j(r2, (s.spec, s.params), _toy_model(), energy.for_system(s),
                          prompt_len=1, batch_size=2)
  e2 = energy.per_token_j(r2, (s.spec, s.params), _toy_model(), energy.for_system(s),
                          prompt_len=1, batch_size=2)
  np.testing.assert_allclose(np.asarray(e2.total_j) * 8, np.asarray(e1.total_j), rtol=1e-6)


@pytest.mark.gradient
def test_gradient_matches_finite_differences():
  """d total / d (every energy figure) and d total / d e2e vs central differences."""
  with jax.enable_x64(True):
    _check_gradient()


def _check_gradient():
  s = _system()
  model = _toy_model()
  ep = base.as_arrays(energy.for_system(s), jnp.float64)
  r = jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.float64), _result(**TOY))

  @jax.jit
  def total(ep_, e2e):
    rr = dataclasses.replace(r, e2e_s=e2e)
    return energy.per_group_j(rr, (s.spec, s.params), model, ep_, prompt_len=1,
                              batch_size=1).total_j[0]

  g_ep, g_e2e = jax.grad(total, argnums=(0, 1))(ep, r.e2e_s)
  leaves, tree = jax.tree_util.tree_flatten(ep)
  grads = jax.tree_util.tree_leaves(g_ep)
  for i, (x, gx) in enumerate(zip(leaves, grads)):
    h = 1e-2 * max(abs(float(x)), 1.0)
    up = [l + h if j == i else l for j, l in enumerate(leaves)]
    dn = [l - h if j == i else l for j, l in enumerate(leaves)]
    fd = (float(total(jax.tree_util.tree_unflatten(tree, up), r.e2e_s))
          - float(total(jax.tree_util.tree_unflatten(tree, dn), r.e2e_s))) / (2 * h)
    np.testing.assert_allclose(float(gx), fd, rtol=1e-6, atol=1e-15, err_msg=str(i))
  # d total / d e2e = the static power of the whole system.
  want_w = (float(ep.gpu.static_power_w) + float(ep.link.static_power_w)
            + 4 * (4 * float(ep.ndp.dram.background_power_mw) * 1e-3
                   + float(ep.ndp.logic_static_power_w)))
  np.testing.assert_allclose(float(g_e2e[0]), want_w, rtol=1e-5)
  assert want_w > 0


# ---------------------------------------------------------------------------
# Presets.

ENERGY_KINDS = energy.KINDS
PRESETS = [(k, n) for k in ENERGY_KINDS for n in config.available(k)]


def _raw(kind, name):
  return json.loads((config.config_root() / config.folder_of(kind) / f"{name}.json")
                    .read_text())


@pytest.mark.inputs
def test_every_energy_kind_has_presets():
  assert {k for k, _ in PRESETS} == set(ENERGY_KINDS)


@pytest.mark.inputs
@pytest.mark.parametrize("kind,name", PRESETS)
def test_every_energy_figure_has_provenance_and_a_reason(kind, name):
  """Each figure: a provenance label; measured/spec/derived ones a source
  (a checkable place and the figure, in ``sources`` or the preset's
  ``source``); derived and assumed ones their arithmetic or reasoning in
  ``notes``, which name the field."""
  pre = config.load(kind, name)
  raw = _raw(kind, name)
  assert raw["name"] == name and raw["kind"] == kind
  fields = [f.name for f in dataclasses.fields(pre.params)
            if not dataclasses.is_dataclass(getattr(pre.params, f.name))]
  assert fields
  for f in fields:
    label = config.provenance_of(pre.provenance, f)
    assert label in base.PROVENANCES, (name, f, label)
    if label in ("measured", "derived", "spec"):
      src = pre.sources.get(f, "") or pre.source
      assert config.names_place_and_figure(src) or pre.source.strip(), (name, f)
    if label in ("derived", "assumed"):
      assert f in raw.get("notes", ""), f"{name}: notes do not explain {f}"
    if label == "measured":
      assert config.names_place_and_figure(pre.sources.get(f, "")), (name, f)
  assert "MoE-Infinity" not in json.dumps(raw)  # withdrawn figure (reference/hardware.md)


@pytest.mark.inputs
@pytest.mark.parametrize("sysname", config.available("system"))
def test_every_shipped_system_has_energy_figures(sysname):
  s = system_mod.load_system(sysname)
  assert energy.has_figures(s)
  ep = energy.for_system(s)
  assert all(np.isfinite(float(x)) and float(x) >= 0 for x in jax.tree_util.tree_leaves(ep))
  # The NDP energy preset names the DRAM part its NDP preset uses.
  ndp_raw = _raw("ndp", s.spec.ndp_name)
  assert _raw("ndp_energy", s.spec.ndp_name)["params"]["dram"] == ndp_raw["spec"]["dram"]


@pytest.mark.inputs
def test_every_shipped_gpu_and_link_has_energy_figures():
  assert set(config.available("gpu")) <= set(config.available("gpu_energy"))
  assert set(config.available("link")) <= set(config.available("link_energy"))


@pytest.mark.inputs
@pytest.mark.parametrize("field,value,what", [
    ("memory_pj_per_bit", -1.0, "must be > 0"),
    ("memory_pj_per_bit", 6000.0, "implausible"),
    ("static_power_w", 20000.0, "did you mean 20"),
    ("memory_pj_per_bit", "6", "must be a number"),
])
def test_bad_figures_are_refused_naming_the_field(field, value, what):
  obj = _raw("gpu_energy", "rtx5080")
  obj["params"][field] = value
  with pytest.raises(base.ConfigError) as e:
    config.load("gpu_energy", obj)
  assert field in str(e.value) and what in str(e.value)


@pytest.mark.inputs
def test_every_figure_has_a_range():
  for cls in (energy.GpuEnergyParams, energy.LinkEnergyParams, energy.DramEnergyParams,
              energy.NdpEnergyParams):
    table = config.ranges_of(cls)
    for f in dataclasses.fields(cls):
      if f.name != "dram":
        r = table[f.name]
        assert r.hard[0] <= r.plausible[0] <= r.plausible[1] <= r.hard[1], (f.name, r)


@pytest.mark.inputs
def test_missing_part_figures_name_the_file_to_add():
  s = _system()
  s2 = s._replace(spec=dataclasses.replace(s.spec, gpu_name="my_gpu"))
  with pytest.raises(base.ConfigError) as e:
    energy.for_system(s2)
  assert "hw_configs/energy/gpu/my_gpu.json" in str(e.value)
  assert not energy.has_figures(s2) and energy.row_fields(None, s2, None, prompt_len=1) == {}


# ---------------------------------------------------------------------------
# A tiny engine run.

@pytest.mark.analytic
def test_row_fields_are_the_mean_per_token_split():
  s = _system()
  two = {k: [v, 2 * v] for k, v in TOY.items()}
  r = _result(**TOY)
  r = dataclasses.replace(r, **{k: jnp.asarray(v, jnp.float32) for k, v in two.items()},
                          step_s=jnp.full((2, 1), 0.5e-3))
  row = energy.row_fields(r, s, _toy_model(), prompt_len=1, batch_size=1)
  e = energy.per_token_j(r, (s.spec, s.params), _toy_model(), energy.for_system(s),
                         prompt_len=1, batch_size=1)
  assert set(row) == {"energy_per_token_j"} | {f"energy_{c}" for c in energy.COMPONENTS}
  np.testing.assert_allclose(row["energy_per_token_j"], float(np.mean(e.total_j)), rtol=1e-6)
  for c in energy.COMPONENTS:
    np.testing.assert_allclose(row[f"energy_{c}"], float(np.mean(getattr(e, c))), rtol=1e-6)


@pytest.mark.smoke
@pytest.mark.slow  # one engine compile, ~40 s on a busy 2-core machine
def test_tiny_engine_run_rows():
  model = model_io.model_from_any(DATA / "exp_tiny_model.json")
  L, E, k = M.num_moe_layers(model), model.num_experts, model.top_k
  rng = np.random.default_rng(3)
  P, T = 8, 2
  ids = np.argsort(rng.random((2, P + T, L, E)), axis=-1)[..., :k].astype(np.int32)
  gates = np.full(ids.shape, 1.0 / k, np.float32)
  r = R.Routing(prefill_ids=ids[:, :P], prefill_gates=gates[:, :P],
                decode_ids=ids[:, P:], decode_gates=gates[:, P:])
  s = _system()
  res = engine.simulate((s.spec, s.params), model, r, "tp_lb")
  e = energy.per_token_j(res, (s.spec, s.params), model, energy.for_system(s),
                         prompt_len=P, batch_size=1)
  parts = np.stack([np.asarray(getattr(e, c)) for c in energy.COMPONENTS])
  assert np.all(np.isfinite(parts)) and np.all(parts >= 0)
  assert np.all(parts[energy.COMPONENTS.index("static_gpu_j")] > 0)
  np.testing.assert_allclose(parts.sum(0), np.asarray(e.total_j), rtol=1e-6)
  row = energy.row_fields(res, s, model, prompt_len=P, batch_size=1)
  assert set(row) == {"energy_per_token_j"} | {f"energy_{c}" for c in energy.COMPONENTS}
  np.testing.assert_allclose(row["energy_per_token_j"],
                             sum(row[f"energy_{c}"] for c in energy.COMPONENTS), rtol=1e-6)


# ---------------------------------------------------------------------------
# The plot.

@pytest.mark.e2e
def test_energy_vs_latency_plot(tmp_path):
  from ndpsim import plots  # pylint: disable=import-outside-toplevel
  rows = [{"model": m, "policy": p, "e2e_latency_s_mean": 1.0 + i, "e2e_latency_s_ci95": 0.1,
           "energy_per_token_j": 0.5 + 0.1 * i}
          for m in ("qwen3-30b-a3b", "mixtral-8x7b", "deepseek-v2-lite")
          for i, p in enumerate(("monde", "tp_lb", "tp_lb_prefetch"))]
  path = plots.energy_vs_latency(rows, tmp_path / "e.png", workload="tiny workload text")
  assert path and pathlib.Path(path).stat().st_size > 0
  title = plots.png_title(path)
  assert "Energy per output token" in title and "tiny workload text" in title
  assert "mixtral-8x7b" in title  # one subplot per model
  no_energy = [{k: v for k, v in r.items() if k != "energy_per_token_j"} for r in rows]
  assert plots.energy_vs_latency(no_energy, tmp_path / "none.png") is None
  assert not (tmp_path / "none.png").exists()


@pytest.mark.gradient
@pytest.mark.slow  # a gradient through the engine: one compile, ~1 min on 2 busy cores
def test_gradient_through_the_engine_matches_finite_differences():
  """d (mean energy per token) / d link bandwidth through engine.simulate (time
  -> static energy) against central differences at +-2 %."""
  model = _toy_model()
  L, E, k = M.num_moe_layers(model), model.num_experts, model.top_k
  rng = np.random.default_rng(5)
  P, T = 4, 2
  ids = np.argsort(rng.random((2, P + T, L, E)), axis=-1)[..., :k].astype(np.int32)
  gates = np.full(ids.shape, 1.0 / k, np.float32)
  r = R.Routing(prefill_ids=ids[:, :P], prefill_gates=gates[:, :P],
                decode_ids=ids[:, P:], decode_gates=gates[:, P:])
  s = _system()
  ep = energy.for_system(s)

  @jax.jit
  def per_token(bw):
    sp = dataclasses.replace(s.params, link=dataclasses.replace(s.params.link,
                                                                bandwidth_gbps=bw))
    res = engine.simulate((s.spec, sp), model, r, "gpu_offload", check=False)
    return jnp.mean(energy.per_token_j(res, (s.spec, sp), model, ep, prompt_len=P,
                                       batch_size=1).total_j)

  bw = jnp.float32(s.params.link.bandwidth_gbps)
  g = float(jax.grad(per_token)(bw))
  h = 0.02 * float(bw)
  fd = (float(per_token(bw + h)) - float(per_token(bw - h))) / (2 * h)
  assert g < 0  # a faster link shortens the run: less idle energy
  np.testing.assert_allclose(g, fd, rtol=0.05)
