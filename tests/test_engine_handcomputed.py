"""A 2-layer, 4-expert toy model whose layer times are worked out by hand.

The primitive costs (one expert on the GPU, one TP slice on an NDP unit, a
broadcast, ...) come from the hardware models; the timeline that composes them
is written out here, independently of the engine, for each policy.
"""
from __future__ import annotations

import numpy as np
import pytest

from ndpsim import base, costs, engine
from ndpsim.workload import models as M
from ndpsim.workload.routing import Routing
from tests import engine_util as U

pytestmark = pytest.mark.policy

TOY = M.MoeModelSpec(name="toy", num_layers=2, hidden_size=512, vocab_size=1000,
                     num_experts=4, top_k=2, expert_ffn_size=1024, attention_kind="mha",
                     num_q_heads=4, num_kv_heads=4, head_dim=128)
N = 2
P = 2
# Prefill: token 0 -> experts (0, 1), token 1 -> (2, 3) in both layers: all four
# experts see one token.  Decode: layer 0 -> (0, 2) (same EP unit), layer 1 -> (1, 2).
PRE = np.array([[[[0, 1], [0, 1]], [[2, 3], [2, 3]]]], np.int32)  # [S, P, L, k]
DEC = np.array([[[[0, 2], [1, 2]]]], np.int32)                    # [S, T, L, k]


@pytest.fixture(scope="module")
def setup():
  ss, sp = U.load(units=N)
  r = Routing(prefill_ids=PRE, prefill_gates=np.full(PRE.shape, 0.5, np.float32),
              decode_ids=DEC, decode_gates=np.full(DEC.shape, 0.5, np.float32))
  return (ss, sp), r, _hand_costs(ss, sp)


def _hand_costs(ss, sp) -> dict:
  """The primitive costs of the toy on (ss, sp), float64."""
  c = {}
  f = lambda x: float(np.asarray(x))  # noqa: E731
  c["g1"] = f(costs.gpu_expert_s(ss, sp, TOY, 1.0))
  c["tp1"] = f(costs.ndp_expert_s(ss, sp, TOY, 1.0, N))
  c["ep1"] = f(costs.ndp_expert_s(ss, sp, TOY, 1.0, 1))
  c["T"] = f(costs.fetch_s(ss, sp, TOY))
  for tok in (1.0, float(P)):
    c[f"bcast{tok:g}"] = f(costs.broadcast_s(ss, sp, TOY, tok))
    for n in (1, N):
      c[f"ret{tok:g}_{n}"] = f(costs.return_s(ss, sp, TOY, tok, n))
      c[f"red{tok:g}_{n}"] = f(costs.reduce_s(ss, sp, TOY, tok, n))
  attn_d, _ = costs.moe_layer_gpu_s(ss, sp, TOY, 1, P + 1.0, 1)
  attn_p, _ = costs.moe_layer_gpu_s(ss, sp, TOY, P, float(P), 1)
  c["attn_d"] = [f(a) for a in attn_d]
  c["attn_p"] = [f(a) for a in attn_p]
  c["over_d"] = f(costs.step_overhead_s(ss, sp, TOY, 1, P + 1.0, 1, lm_head_tokens=1))
  c["over_p"] = f(costs.step_overhead_s(ss, sp, TOY, P, float(P), 1, lm_head_tokens=1))
  return c


def _sim(setup, policy):
  system, r, _ = setup
  res = engine.simulate(system, TOY, r, policy)
  return float(res.ttft_s[0]), float(res.step_s[0, 0])


def test_ndp_tp_by_hand(setup):
  _, _, c = setup
  ttft, step = _sim(setup, "ndp_tp")
  # Prefill: every expert has one token; each unit computes 4 slices.
  layer_p = [a + c["bcast2"] + 4 * c["tp1"] + c["ret2_2"] + c["red2_2"] for a in c["attn_p"]]
  assert ttft == pytest.approx(c["over_p"] + sum(layer_p), rel=1e-5)
  layer_d = [a + c["bcast1"] + 2 * c["tp1"] + c["ret1_2"] + c["red1_2"] for a in c["attn_d"]]
  assert step == pytest.approx(c["over_d"] + sum(layer_d), rel=1e-5)


def test_ndp_ep_by_hand(setup):
  _, _, c = setup
  _, step = _sim(setup, "ndp_ep")
  # Layer 0: experts 0 and 2 both on unit 0 -> serial, one partial.
  l0 = c["attn_d"][0] + c["bcast1"] + 2 * c["ep1"] + c["ret1_1"] + c["red1_1"]
  # Layer 1: experts 1 (unit 1) and 2 (unit 0) in parallel, two partials.
  l1 = c["attn_d"][1] + c["bcast1"] + c["ep1"] + c["ret1_2"] + c["red1_2"]
  assert step == pytest.approx(c["over_d"] + l0 + l1, rel=1e-5)


