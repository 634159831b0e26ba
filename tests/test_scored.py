"""The learned residency score ``scored`` (issue 15 item 1) and its fit.

Default run: the policy's decisions at the policy level (no engine compile):
with the default weights the prefill choice is ``tp_lb_prefetch``'s and no
decode swap ever fires; a decode weight makes swaps fire; the soft rank
tends to the hard one; d(soft top-M weights)/d(w) against central finite
differences in x64; input checks.  Under ``-m slow`` (engine compiles, a few
minutes each on 2 loaded cores): the whole engine bit-identical to
``tp_lb_prefetch`` at the default weights, the relaxed engine's gradient in
w_prefill against finite differences, the policy checks with swaps on, and
the fit never worse than the heuristic on training.
"""
from __future__ import annotations

import dataclasses
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ndpsim import base, engine, policies, policy_checks, residency, tune_scored
from ndpsim.base import ConfigError
from ndpsim.policies import base as pb
from ndpsim.policies import scored, tp_lb_prefetch
from ndpsim.policies.base import PolicyParams
from ndpsim.policies.scored import ScoredParams
from ndpsim.workload import models as M
from ndpsim.workload import routing as R
from tests import engine_util as U

L, E, K = 4, 40, 4
MODEL = dataclasses.replace(M.get_model("mixtral-8x7b"), name="tiny-moe", num_layers=L,
                            num_experts=32)


def _ctx():
  return types.SimpleNamespace(num_layers=L, num_experts=E, top_k=K, relaxed=False)


def _prefill_slots(counts):
  counts = jnp.asarray(counts, jnp.float32)
  z = jnp.zeros((E,))
  return pb.Slots(ids=jnp.arange(E, dtype=jnp.int32), tokens=counts, valid=counts > 0,
                  resident=jnp.zeros((E,), bool), gpu_s=z, fetch_s=z, ndp_tp_s=z,
                  ndp_ep_s=z, gpu_pre_s=0.0, link_delay_s=0.0, bcast_s=0.0, post_s=0.0)


def _counts(rng):
  """Prefill counts of 24 tokens x top-4 with ties and zeros (E = 40)."""
  c = np.zeros(E)
  for _ in range(24):
    c[rng.choice(E, K, replace=False, p=np.r_[np.full(20, 0.045), np.full(20, 0.005)])] += 1
  return c


@pytest.mark.policy
@pytest.mark.parametrize("seed,cap", [(0, 5.0), (1, 12.0), (2, 30.0), (3, 0.0)])
def test_default_prefill_choice_is_tp_lb_prefetch(seed, cap):
  """Keep, load, queue order and the queue's cross-layer key order equal
  tp_lb_prefetch's (the fast slice of the engine-level equality)."""
  rng = np.random.default_rng(seed)
  ctx = _ctx()
  res = residency.empty(L, E, cap)
  slots = _prefill_slots(_counts(rng))
  gpu = jnp.asarray(rng.random(E) < 0.3) & slots.valid
  want, counts = tp_lb_prefetch.choose_from_prefill(ctx, res, slots, gpu)
  c, rate = scored.prefill_rate(ctx, slots)
  own = jnp.zeros((3, L, E)).at[0, 1].set(rate)
  s = scored.score(own, 1, L, ScoredParams())
  got = scored._choose_hard(ctx, res, slots, gpu, s, c)
  for f in ("keep", "load", "load_order"):
    np.testing.assert_array_equal(getattr(got, f), getattr(want, f), err_msg=f)
  # The score orders like the counts, ties alike (same cross-layer merge).
  key_order = np.lexsort((np.arange(E), -np.asarray(got.load_key)))
  np.testing.assert_array_equal(key_order, np.lexsort((np.arange(E), -np.asarray(counts))))


def _resident_top(rate, m):
  return jnp.asarray(pb.rank_desc(jnp.where(rate > 0, rate, -jnp.inf)) < m) & (rate > 0)


def _decode_run(knobs, steps, rng, hot):
  """Runs layer 0's decode bookkeeping for ``steps`` steps (expert ``hot``
  routed every step); returns the swap requests of each step."""
  ctx = _ctx()
  counts = jnp.asarray(_counts(rng))
  rate = counts / (jnp.sum(counts) / K)
  own = jnp.zeros((3, L, E)).at[0, 0].set(rate)
  res = residency.empty(L, E, 6.0)
  res = dataclasses.replace(res, resident=res.resident.at[0].set(_resident_top(rate, 6)))
  out = []
  for _ in range(steps):
    ids = jnp.concatenate([jnp.asarray([hot]), jnp.asarray(rng.choice(E, K - 1))])
    slots = types.SimpleNamespace(ids=ids, tokens=jnp.ones(K), valid=jnp.ones(K, bool))
    own = scored._decode_update(own, 0, slots, knobs, E)
    req = scored._swap(ctx, res, scored.score(own, 0, L, knobs), 0, knobs.margin)
    out.append((np.asarray(req.evict), np.asarray(req.load)))
  return out, res


