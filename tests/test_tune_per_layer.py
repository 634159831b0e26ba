"""Per-layer knobs of ``tuned`` (issue 15 items 1 and 3): gradients of each
new knob against central finite differences (relaxed engine, x64), the
all-equal case equal to ``tp_lb_prefetch`` in hard mode, the fit never worse
than the heuristic on training, and range/shape checks naming the field.

One tiny model (4 MoE layers of 32 Mixtral-size experts: the GPU holds about
a third of each layer, so the prefetch budget matters) and 2 sequences of
16+4 tokens keep the compiles few and small."""
from __future__ import annotations

import dataclasses
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ndpsim import base, costs, engine, tune_layers
from ndpsim.base import ConfigError
from ndpsim.policies import tuned
from ndpsim.policies.base import PolicyParams
from ndpsim.policies.tuned import TunedParams
from ndpsim.workload import models as M
from ndpsim.workload import routing as R
from tests import engine_util as U

L = 4
MODEL = dataclasses.replace(M.get_model("mixtral-8x7b"), name="tiny-moe", num_layers=L,
                            num_experts=32)


def _routing(seed=0, num_seqs=2, prompt_len=16, output_len=4):
  """Skewed routing with prompt locality (Zipf 1.2 per sequence and layer)."""
  E, k = MODEL.num_experts, MODEL.top_k
  rng = np.random.default_rng(seed)
  log_pop = -1.2 * np.log(np.arange(1, E + 1))
  rank = np.argsort(rng.random((num_seqs, 1, L, E)), axis=-1)
  logits = log_pop[rank] + rng.gumbel(size=(num_seqs, prompt_len + output_len, L, E))
  ids = np.argsort(-logits, axis=-1)[..., :k].astype(np.int32)
  P = prompt_len
  return R.Routing(ids[:, :P], None, ids[:, P:], None)


def _e2e(policy, params, routing=None):
  return U.e2e(engine.simulate(U.load(), MODEL, routing or _routing(), policy, params))


@pytest.mark.policy
def test_the_budget_binds_on_the_tiny_model():
  cap = float(costs.resident_capacity(*U.load(), MODEL, 20, 1))
  assert 1 <= cap < MODEL.num_experts / 2, cap


@pytest.mark.policy
@pytest.mark.parametrize("rf", [0.0, 0.3, 0.6, 1.0])
def test_all_equal_layer_knobs_give_the_uniform_budget_and_biases(rf):
  """The fast default-run slice of the engine-level equality below: any
  common share gives every layer tp_lb_prefetch's budget floor(rf x
  capacity) exactly, and unit multipliers its biases; an uneven split holds
  no more than L x that budget."""
  cap = costs.resident_capacity(*U.load(), MODEL, 20, 1)
  ctx = types.SimpleNamespace(num_layers=L, capacity=cap)
  uniform = np.floor(rf * float(cap) + 1e-6)
  for share in (1.0, 0.7, 3.3, [0.7] * L):
    pp = dataclasses.replace(tune_layers.params_of(
        jnp.asarray(tune_layers.vector(L, rf, share)), L), gpu_bias=1.2, ndp_bias=0.9)
    np.testing.assert_array_equal(tuned.layer_budgets(ctx, pp, hard=True), uniform)
    for layer in range(L):
      gb, nb = tuned._biases(ctx, pp, layer)
      assert (float(gb), float(nb)) == (np.float32(1.2), np.float32(0.9))
  uneven = tune_layers.params_of(jnp.asarray(tune_layers.vector(L, rf, [3.0, 0.2, 0.2, 0.6])), L)
  hard = np.asarray(tuned.layer_budgets(ctx, uneven, hard=True))
  assert hard.sum() <= L * uniform and np.all(hard == np.floor(hard)), hard


