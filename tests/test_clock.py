"""The engine's clock against a float64 run over a long sequence (issue 14 item 2).

The engine computes in float32 but keeps a relative clock (``engine_layer.rebase``:
each layer's times relative to its start, layer lengths added to the origin
exactly), so its rounding is relative to a layer, not to the run, and does not
grow with simulated time.  On 512 prompt + 512 output tokens of the 4-layer,
8-expert model of ``tests/data/exp_tiny_model.json`` (one sequence, random
top-2 routing, ``tp_lb_prefetch``) time to first token, every token's
completion time and the end-to-end latency must be within 1e-6 relative of the
NumPy reference run in float64 (``benchmarks/reference_engine.py``).

The same reference in float32 -- an absolute float32 clock, as the engine had
before -- misses 1e-6 on this workload, so the check can fail.
"""
from __future__ import annotations

import pathlib

import numpy as np
import pytest

from benchmarks import reference_engine as RE
from ndpsim import engine
from ndpsim.workload import model_io
from ndpsim.workload import models as M
from ndpsim.workload import routing as R
from tests import engine_util as U

pytestmark = pytest.mark.reference

TINY = pathlib.Path(__file__).parent / "data" / "exp_tiny_model.json"
PROMPT, OUTPUT = 512, 512
POLICY = "tp_lb_prefetch"


def _setup():
  model = model_io.model_from_any(TINY)
  L, E, k = M.num_moe_layers(model), model.num_experts, model.top_k
  rng = np.random.default_rng(14)
  ids = np.argsort(rng.random((1, PROMPT + OUTPUT, L, E)), axis=-1)[..., :k].astype(np.int32)
  gates = np.full(ids.shape, 1.0 / k, np.float32)
  r = R.Routing(prefill_ids=ids[:, :PROMPT], prefill_gates=gates[:, :PROMPT],
                decode_ids=ids[:, PROMPT:], decode_gates=gates[:, PROMPT:])
  return U.load(), model, r


def _done(ttft, step):
  """Completion time of every output token, float64 [T]."""
  return float(ttft) + np.cumsum(np.asarray(step, np.float64))


def test_clock_within_1e6_of_float64_over_512_plus_512_tokens():
  system, model, r = _setup()
  res = engine.simulate(system, model, r, POLICY)
  ref = RE.simulate(system, model, r, POLICY, dtype=np.float64)
  ttft, e2e = float(res.ttft_s[0]), float(res.e2e_s[0])
  assert abs(ttft / ref.ttft_s[0] - 1) < 1e-6
  assert abs(e2e / ref.e2e_s[0] - 1) < 1e-6
  done, ref_done = _done(ttft, res.step_s[0]), _done(ref.ttft_s[0], ref.step_s[0])
  np.testing.assert_allclose(done, ref_done, rtol=1e-6, atol=0.0)
  # Each step on its own (a difference of two clock readings before).
  np.testing.assert_allclose(np.asarray(res.step_s[0], np.float64), ref.step_s[0],
                             rtol=1e-6, atol=0.0)
  # Same decisions: hits counted exactly.
  assert int(res.gpu_hits[0]) == int(ref.gpu_hits[0])
  # The workload is long enough to show an absolute float32 clock's error.
  ref32 = RE.simulate(system, model, r, POLICY, dtype=np.float32)
  assert abs(float(ref32.e2e_s[0]) / ref.e2e_s[0] - 1) > 1e-6