@pytest.mark.policy
def test_default_weights_never_swap_during_decode():
  rng = np.random.default_rng(4)
  reqs, _ = _decode_run(ScoredParams(), 40, rng, hot=39)
  assert not any(ev.any() or ld.any() for ev, ld in reqs)


@pytest.mark.policy
def test_a_decode_weight_swaps_in_the_hot_expert_for_the_weakest():
  """w_decode > 0: an expert routed every decode step but cold in the prompt
  becomes the candidate and replaces the weakest resident (evicted: the
  layer is full).  The residency is held fixed, so the request repeats."""
  rng = np.random.default_rng(4)
  reqs, res = _decode_run(ScoredParams(w_decode=1.0, w_recency=0.5), 40, rng, hot=39)
  assert not res.resident[0, 39]
  for ev, ld in reqs:  # at most one swap, a resident evicted for each load
    assert ld.sum() <= 1 and ev.sum() == ld.sum() and np.all(np.asarray(res.resident[0])[ev])
  ev, ld = reqs[-1]
  assert ld[39] and ev.sum() == 1


@pytest.mark.gradient
def test_soft_rank_tends_to_the_hard_rank():
  rng = np.random.default_rng(5)
  s = jnp.asarray(rng.normal(size=E))
  elig = jnp.asarray(rng.random(E) < 0.8)
  hard = pb.rank_desc(jnp.where(elig, s, -jnp.inf))
  soft = scored.soft_rank(s, elig, 1e-4)
  np.testing.assert_allclose(np.asarray(soft)[np.asarray(elig)],
                             np.asarray(hard)[np.asarray(elig)], atol=1e-6)


@pytest.mark.gradient
def test_soft_top_m_gradient_in_every_weight_matches_finite_differences():
  """d(sum_i c_i x soft weight_i)/d(w) for the four weights (x64), features
  taken mid-decode so every weight acts (w_layer cancels within a layer: 0)."""
  with jax.enable_x64(True):
    rng = np.random.default_rng(6)
    own = jnp.asarray(rng.random((3, L, E)), jnp.float64).at[1].multiply(50.0)
    elig = jnp.asarray(rng.random(E) < 0.9)
    c = jnp.asarray(rng.random(E), jnp.float64)

    def f(w):
      knobs = ScoredParams(w_prefill=w[0], w_decode=w[1], w_recency=w[2], w_layer=w[3])
      s = scored.score(own, 2, L, knobs)
      rank = scored.soft_rank(s, elig, 0.5 * scored.SCORE_UNIT)
      return jnp.sum(c * jnp.where(elig, jax.nn.sigmoid((12.0 - rank - 1.0) / 0.5), 0.0))

    w0 = jnp.asarray([1.0, 0.3, -0.2, 0.4], jnp.float64)
    g = np.asarray(jax.grad(f)(w0))
    for i in range(4):
      e = jnp.zeros(4, jnp.float64).at[i].set(1e-6)
      fd = float((f(w0 + e) - f(w0 - e)) / 2e-6)
      assert abs(g[i] - fd) <= 1e-3 * abs(fd) + 1e-8, (i, g[i], fd)
    assert np.all(np.abs(g[:3]) > 1e-3) and abs(g[3]) < 1e-9, g


@pytest.mark.inputs
def test_inputs_name_the_field():
  pol = policies.get("scored")
  with pytest.raises(ConfigError, match=r"scored\.margin .* outside \[0, inf\)"):
    pb.make_params(pol, margin=-0.1)
  with pytest.raises(ConfigError, match=r"scored\.decode_decay"):
    pb.make_params(pol, decode_decay=1.0)
  with pytest.raises(ConfigError, match="write 5"):
    tune_scored.params_of(np.ones(4, np.float32))
  with pytest.raises(ConfigError, match="ScoredTuneConfig.restarts"):
    tune_scored.ScoredTuneConfig(restarts=0)
  assert pb.make_params(pol, w_decode=-0.5).own.w_decode == -0.5  # weights: any real