@pytest.mark.policy
@pytest.mark.slow  # two hard compiles (~4 min on 2 loaded cores); sliced above
def test_all_equal_layer_knobs_are_tp_lb_prefetch_in_hard_mode():
  """Per-layer knobs all equal (any common share, bias multipliers equal to
  1) give exactly tp_lb_prefetch at the shared knobs; unequal shares change
  the result while the layers hold no more than the uniform budget."""
  heur = _e2e("tp_lb_prefetch", PolicyParams(resident_fraction=0.6, gpu_bias=1.2,
                                              ndp_bias=0.9))
  pts = np.stack([tune_layers.vector(L, 0.6, 0.7, 1.2, 0.9),
                  tune_layers.vector(L, 0.6, 1.0, 1.2, 0.9),
                  tune_layers.vector(L, 0.6, [3.0, 0.2, 0.2, 0.6], 1.2, 0.9)])
  out = tune_layers.hard_batch(U.load(), MODEL, _routing(), pts)  # the fit's chunk
  np.testing.assert_array_equal(out[:2], np.mean(heur))
  assert out[2] != out[0]
  # The uneven split: layer budgets sum to at most the uniform L x B.
  ctx = types.SimpleNamespace(num_layers=L, capacity=costs.resident_capacity(
      *U.load(), MODEL, 20, 1))
  for v in pts:
    pp = tune_layers.params_of(jnp.asarray(v), L)
    hard = np.asarray(tuned.layer_budgets(ctx, pp, hard=True))
    uniform = np.floor(0.6 * float(ctx.capacity) + 1e-6)
    assert hard.sum() <= L * uniform and np.all(hard == np.floor(hard)), hard
  assert np.all(hard != uniform)


@pytest.mark.policy
@pytest.mark.parametrize("scores,want", [
    ([1.0, 1.2, 0.9, 0.95], (2, True)),        # an iterate beats the heuristic
    ([1.0, 1.2, 1.0, 1.1], (0, False)),        # a tie keeps the heuristic
    ([1.0, 1.0 - 1e-8, 1.3], (0, False)),      # within float32 noise: the heuristic
    ([0.5], (0, False))])
def test_choose_keeps_the_heuristic_unless_beaten(scores, want):
  """The fit's choice among hard-scored candidates (heuristic first): never
  a point worse on training than the heuristic, and 'heuristic optimal'
  exactly when nothing beats it (the fast default-run check of
  test_fit_is_never_worse_than_the_heuristic_on_training)."""
  assert tune_layers.choose(scores) == want
  best, _ = tune_layers.choose(scores)
  assert scores[best] <= scores[0]


@pytest.mark.policy
@pytest.mark.slow  # a relaxed compile (~4 min on 2 loaded cores); choose() is tested above
def test_fit_is_never_worse_than_the_heuristic_on_training():
  train = _routing(seed=1)
  cfg = tune_layers.LayerTuneConfig(steps=2, hard_every=1, restarts=2)
  f = tune_layers.fit(U.load(), MODEL, train, cfg)
  h = f.history
  assert h["hard_points"][0] == pytest.approx(tune_layers.vector(L).tolist())
  assert f.heuristic_train_e2e_s == pytest.approx(h["hard_e2e_s"][0])
  assert f.train_e2e_s <= f.heuristic_train_e2e_s
  assert f.train_e2e_s == pytest.approx(min(h["hard_e2e_s"]))
  assert f.heuristic_optimal == (f.train_e2e_s == f.heuristic_train_e2e_s)
  # heuristic + the step-1 iterates of 2 restarts + the last 2 iterates.
  assert len(h["hard_e2e_s"]) == 1 + 2 + 2
  assert f.evaluations == 2 * 2 + len(h["hard_e2e_s"])
  assert np.all(np.isfinite(h["relaxed_e2e_s"]))
  # The random search of equal budget has the heuristic's point too.
  v, e, n = tune_layers.random_search(U.load(), MODEL, train, 8)
  assert n == 8 and e <= f.heuristic_train_e2e_s * (1 + 1e-6)


@pytest.fixture(scope="module")
def x64_grad():
  """Relaxed mean e2e of ``tuned`` in x64 as a function of the knob vector."""
  with jax.enable_x64(True):
    ss, sp = U.load()
    sp = base.as_arrays(sp, jnp.float64)
    r = _routing()

    def f(v):
      pp = tune_layers.params_of(v, L, PolicyParams(temperature_s=jnp.float64(2e-5),
                                                    rank_temperature=jnp.float64(1.0)))
      res = engine.simulate((ss, sp), MODEL, r, "tuned", pp, relaxed=True, check=False)
      return jnp.mean(res.e2e_s)

    v0 = jnp.asarray(tune_layers.vector(L, 0.55, [1.3, 0.8, 1.1, 0.9],
                                        [1.1, 0.9, 1.0, 1.2], [0.9, 1.0, 1.2, 1.1]),
                     jnp.float64)
    vg = jax.jit(jax.value_and_grad(f))  # one compile for values and gradients
    yield vg, v0, np.asarray(vg(v0)[1])