def test_tp_lb_by_hand(setup):
  _, _, c = setup
  _, step = _sim(setup, "tp_lb")
  g, T, tp = c["g1"], c["T"], c["tp1"]
  post = c["ret1_2"] + c["red1_2"]
  spans = [c["bcast1"] + 2 * tp + post,                 # both on NDP
           max(T + g, max(c["bcast1"] + tp, T) + post),  # one loaded to the GPU
           2 * T + g]                                    # both loaded, serial link
  layer = [a + min(spans) for a in c["attn_d"]]
  assert step == pytest.approx(c["over_d"] + sum(layer), rel=1e-5)


def test_gpu_offload_by_hand(setup):
  _, _, c = setup
  ttft, step = _sim(setup, "gpu_offload")
  # Prefill loads all four experts of each layer, serially on the link; the GPU
  # runs each after it arrives: the last one ends at 4T + g.
  layer_p = [a + 4 * c["T"] + c["g1"] for a in c["attn_p"]]
  assert ttft == pytest.approx(c["over_p"] + sum(layer_p), rel=1e-5)
  # The cache holds all four: decode is two resident experts per layer.
  layer_d = [a + 2 * c["g1"] for a in c["attn_d"]]
  assert step == pytest.approx(c["over_d"] + sum(layer_d), rel=1e-5)
  # Demand loads counted from the placements: 4 experts x 2 layers in the
  # prefill, none in decode (the 2 x 2 decode activations are all hits).
  system, r, _ = setup
  res = engine.simulate(system, TOY, r, "gpu_offload")
  assert float(res.bytes_to_gpu[0]) == pytest.approx(8 * M.expert_bytes(TOY), rel=1e-6)
  assert float(res.gpu_hits[0]) == 4 and float(res.gpu_misses[0]) == 0
  assert float(res.bytes_to_ndp[0]) == 0
  # End to end: the hand timeline's end, not the engine's own ttft + steps.
  assert float(res.e2e_s[0]) == pytest.approx(
      c["over_p"] + sum(layer_p) + c["over_d"] + sum(layer_d), rel=1e-5)


def _oracle_step_by_hand(c) -> float:
  g, h = c["g1"], min(c["tp1"], c["ep1"] / N)
  post = c["ret1_1"] + c["red1_1"]
  spans = [c["bcast1"] + 2 * h + post, max(g, c["bcast1"] + h + post), 2 * g]
  layer = [a + min(spans) for a in c["attn_d"]]
  return c["over_d"] + sum(layer)


def test_oracle_by_hand(setup):
  _, _, c = setup
  _, step = _sim(setup, "oracle")
  assert step == pytest.approx(_oracle_step_by_hand(c), rel=1e-5)


# Absurd but float32-representable hardware (issue 13): the toy's times stay
# below 3.4e38 s, while slot times pass 1e30 s (the old padding sentinel).
CORNERS = {
    "ndp": lambda sp: base.replace(sp, ndp=base.replace(sp.ndp, clock_mhz=1e-36)),
    "link": lambda sp: base.replace(sp, link=base.replace(sp.link, bandwidth_gbps=1e-37)),
    "gpu": lambda sp: base.replace(sp, gpu=base.replace(sp.gpu, clock_mhz=1e-36,
                                                        memory_bandwidth_gbps=1e-36)),
}


@pytest.mark.parametrize("corner", sorted(CORNERS))
def test_oracle_is_a_bound_on_absurdly_slow_hardware(setup, corner):
  """With one part absurdly slow the bound still sums every lane it uses: its
  decode step is the hand-computed best split, it never beats the same bound on
  the normal hardware (slower hardware cannot help), and it stays at or below
  every policy's end-to-end latency."""
  (ss, sp), r, c0 = setup
  slow = CORNERS[corner](sp)
  c = _hand_costs(ss, slow)
  assert max(c["tp1"], c["g1"], c["bcast1"]) > 1e30  # the corner is reached
  run = lambda pol, p: engine.simulate((ss, p), TOY, r, pol)  # noqa: E731
  ob = run("oracle", slow)
  assert float(ob.step_s[0, 0]) == pytest.approx(_oracle_step_by_hand(c), rel=1e-5)
  base_ob = run("oracle", sp)
  assert float(ob.ttft_s[0]) >= float(base_ob.ttft_s[0]) * (1 - 1e-6)
  assert float(ob.step_s[0, 0]) >= float(base_ob.step_s[0, 0]) * (1 - 1e-6)
  oe = float(ob.e2e_s[0])
  assert np.isfinite(oe)
  for pol in ("ndp_tp", "ndp_ep", "tp_lb", "gpu_offload", "monde", "tp_lb_prefetch"):
    assert oe <= float(run(pol, slow).e2e_s[0]) * (1 + 1e-6), pol


def test_oracle_below_every_policy_on_toy(setup):
  _, ob = _sim(setup, "oracle")
  for pol in ("ndp_tp", "ndp_ep", "tp_lb", "gpu_offload", "monde", "tp_lb_prefetch"):
    assert ob <= _sim(setup, pol)[1] * (1 + 1e-6), pol