@pytest.mark.policy
def test_random_points_start_at_the_heuristic():
  pts = tune_scored.random_points(5, seed=3)
  np.testing.assert_array_equal(pts[0], tune_scored.vector())
  assert pts.shape == (5, tune_scored.N_KNOBS) and np.all(pts[:, -1] > 0)
  assert len({tuple(p) for p in pts}) == 5


# ---------------------------------------------------------------------------
# Engine level (slow: compiles).

def _tiny_routing(seed=0, num_seqs=2, prompt_len=16, output_len=6):
  """Zipf(1.2) per sequence and layer over 32 experts (prompt predicts decode)."""
  rng = np.random.default_rng(seed)
  k = MODEL.top_k
  log_pop = -1.2 * np.log(np.arange(1, MODEL.num_experts + 1))
  rank = np.argsort(rng.random((num_seqs, 1, L, MODEL.num_experts)), axis=-1)
  logits = log_pop[rank] + rng.gumbel(size=(num_seqs, prompt_len + output_len, L,
                                            MODEL.num_experts))
  ids = np.argsort(-logits, axis=-1)[..., :k].astype(np.int32)
  return R.Routing(ids[:, :prompt_len], None, ids[:, prompt_len:], None)


@pytest.mark.policy
@pytest.mark.slow  # two hard compiles; sliced by the prefill/decode tests above
def test_default_weights_are_tp_lb_prefetch_bit_for_bit():
  r = _tiny_routing()
  a = engine.simulate(U.load(), MODEL, r, "tp_lb_prefetch")
  b = engine.simulate(U.load(), MODEL, r, "scored")
  for f in ("ttft_s", "e2e_s", "step_s", "gpu_hits", "bytes_to_gpu"):
    np.testing.assert_array_equal(np.asarray(getattr(a, f)), np.asarray(getattr(b, f)), f)


@pytest.mark.policy
@pytest.mark.slow  # four hard compiles
def test_policy_checks_pass_with_swaps_on():
  params = PolicyParams(own=ScoredParams(w_decode=2.0, w_recency=0.3, margin=0.0))
  assert policy_checks.check_policy("scored", params) == []


@pytest.mark.gradient
@pytest.mark.slow  # an x64 relaxed compile
def test_relaxed_engine_gradient_in_w_prefill_matches_finite_differences():
  with jax.enable_x64(True):
    ss, sp = U.load()
    sp = base.as_arrays(sp, jnp.float64)
    r = _tiny_routing()

    def f(v):
      pp = tune_scored.params_of(v, PolicyParams(temperature_s=jnp.float64(2e-5),
                                                 rank_temperature=jnp.float64(1.0)))
      res = engine.simulate((ss, sp), MODEL, r, "scored", pp, relaxed=True, check=False)
      return jnp.mean(res.e2e_s)

    vg = jax.jit(jax.value_and_grad(f))
    v0 = jnp.asarray(tune_scored.vector(0.8, 0.0, 0.0, 0.0, 0.02), jnp.float64)
    g = np.asarray(vg(v0)[1])
    assert g[0] != 0.0, g
    h = 1e-5
    e = jnp.zeros_like(v0).at[0].set(h)
    fd = float((vg(v0 + e)[0] - vg(v0 - e)[0]) / (2 * h))
    assert abs(g[0] - fd) <= 1e-3 * max(abs(fd), 1e-12), (g[0], fd)


@pytest.mark.policy
@pytest.mark.slow  # a relaxed compile
def test_fit_is_never_worse_than_the_heuristic_on_training():
  train = _tiny_routing(seed=1)
  cfg = tune_scored.ScoredTuneConfig(steps=2, hard_every=1, restarts=2)
  f = tune_scored.fit(U.load(), MODEL, train, cfg)
  h = f.history
  assert h["hard_points"][0] == pytest.approx(tune_scored.vector().tolist())
  assert f.train_e2e_s <= f.heuristic_train_e2e_s
  assert f.heuristic_optimal == (f.train_e2e_s == f.heuristic_train_e2e_s)
  assert len(h["hard_e2e_s"]) == 1 + 2 + 2
  assert f.evaluations == 2 * 2 + len(h["hard_e2e_s"])
  heur = engine.simulate(U.load(), MODEL, train, "tp_lb_prefetch")
  assert f.heuristic_train_e2e_s == pytest.approx(float(np.mean(U.e2e(heur))), rel=1e-6)
