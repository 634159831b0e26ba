"""The engine against the plain-loop NumPy reference (benchmarks/reference_engine.py).

Every policy, on a few OLMoE sequences: time to first token, every token's
completion time and end-to-end latency equal within 1e-6 relative; decode
step latencies within 1e-6 relative plus a few float32 ulps of the clock;
hit counts exactly.  The reference runs in float64 (``dtype=np.float64``):
the engine computes in float32 but keeps a relative clock (each layer's
times relative to its start, the layer lengths summed exactly; see
``engine_layer.rebase``), so its error does not grow with simulated time and the
float64 run is the truth it must meet (``tests/test_clock.py`` checks 512 +
512 tokens).  A second
scenario (scarce GPU memory, eager swaps) makes the reference's own event
counters show that demand loads pre-empting a background copy in flight,
prefill loads merged ahead of waiting ones, arrivals during decode and
adaptive swaps with evictions were all exercised; a third (tight GPU memory)
makes the staging room cut prefill loads.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import subprocess
import sys

import jax
import numpy as np
import pytest

from benchmarks import reference_engine as RE
from ndpsim import engine, policies
from ndpsim.policies import tp_lb_adaptive
from ndpsim.policies.base import PolicyParams
from ndpsim.workload import models as M
from tests import engine_util as U

pytestmark = pytest.mark.reference

MODEL = "olmoe-1b-7b"
# Scarce memory, fast-forgetting scores, eager swaps: every queue mechanism fires
# (a budget of 7 experts per layer: with cheap copies the prefill balancer loads
# about 5 top experts per layer itself, so the rest go through the queue).
SCARCE = PolicyParams(resident_fraction=0.12,
                      own=tp_lb_adaptive.AdaptiveParams(adapt_margin=0.05, adapt_decay=0.7))


@functools.lru_cache(maxsize=None)
def _routing(num_seqs: int = 2):
  """The first ``num_seqs`` of four OLMoE sequences of 16 + 8 tokens, skewed
  NumPy routing with prompt locality (``engine_util.numpy_routing``; the
  routing generator would cost a compile of ~10 s).  Two sequences are the
  shape of ``tests/test_engine.py`` and ``tests/test_engine_golden.py``: the
  same engine compiles (tests/conftest.py runs the three in one process)."""
  return jax.tree_util.tree_map(lambda x: x[:num_seqs],
                                U.numpy_routing(MODEL, 4, 16, 8, seed=0))


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
  if not label.startswith("oracle"):  # oracle's lanes are statistics of its split
    np.testing.assert_allclose(np.asarray(res.ndp_lane_s, np.float64), ref.ndp_lane_s,
                               rtol=1e-5, err_msg=f"{label}: NDP lane")


# The registered policies the reference implements (a user's policy may have
# none); ``tuned`` in hard mode is tp_lb_prefetch with fitted params (same code
# path; left out to save a compile); ``scored`` at its default weights is
# tp_lb_prefetch bit for bit (tests/test_scored.py; golden numbers equal), and
# SCARCE's own knobs are tp_lb_adaptive's.
POLICIES = [p for p in policies.names() if p in RE.POLICIES and p not in ("tuned", "scored")]


def test_the_reference_covers_every_shipped_policy():
  shipped = [p for p in policies.names()
             if policies.get(p).place.__module__.startswith("ndpsim.policies.")]
  assert sorted(shipped) == sorted(RE.POLICIES)


def _tight_gpu(extra_per_layer: int = 2, spare: int = 3):
  """The default system with GPU memory for one decode layer's staging, two
  resident experts per layer and ``spare`` more: the staging room (GPU memory
  enforcement) cuts prefill loads.  Memory is a traced parameter: no compile."""
  from ndpsim import base, costs  # pylint: disable=import-outside-toplevel
  ss, sp = U.load()
  model, r = M.get_model(MODEL), _routing()
  ctx = r.prefill_ids.shape[1] + r.decode_ids.shape[1]
  eb = float(M.expert_bytes(model))
  slots = (costs.decode_staging_experts(model, 1)
           + extra_per_layer * M.num_moe_layers(model) + spare)
  mem = (costs.gpu_fixed_bytes(model, ctx, 1) + float(sp.gpu_reserved_bytes)
         + (slots + 0.5) * eb)
  return ss, base.replace(sp, gpu=base.replace(sp.gpu, memory_capacity_bytes=mem))


def _scarce(policy: str) -> PolicyParams:
  """SCARCE for ``policy``: its own knobs are tp_lb_adaptive's, which no other
  policy here reads (``params.own`` is a policy's own knobs); given to another
  policy they only change the params pytree, which costs a second compile of
  that policy for the same numbers."""
  return SCARCE if policy == "tp_lb_adaptive" else dataclasses.replace(SCARCE, own=None)


@pytest.mark.parametrize("policy", POLICIES)
def test_every_policy_matches_reference(policy):
  model, r = M.get_model(MODEL), _routing()
  # Traced params and memory: one compile per policy.
  for system, params, what in ((U.load(), PolicyParams(), "default"),
                               (U.load(), _scarce(policy), "scarce budget"),
                               (_tight_gpu(), PolicyParams(), "tight GPU memory")):
    res = engine.simulate(system, model, r, policy, params)
    assert_same(res, RE.simulate(system, model, r, policy, params, dtype=np.float64),
                f"{policy} {what}")


def test_scenario_exercises_preemption_merging_arrivals_and_swaps():
  system, model, r = U.load(), M.get_model(MODEL), _routing()
  pre = RE.simulate(system, model, r, "tp_lb_prefetch", SCARCE).events
  ada = RE.simulate(system, model, r, "tp_lb_adaptive", SCARCE).events
  # Demand loads pre-empt a background copy in flight; later layers' prefill
  # loads are merged ahead of waiting ones; queued loads arrive.
  assert pre["preempted"] > 0 and pre["merged_ahead"] > 0, pre
  assert pre["arrivals"] > 0 and pre["fetched"] > 0, pre
  assert pre["swaps"] == 0, pre
  assert ada["swaps"] > 0 and ada["evictions"] > 0, ada
  # The default (ample memory) scenario pre-empts background copies too.
  assert RE.simulate(system, model, r, "tp_lb_prefetch").events["preempted"] > 0
  # With tight GPU memory the staging room cuts loads (they run on the NDP units).
  assert RE.simulate(_tight_gpu(), model, r, "gpu_offload").events["cut"] > 0


def test_batched_groups_match_reference():
  """batch_size 2: slots are the distinct experts of two tokens, by count."""
  model = M.get_model(MODEL)
  r = _routing(4)
  for params in (PolicyParams(), SCARCE):
    res = engine.simulate(U.load(), model, r, "tp_lb_adaptive", params, batch_size=2)
    ref = RE.simulate(U.load(), model, r, "tp_lb_adaptive", params, batch_size=2,
                      dtype=np.float64)
    assert_same(res, ref, f"batch 2 {params}")


def test_reference_tells_policies_apart():
  """The comparison has teeth: a different policy is far outside tolerance."""
  system, model, r = U.load(), M.get_model(MODEL), _routing()
  res = engine.simulate(system, model, r, "ndp_tp")
  ref = RE.simulate(system, model, r, "ndp_ep")
  assert np.max(np.abs(np.asarray(res.e2e_s) - ref.e2e_s) / ref.e2e_s) > 1e-3
  with pytest.raises(AssertionError):
    assert_same(res, ref)


def test_gpu_validation_dry_run():
  out = subprocess.run([sys.executable, "benchmarks/gpu_validation.py", "--dry_run"],
                       capture_output=True, text=True, timeout=900, check=True)  # hang guard
  rep = json.loads(out.stdout.strip().splitlines()[-1])
  assert rep["dry_run"] is True
  rows = rep["kernels"]
  assert len(rows) >= 2 * 3 * 4  # two models x gate/up/down x 4 token counts
  for row in rows:
    assert row["model_s"] > 0 and np.isfinite(row["model_s"]), row
    if row["measured_s"] is not None:
      assert row["measured_s"] > 0
      assert row["error"] == pytest.approx(row["model_s"] / row["measured_s"] - 1.0)