@pytest.mark.gradient
@pytest.mark.parametrize("group,rel_h", [(1, 1e-6), (2, 1e-4), (3, 1e-4)])
def test_layer_knob_gradients_match_finite_differences(x64_grad, group, rel_h):
  """layer_share, layer_gpu_bias, layer_ndp_bias (the biases move the
  latency ~1e-9 s per unit: a larger step keeps the difference above
  float64 round-off)."""
  with jax.enable_x64(True):
    vg, v0, g = x64_grad
    idx = np.arange(1 + (group - 1) * L, 1 + group * L)
    assert np.any(g[idx] != 0.0), g
    i = int(idx[np.argmax(np.abs(g[idx]))])  # the layer where the knob acts most
    h = rel_h * float(v0[i])
    e = jnp.zeros_like(v0).at[i].set(h)
    fd = float((vg(v0 + e)[0] - vg(v0 - e)[0]) / (2 * h))
    assert abs(g[i] - fd) <= 1e-3 * max(abs(fd), 1e-12), (i, g[i], fd)


@pytest.mark.inputs
def test_range_and_shape_checks_name_the_field():
  with pytest.raises(ConfigError, match=r"tuned\.layer_share .* outside \(0, inf\)"):
    engine.simulate(U.load(), MODEL, _routing(), "tuned",
                    PolicyParams(own=TunedParams(layer_share=np.array([1.0, 0.0, 1.0, 1.0]))))
  with pytest.raises(ConfigError, match=r"tuned\.layer_gpu_bias has shape \(3,\).*\(4,\)"):
    engine.simulate(U.load(), MODEL, _routing(), "tuned",
                    PolicyParams(own=TunedParams(layer_gpu_bias=np.ones(3))))
  with pytest.raises(ConfigError, match="1 \\+ 3 x 4 = 13"):
    tune_layers.params_of(np.ones(5, np.float32), L)
  with pytest.raises(ConfigError, match="LayerTuneConfig.restarts"):
    tune_layers.LayerTuneConfig(restarts=0)
  with pytest.raises(ConfigError, match="LayerTuneConfig.lr"):
    tune_layers.LayerTuneConfig(lr=(0.1, 0.1))


@pytest.mark.inputs
def test_objective_is_checked():
  with pytest.raises(ConfigError, match="LayerTuneConfig.objective"):
    tune_layers.LayerTuneConfig(objective="power")
  with pytest.raises(ConfigError, match="needs the energy figures"):
    tune_layers.fit(U.load(), MODEL, _routing(), tune_layers.LayerTuneConfig(objective="edp"))


@pytest.mark.policy
@pytest.mark.slow  # a relaxed compile with the energy model (~5 min on 2 loaded cores)
def test_energy_objective_fit_is_never_worse_than_the_heuristic():
  from ndpsim import energy  # pylint: disable=import-outside-toplevel
  from ndpsim.hw import system as system_mod  # pylint: disable=import-outside-toplevel
  ep = energy.for_system(system_mod.load_system("paper_rtx5080_ndp_dimm", num_ndp_units=4))
  cfg = tune_layers.LayerTuneConfig(steps=2, hard_every=1, restarts=1, objective="energy")
  f = tune_layers.fit(U.load(), MODEL, _routing(seed=1), cfg, eparams=ep)
  h = f.history
  # The scores are J per output token: the heuristic's equals the energy model's.
  r = engine.simulate(U.load(), MODEL, _routing(seed=1), "tp_lb_prefetch")
  want = float(np.mean(np.asarray(energy.per_token_j(
      r, U.load(), MODEL, ep, prompt_len=16).total_j, np.float64)))
  assert h["hard_e2e_s"][0] == pytest.approx(want, rel=1e-5)
  assert f.train_e2e_s <= f.heuristic_train_e2e_s
  assert np.all(np.isfinite(h["relaxed_e2e_s"]))
