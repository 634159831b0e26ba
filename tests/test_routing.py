"""Property tests of ndpsim.workload.routing and routing_stats (fast, CPU)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ndpsim import base
from ndpsim.base import ConfigError
from ndpsim.workload import routing as R
from ndpsim.workload import routing_stats as RS

pytestmark = pytest.mark.analytic

KEY = jax.random.key(0)


def spec(**kw):
  d = dict(num_seqs=8, prompt_len=16, output_len=24, num_layers=3, num_experts=16,
           top_k=4)
  d.update(kw)
  return R.RoutingSpec(**d)


# Shared shapes (each distinct spec compiles once, a few seconds).
D_SPEC = dict(num_seqs=16, prompt_len=32, output_len=64, top_k=4, always_on_layers=(0, 2),
              gate_dtype="bfloat16")
E_SPEC = dict(num_seqs=8, prompt_len=8, output_len=1024, num_experts=32, top_k=2)
G_SPEC = dict(num_seqs=16, prompt_len=64, output_len=96, num_layers=4, num_experts=32,
              top_k=2)


def ids_np(r):
  return np.concatenate([np.asarray(r.prefill_ids), np.asarray(r.decode_ids)], 1)


@pytest.mark.parametrize("kw,params", [
    (dict(), R.preset("skewed", 16, 4)),
    (dict(num_experts=8, top_k=8), R.preset("balanced_corpus", 8, 8)),
    (dict(top_k=1, id_dtype="uint8", always_on_layers=(1,)),
     R.preset("llama4_maverick", 16, 1)),
    # Extreme concentration forces the completion and fill paths.
    (D_SPEC, R.RoutingParams(zipf_exponent=2.0, prompt_concentration=40.0, reuse_prob=0.3,
                             successor_strength=3.0, always_on_share=0.7)),
])
def test_every_token_has_k_distinct_experts_in_range(kw, params):
  s = spec(**kw)
  r = R.generate(KEY, s, params)
  assert r.prefill_ids.shape == (s.num_seqs, s.prompt_len, s.num_layers, s.top_k)
  assert r.decode_ids.shape == (s.num_seqs, s.output_len, s.num_layers, s.top_k)
  assert r.prefill_ids.dtype == jnp.dtype(s.id_dtype)
  assert r.decode_gates.dtype == jnp.dtype(s.gate_dtype)
  ids = ids_np(r).astype(np.int64)
  assert ids.min() >= 0 and ids.max() < s.num_experts
  srt = np.sort(ids, -1)
  assert not np.any(srt[..., 1:] == srt[..., :-1])
  g = np.concatenate([np.asarray(r.prefill_gates, np.float32),
                      np.asarray(r.decode_gates, np.float32)], 1)
  assert np.all(g >= 0)
  np.testing.assert_allclose(g.sum(-1), 1.0, atol=2e-2)
  assert np.all(np.diff(g, axis=-1) <= 1e-6)            # slot 0 = top-1 gate


def test_always_on_share_of_tokens():
  s = spec(**D_SPEC)
  r = R.generate(KEY, s, R.RoutingParams(always_on_share=0.6))
  ids = ids_np(r)
  load = np.asarray(RS.expert_load(ids, 16))
  top_share = load.max(-1) / (ids.shape[0] * ids.shape[1])
  assert not np.all(ids[:, :, 0, 0] == np.argmax(load[0]))     # a share, not all
  assert abs(top_share[0] - 0.6) < 0.03 and abs(top_share[2] - 0.6) < 0.03
  assert top_share[1] < 0.3


def test_locality_one_repeats_the_predecessor():
  s = spec()
  r = R.generate(KEY, s, R.RoutingParams(reuse_prob=1.0, prompt_concentration=1.0))
  ids = ids_np(r)
  assert np.all(ids == ids[:, :1])
  g = np.asarray(r.decode_gates)
  np.testing.assert_array_equal(g, np.broadcast_to(g[:, :1], g.shape))
  assert float(RS.consecutive_overlap(ids)) == 1.0
  r0 = R.generate(KEY, s, R.RoutingParams(reuse_prob=0.0))
  assert float(RS.identical_set_rate(ids_np(r0))) < 0.05


def test_reuse_prob_sets_consecutive_overlap():
  s = spec(**E_SPEC)
  o = [float(RS.consecutive_overlap(ids_np(R.generate(KEY, s, R.RoutingParams(reuse_prob=p)))))
       for p in (0.0, 0.3, 0.6)]
  chance = 2 / 32
  for p, got in zip((0.0, 0.3, 0.6), o):
    assert abs(got - (p + (1 - p) * chance)) < 0.03, (p, got)


def test_uniform_popularity_converges_to_uniform_load():
  s = spec(**E_SPEC)
  ids = ids_np(R.generate(KEY, s, R.preset("uniform", 32, 2)))
  ginis, ratios = [], []
  for n in (16, 128, 1032):
    load = RS.expert_load(ids[:, :n], 32)
    ginis.append(float(RS.gini(load).mean()))
    ratios.append(float((load.max(-1) / load.mean(-1)).mean()))
  assert ginis[0] > ginis[1] > ginis[2] and ginis[2] < 0.04
  assert ratios[2] < 1.15
  # Noise floor of the Gini: sigma / (mu sqrt(pi)) for binomial counts.
  n_sel = 8 * 1032 * 2 / 32
  expect = np.sqrt(n_sel * (1 - 2 / 32)) / (n_sel * np.sqrt(np.pi))
  assert abs(ginis[2] - expect) < 0.4 * expect


def test_sampler_matches_gumbel_top_k():
  """Inclusion frequencies equal those of exact Gumbel-top-k (Plackett-Luce)."""
  E, k, a = 8, 3, 1.0
  s = spec(num_seqs=4, prompt_len=8, output_len=4000, num_layers=1, num_experts=E, top_k=k)
  r = R.generate(KEY, s, R.RoutingParams(zipf_exponent=a))
  ids = ids_np(r)
  got = np.sort(np.asarray(RS.expert_load(ids, E))[0])[::-1] / (ids.shape[0] * ids.shape[1])
  first = np.sort(np.bincount(ids[..., 0, 0].ravel(), minlength=E))[::-1] / ids[..., 0, 0].size
  w = (np.arange(E) + 1.0) ** -a
  g = np.log(w) + np.random.default_rng(0).gumbel(size=(400_000, E))
  top = np.argsort(-g, axis=1)[:, :k]
  want = np.bincount(top.ravel(), minlength=E) / top.shape[0]
  np.testing.assert_allclose(got, want, atol=0.012)
  # Slot 0 holds the largest gate, which is the Gumbel argmax: P = w / sum(w).
  np.testing.assert_allclose(first, w / w.sum(), atol=0.012)


def stats_over(s, params_list, fn):
  params_list = list(params_list) + [params_list[-1]] * (4 - len(params_list))
  stacked = base.stack([base.as_arrays(p) for p in params_list])
  rr = jax.vmap(lambda p: R._generate_jit(KEY, s, p))(stacked)
  return [fn(jax.tree_util.tree_map(lambda x: x[i], rr)) for i in range(4)]


def test_more_concentration_moves_own_share_and_prefill_overlap_up():
  s = spec(**G_SPEC)
  ps = [R.RoutingParams(prompt_concentration=c, prefill_decode_coupling=1.0)
        for c in (0.0, 0.3, 1.0, 3.0)]
  res = stats_over(s, ps, lambda r: (float(RS.own_top_share(ids_np(r), 32)),
                                     float(RS.prefill_decode_overlap(r, 4, 32)),
                                     float(RS.any_miss_rate(r.decode_ids,
                                           RS.prefill_top_m_mask(r, 8, 32)))))
  own, hit, miss = map(np.array, zip(*res))
  assert np.all(np.diff(own) > 0) and np.all(np.diff(hit) > 0)
  assert np.all(np.diff(miss) < 0)
  assert abs(hit[0] - 4 / 32) < 0.03                   # no concentration: chance


def test_coupling_moves_prefill_overlap_up():
  s = spec(**G_SPEC)
  ps = [R.RoutingParams(prompt_concentration=2.0, prefill_decode_coupling=c)
        for c in (0.0, 0.33, 0.67, 1.0)]
  hit = stats_over(s, ps, lambda r: float(RS.prefill_decode_overlap(r, 4, 32)))
  assert np.all(np.diff(hit) > 0)


def test_more_skew_moves_gini_and_batched_imbalance_up():
  s = spec(**G_SPEC)
  ps = [R.RoutingParams(zipf_exponent=a) for a in (0.0, 0.5, 1.0, 1.5)]
  res = stats_over(s, ps, lambda r: (float(RS.gini(RS.expert_load(r.decode_ids, 32)).mean()),
                                     float(RS.ep_imbalance(r.decode_ids, 32, 8,
                                                           batch=16).mean())))
  g, imb = map(np.array, zip(*res))
  assert np.all(np.diff(g) > 0) and np.all(np.diff(imb) > 0)


def test_successor_strength_moves_successor_hit_rate_up():
  s = spec(**G_SPEC)
  ps = [R.RoutingParams(zipf_exponent=0.3, successor_strength=b) for b in (0.0, 1.5, 3.0)]
  res = stats_over(s, ps, lambda r: (float(RS.successor_hit_rate(ids_np(r), 32)),
                                     float(RS.next_popular_hit_rate(ids_np(r), 32))))
  hit, pop = map(np.array, zip(*res))
  assert np.all(np.diff(hit[:3]) > 0.05)
  assert hit[2] > pop[2] + 0.2
  assert abs(hit[0] - pop[0]) < 0.05                   # no structure: baseline


def test_same_key_same_routing_other_key_differs():
  s = spec()
  p = R.preset("skewed", 16, 4)
  a, b = R.generate(KEY, s, p), R.generate(KEY, s, p)
  c = R.generate(jax.random.key(1), s, p)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  assert np.mean(np.asarray(a.decode_ids) != np.asarray(c.decode_ids)) > 0.3
  # vmap over keys gives the per-key routing.
  keys = jax.random.split(KEY, 2)
  v = jax.vmap(lambda k: R._generate_jit(k, s, base.as_arrays(p)))(keys)
  one = R.generate(keys[1], s, p)
  np.testing.assert_array_equal(np.asarray(v.decode_ids[1]), np.asarray(one.decode_ids))


def test_zero_output_len():
  r = R.generate(KEY, spec(output_len=0), R.preset("uniform", 16, 4))
  assert r.decode_ids.shape == (8, 0, 3, 4)


def test_ep_imbalance_batch_one_is_combinatorial():
  s = spec(**E_SPEC)
  ids = ids_np(R.generate(KEY, s, R.preset("mixtral_8x7b", 32, 2)))
  # Two experts of 32 on 2 round-robin units: same unit with prob 15/31.
  assert abs(float(RS.ep_imbalance(ids, 32, 2).mean()) - (1 + 15 / 31)) < 0.02
  assert float(RS.ep_imbalance(ids, 32, 32).mean()) == 16.0
  mapping = jnp.zeros(32, jnp.int32)                   # all on unit 0 of 4
  assert float(RS.ep_imbalance(ids, 32, 4, mapping=mapping).mean()) == 4.0


def test_stats_on_hand_made_ids():
  assert float(RS.gini(jnp.ones(10))) == pytest.approx(0.0, abs=1e-6)
  assert float(RS.gini(jnp.eye(10)[0])) == pytest.approx(0.9, abs=1e-6)
  # One sequence, 4 tokens, 2 layers, k=2.
  ids = np.array([[[0, 1], [2, 3]], [[0, 1], [2, 3]], [[1, 4], [3, 5]], [[6, 7], [0, 2]]])
  ids = ids[None]
  assert float(RS.consecutive_overlap(ids)) == pytest.approx((2 + 2 + 1 + 1 + 0 + 0) / 12)
  assert float(RS.identical_set_rate(ids)) == pytest.approx(2 / 6)
  mask = np.zeros((2, 8), bool)
  mask[0, [0, 1]] = True
  mask[1, [2, 3]] = True
  assert float(RS.resident_hit_rate(ids, mask)) == pytest.approx(11 / 16)
  assert float(RS.any_miss_rate(ids, mask)) == pytest.approx(4 / 8)
  # own top-(E/8) with E=16: top-2 per layer: layer 0 counts 0:2,1:3 -> 5 of 8.
  assert float(RS.own_top_share(ids, 16)) == pytest.approx((5 / 8 + 6 / 8) / 2)
  # A deterministic successor chain is predicted perfectly on held-out data.
  chain = np.stack([np.stack([np.arange(6) % 4, (np.arange(6) + 1) % 4], -1),
                    np.stack([(np.arange(6) + 2) % 4, np.arange(6) % 4 + 4], -1)], 1)
  two = np.stack([chain, chain])                        # [2, 6, 2, 2]
  assert float(RS.successor_hit_rate(two, 8)) == 1.0


def test_prefill_top_m_ties_break_by_prior():
  pre = np.array([[[[0]], [[0]], [[1]]]])               # counts: e0=2, e1=1
  dec = np.array([[[[2]], [[3]]]])
  r = R.Routing(pre, None, dec, None)
  prior = np.array([[0.0, 0.0, 0.0, 1.0]])
  assert float(RS.prefill_decode_overlap(r, 3, 4)) == 0.5           # e2 by id
  assert float(RS.prefill_decode_overlap(r, 3, 4, prior=prior)) == 0.5
  m = RS.prefill_top_m_mask(r, 3, 4, prior)
  assert list(np.asarray(m)[0, 0]) == [True, True, False, True]


@pytest.mark.parametrize("kw,field", [
    (dict(top_k=17), "top_k"), (dict(num_experts=300, id_dtype="uint8"), "id_dtype"),
    (dict(prompt_len=0), "prompt_len"), (dict(always_on_layers=(3,)), "always_on_layers"),
    (dict(id_dtype="int64"), "id_dtype"), (dict(draws_per_token=2), "draws_per_token"),
])
def test_bad_spec_raises_one_line_naming_the_field(kw, field):
  with pytest.raises(ConfigError, match=field) as e:
    spec(**kw)
  assert "\n" not in str(e.value)


@pytest.mark.parametrize("field,value", [("reuse_prob", 1.5), ("prompt_concentration", -1.0),
                                         ("gate_temperature", 0.0), ("zipf_exponent", np.nan)])
def test_bad_params_raise(field, value):
  with pytest.raises(ConfigError, match=field):
    R.generate(KEY, spec(), R.RoutingParams(**{field: value}))


def test_presets():
  with pytest.raises(ConfigError, match="balanced_corpus"):
    R.preset("nope", 8, 2)
  with pytest.raises(ConfigError, match="top_k"):
    R.preset("uniform", 8, 9)
  for name in R.PRESETS:
    p = R.preset(name, 64, 6)
    R.validate_params(p)
    assert isinstance(p, R.RoutingParams)
